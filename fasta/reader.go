// Package fasta streams records from protein FASTA files, plain or gzip
// compressed (detected by the gzip magic bytes, not the file name).
//
// Format accepted:
//
//   - A record starts at a line beginning with '>'. Its ID is the first word
//     of the header (leading whitespace after '>' is skipped); Desc is the
//     rest of the line with surrounding whitespace trimmed.
//   - Following lines, up to the next header or the end of input, are the
//     sequence. ASCII whitespace (space, \t, \n, \v, \f, \r) is removed; all
//     other bytes are kept as they are: validating residues is the caller's
//     job. A header with no sequence lines yields a record with empty Seq.
//   - Lines beginning with ';' are comments anywhere in the file. Before the
//     first header only comments and blank lines are allowed.
//   - LF and CRLF line ends, a missing final newline, a leading UTF-8 byte
//     order mark and lines of any length are handled.
package fasta

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"errors"
	"fmt"
	"io"
	"os"
)

// DefaultMaxRecordBytes is the default WithMaxRecordBytes limit: 1 MiB, far
// above the longest known protein (~35k residues) while bounding memory.
const DefaultMaxRecordBytes = 1 << 20

// defaultBufferSize is the size of the line buffer; longer lines are read in
// pieces.
const defaultBufferSize = 64 << 10

var (
	gzipMagic = []byte{0x1f, 0x8b}
	utf8BOM   = []byte{0xef, 0xbb, 0xbf}
)

// isSpace marks the ASCII whitespace bytes removed from sequences and used to
// split headers.
var isSpace = [256]bool{' ': true, '\t': true, '\n': true, '\v': true, '\f': true, '\r': true}

// Record is one FASTA record.
type Record struct {
	ID   string // first word of the header; never empty
	Desc string // rest of the header, trimmed; may be empty
	// Seq holds the residues with whitespace removed. It aliases the
	// Reader's buffer and is valid only until the next call to Next; copy it
	// to keep it.
	Seq []byte
}

// Option configures a Reader.
type Option func(*config) error

type config struct {
	maxRecordBytes int
	bufferSize     int
}

// WithMaxRecordBytes sets the largest accepted record: a sequence of more
// than n residues, or a header line of more than n bytes, yields a
// ParseError wrapping ErrRecordTooLarge and the record is skipped. n must be
// positive; the default is DefaultMaxRecordBytes (1 MiB).
func WithMaxRecordBytes(n int) Option {
	return func(c *config) error {
		if n <= 0 {
			return fmt.Errorf("%w: max record bytes %d, must be positive", ErrOption, n)
		}
		c.maxRecordBytes = n
		return nil
	}
}

// withBufferSize sets the line buffer size (minimum 16), so tests can
// exercise lines longer than the buffer with small inputs.
func withBufferSize(n int) Option {
	return func(c *config) error {
		c.bufferSize = n
		return nil
	}
}

// Reader reads FASTA records one at a time. It holds at most one record (plus
// one line buffer) in memory. A Reader is not safe for concurrent use.
type Reader struct {
	br  *bufio.Reader
	max int

	line    int  // number of the current (last started) line, 1-based
	midLine bool // the last chunk read did not end its line
	eof     bool // the source is exhausted
	err     error

	pending    bool   // hdr holds the header of the next record
	hdr        []byte // header line after '>', without the line end, at most max bytes
	hdrLine    int
	hdrTooLong bool
	skip       bool // discard lines up to the next header before reading on

	seq []byte
}

// NewReader returns a Reader for r, which may be plain or gzip-compressed
// FASTA (multi-member gzip, such as bgzip output, included). The caller
// keeps ownership of r. It fails on an invalid option, a gzip header that
// cannot be read, or an I/O error while sniffing the first bytes.
func NewReader(r io.Reader, opts ...Option) (*Reader, error) {
	cfg := config{maxRecordBytes: DefaultMaxRecordBytes, bufferSize: defaultBufferSize}
	for _, opt := range opts {
		if err := opt(&cfg); err != nil {
			return nil, err
		}
	}
	br, err := newSource(r, cfg.bufferSize)
	if err != nil {
		return nil, err
	}
	return &Reader{br: br, max: cfg.maxRecordBytes}, nil
}

// newSource buffers r, decompressing it if it starts with the gzip magic, and
// skips a UTF-8 byte order mark.
func newSource(r io.Reader, size int) (*bufio.Reader, error) {
	br := bufio.NewReaderSize(r, size)
	magic, err := br.Peek(len(gzipMagic))
	if err != nil && !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("fasta: read: %w", err)
	}
	if bytes.Equal(magic, gzipMagic) {
		zr, err := gzip.NewReader(br)
		if err != nil {
			return nil, fmt.Errorf("fasta: gzip: %w", err)
		}
		br = bufio.NewReaderSize(zr, size)
	}
	bom, err := br.Peek(len(utf8BOM))
	if err != nil && !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("fasta: read: %w", err)
	}
	if bytes.Equal(bom, utf8BOM) {
		_, _ = br.Discard(len(utf8BOM))
	}
	return br, nil
}

// Open opens the FASTA file at path, plain or gzip-compressed; "-" reads
// standard input. The caller must Close the returned Closer when done (it
// does not close standard input).
func Open(path string, opts ...Option) (*Reader, io.Closer, error) {
	f, closer, err := openFile(path)
	if err != nil {
		return nil, nil, err
	}
	r, err := NewReader(f, opts...)
	if err != nil {
		_ = closer.Close()
		return nil, nil, fmt.Errorf("%w (%s)", err, path)
	}
	return r, closer, nil
}

func openFile(path string) (io.Reader, io.Closer, error) {
	if path == "-" {
		return os.Stdin, nopCloser{}, nil
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, nil, fmt.Errorf("fasta: %w", err)
	}
	return f, f, nil
}

// nopCloser is the Closer returned for standard input, which Open leaves open.
type nopCloser struct{}

func (nopCloser) Close() error { return nil }

// Count returns the number of records in the file at path (plain or gzip),
// for sizing progress bars. It counts lines that begin with '>', which is the
// number of Next calls that return a record or a recoverable ParseError; it
// does not validate the file. Count("-") returns ErrStdin.
func Count(path string) (int, error) {
	if path == "-" {
		return 0, ErrStdin
	}
	f, closer, err := openFile(path)
	if err != nil {
		return 0, err
	}
	defer closer.Close()
	br, err := newSource(f, defaultBufferSize)
	if err != nil {
		return 0, fmt.Errorf("%w (%s)", err, path)
	}
	n, err := countHeaders(br)
	if err != nil {
		return n, fmt.Errorf("fasta: count %s: %w", path, err)
	}
	return n, nil
}

// countHeaders counts the lines of r that begin with '>'.
func countHeaders(r io.Reader) (int, error) {
	buf := make([]byte, defaultBufferSize)
	n, atLineStart := 0, true
	for {
		k, err := r.Read(buf)
		if k > 0 {
			b := buf[:k]
			if atLineStart && b[0] == '>' {
				n++
			}
			n += bytes.Count(b, []byte("\n>"))
			atLineStart = b[k-1] == '\n'
		}
		if errors.Is(err, io.EOF) {
			return n, nil
		}
		if err != nil {
			return n, err
		}
	}
}

// Next returns the next record, or io.EOF after the last one.
//
// A ParseError wrapping ErrEmptyID or ErrRecordTooLarge (see Recoverable)
// skips that record: the following call continues with the next record. Any
// other error (ErrNoHeader, I/O or gzip errors, io.EOF) is returned again by
// every later call.
//
// The returned Seq is only valid until the next call to Next; ID and Desc
// are freshly allocated.
func (r *Reader) Next() (Record, error) {
	if r.err != nil {
		return Record{}, r.err
	}
	if r.skip {
		r.skip = false
		if err := r.scan(modeSkip); err != nil && err != io.EOF {
			return r.fail(err)
		}
	}
	if !r.pending {
		// Only at the start of input (or at its end) is there no pending header.
		if err := r.scan(modePreamble); err != nil {
			return r.fail(err)
		}
	}
	r.pending = false
	line := r.hdrLine
	id, desc := splitHeader(r.hdr)
	if r.hdrTooLong {
		r.skip = true
		return Record{}, r.tooLarge(id, line, "header line")
	}
	if id == "" {
		r.skip = true
		return Record{}, &ParseError{Line: line, Err: ErrEmptyID}
	}
	r.seq = r.seq[:0]
	switch err := r.scan(modeKeep); {
	case err == nil || err == io.EOF:
		return Record{ID: id, Desc: desc, Seq: r.seq}, nil
	case errors.Is(err, errSeqTooLarge):
		r.skip = true
		return Record{}, r.tooLarge(id, line, "sequence")
	default:
		return r.fail(err)
	}
}

func (r *Reader) fail(err error) (Record, error) {
	r.err = err
	return Record{}, err
}

func (r *Reader) tooLarge(id string, line int, what string) error {
	return &ParseError{Line: line, ID: id,
		Err: fmt.Errorf("%w: %s exceeds %d bytes", ErrRecordTooLarge, what, r.max)}
}

// errSeqTooLarge is scan's internal signal that the sequence hit the limit.
var errSeqTooLarge = errors.New("sequence too large")

// scanMode says what scan does with lines that are neither headers nor
// comments.
type scanMode int

const (
	modePreamble scanMode = iota // only blank lines are allowed: before the first header
	modeKeep                     // append residues to r.seq
	modeSkip                     // discard: the rest of a skipped record
)

// scan consumes lines up to and including the next header, which it stores
// as pending, and returns nil; or it returns io.EOF at the end of input,
// errSeqTooLarge, a ParseError or an I/O error.
func (r *Reader) scan(mode scanMode) error {
	comment := false
	for {
		chunk, first, last, err := r.readChunk()
		if err != nil {
			return err
		}
		if first {
			comment = false
			if len(chunk) > 0 {
				switch chunk[0] {
				case '>':
					return r.readHeader(chunk[1:], last)
				case ';':
					comment = true
				}
			}
		}
		if comment {
			continue
		}
		switch mode {
		case modePreamble:
			if !isBlank(chunk) {
				return &ParseError{Line: r.line, Err: ErrNoHeader}
			}
		case modeKeep:
			if err := r.appendResidues(chunk); err != nil {
				return err
			}
		case modeSkip:
		}
	}
}

// readHeader stores the header line whose first piece (after '>') is chunk
// as the pending header, reading the rest of the line.
func (r *Reader) readHeader(chunk []byte, last bool) error {
	r.hdr, r.hdrLine, r.hdrTooLong = r.hdr[:0], r.line, false
	for {
		if room := r.max - len(r.hdr); len(chunk) > room {
			r.hdr = append(r.hdr, chunk[:room]...)
			r.hdrTooLong = true
		} else if !r.hdrTooLong {
			r.hdr = append(r.hdr, chunk...)
		}
		if last {
			r.pending = true
			return nil
		}
		var err error
		if chunk, _, last, err = r.readChunk(); err != nil {
			return err
		}
	}
}

// appendResidues appends the non-whitespace bytes of b to r.seq.
func (r *Reader) appendResidues(b []byte) error {
	for len(b) > 0 {
		i := 0
		for i < len(b) && !isSpace[b[i]] {
			i++
		}
		if i > 0 {
			if len(r.seq)+i > r.max {
				return errSeqTooLarge
			}
			r.seq = append(r.seq, b[:i]...)
		}
		for i < len(b) && isSpace[b[i]] {
			i++
		}
		b = b[i:]
	}
	return nil
}

// readChunk returns the next piece of the current line, without its '\n'
// (the bytes are valid until the next read), whether it starts a line and
// whether it ends one. It returns io.EOF at the end of input and wraps other
// read errors with the line number.
func (r *Reader) readChunk() (chunk []byte, first, last bool, err error) {
	if r.eof {
		return nil, false, false, io.EOF
	}
	b, err := r.br.ReadSlice('\n')
	first = !r.midLine
	if first && (len(b) > 0 || err == nil || errors.Is(err, bufio.ErrBufferFull)) {
		r.line++
	}
	switch {
	case err == nil:
		r.midLine = false
		return b[:len(b)-1], first, true, nil
	case errors.Is(err, bufio.ErrBufferFull):
		r.midLine = true
		return b, first, false, nil
	case errors.Is(err, io.EOF):
		r.eof = true
		if len(b) == 0 && !r.midLine {
			return nil, false, false, io.EOF
		}
		r.midLine = false
		return b, first, true, nil // final line without '\n'
	default:
		return nil, false, false, fmt.Errorf("fasta: read line %d: %w", r.line, err)
	}
}

// splitHeader splits a header (without '>') into its first word and the
// trimmed rest.
func splitHeader(h []byte) (id, desc string) {
	h = trimLeft(h)
	i := 0
	for i < len(h) && !isSpace[h[i]] {
		i++
	}
	id = string(h[:i])
	rest := trimLeft(h[i:])
	j := len(rest)
	for j > 0 && isSpace[rest[j-1]] {
		j--
	}
	return id, string(rest[:j])
}

func trimLeft(b []byte) []byte {
	for len(b) > 0 && isSpace[b[0]] {
		b = b[1:]
	}
	return b
}

func isBlank(b []byte) bool {
	return len(trimLeft(b)) == 0
}
