package fasta

import (
	"errors"
	"fmt"
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

// ParseError locates a format error. It wraps ErrNoHeader, ErrEmptyID or
// ErrRecordTooLarge, so test it with errors.Is and use errors.As to get the
// record ID, e.g. to dead-letter an oversized record under its ID.
type ParseError struct {
	Line int    // 1-based line: the header line of the record, or the offending line for ErrNoHeader
	ID   string // record ID when known (ErrRecordTooLarge), else ""
	Err  error  // the cause, wrapping one of the sentinel errors
}

// Error implements error.
func (e *ParseError) Error() string {
	if e.ID != "" {
		return fmt.Sprintf("%v: record %q at line %d", e.Err, e.ID, e.Line)
	}
	return fmt.Sprintf("%v: line %d", e.Err, e.Line)
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
