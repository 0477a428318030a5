package fasta

import (
	"errors"
	"fmt"
	"strings"
)

var (
	// ErrNoHeader reports data before the first '>' header other than blank
	// lines and ';' comments: the input is not FASTA. It is fatal.
	ErrNoHeader = errors.New("fasta: sequence data before the first '>' header")

	// ErrEmptyID reports a header with no identifier after '>'. The record is
	// skipped and reading can continue.
	ErrEmptyID = errors.New("fasta: header has no identifier")

	// ErrRecordTooLarge reports a record whose sequence, or whose header
	// line, exceeds the maximum record size (WithMaxRecordBytes). The record
	// is skipped and reading can continue.
	ErrRecordTooLarge = errors.New("fasta: record too large")

	// ErrOption reports an invalid option value.
	ErrOption = errors.New("fasta: invalid option")

	// ErrStdin is returned by Count for "-": standard input cannot be read
	// twice.
	ErrStdin = errors.New("fasta: cannot count records on standard input")
)

// ParseError locates every error Next returns (other than io.EOF): a format
// error wrapping ErrNoHeader, ErrEmptyID or ErrRecordTooLarge, or a failed
// read (an I/O error, compressed data that is corrupt or ends early, which
// wraps the cause: errors.Is(err, io.ErrUnexpectedEOF) for a truncated file).
// Test it with errors.Is, and use errors.As to get the file, line and record
// ID, e.g. to dead-letter an oversized record under its ID.
type ParseError struct {
	File string // the input's name (WithName; Open sets the path, StdinName for "-"), "" if not given
	Line int    // 1-based line: the header line of the record, the offending line for ErrNoHeader, the line being read for a read error
	ID   string // record ID when known (ErrRecordTooLarge), else ""
	Err  error  // the cause, wrapping one of the sentinel errors or the read error
}

// Error implements error: "fasta: FILE line N (record "ID"): cause".
func (e *ParseError) Error() string {
	loc := fmt.Sprintf("line %d", e.Line)
	if e.File != "" {
		loc = e.File + " " + loc
	}
	if e.ID != "" {
		loc += fmt.Sprintf(" (record %q)", e.ID)
	}
	return "fasta: " + loc + ": " + strings.TrimPrefix(e.Err.Error(), "fasta: ")
}

// Unwrap returns the cause.
func (e *ParseError) Unwrap() error { return e.Err }

// Recoverable reports whether reading can continue after err: true for a
// ParseError wrapping ErrEmptyID or ErrRecordTooLarge, whose record the
// Reader skips; false for io.EOF, ErrNoHeader and I/O errors, which the
// Reader returns again on every later call.
func Recoverable(err error) bool {
	return errors.Is(err, ErrEmptyID) || errors.Is(err, ErrRecordTooLarge)
}
