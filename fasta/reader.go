// Package fasta streams records from protein FASTA files, plain or compressed
// with gzip (bgzip too), xz, zstd or bzip2: the compression is detected from
// the first bytes (magic numbers), never from the file name.
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
//
// Every error Next returns other than io.EOF is a *ParseError naming the file
// (WithName; Open sets it) and the 1-based line.
package fasta

import (
	"bufio"
	"bytes"
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

var utf8BOM = []byte{0xef, 0xbb, 0xbf}

// StdinName is how standard input ("-" to Open) is named in errors.
const StdinName = "stdin"

// isSpace marks the ASCII whitespace bytes removed from sequences and used to
// split headers.
var isSpace = [256]bool{' ': true, '\t': true, '\n': true, '\v': true, '\f': true, '\r': true}

// Record is one FASTA record.
type Record struct {
	ID   string // first word of the header; never empty
	Desc string // rest of the header, trimmed; may be empty
	Line int    // 1-based line of the header
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
	name           string
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

// WithName names the input in errors (ParseError.File), e.g. its path; Open
// sets it. Default: none, and errors give only the line.
func WithName(name string) Option {
	return func(c *config) error {
		c.name = name
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
	br      *bufio.Reader
	max     int
	name    string      // ParseError.File
	comp    Compression // of the source
	release func()      // frees the decompressor
	hint    string      // added to ErrNoHeader: why the data may not be FASTA

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

// NewReader returns a Reader for r: plain FASTA, or FASTA compressed with
// gzip (multi-member, such as bgzip output, included), xz, zstd or bzip2,
// detected from the first bytes. The caller keeps ownership of r; Close
// releases the decompressor. It fails on an invalid option, a compressed
// header that cannot be read, or an I/O error while sniffing the first bytes.
func NewReader(r io.Reader, opts ...Option) (*Reader, error) {
	cfg := config{maxRecordBytes: DefaultMaxRecordBytes, bufferSize: defaultBufferSize}
	for _, opt := range opts {
		if err := opt(&cfg); err != nil {
			return nil, err
		}
	}
	br, comp, release, err := newSource(r, cfg.bufferSize, cfg.name)
	if err != nil {
		return nil, err
	}
	rd := &Reader{br: br, max: cfg.maxRecordBytes, name: cfg.name, comp: comp, release: release}
	rd.hint = mislabelled(cfg.name, comp)
	return rd, nil
}

// newSource buffers r, decompressing it as its magic bytes say, and skips a
// UTF-8 byte order mark. Errors name the source (name, may be empty).
func newSource(r io.Reader, size int, name string) (*bufio.Reader, Compression, func(), error) {
	br := bufio.NewReaderSize(r, size)
	magic, err := br.Peek(magicLen) // the buffer (at least 16 bytes) holds them
	if err != nil && !errors.Is(err, io.EOF) {
		return nil, Plain, nil, &ParseError{File: name, Line: 1, Err: readError(Plain, err)}
	}
	comp := detect(magic)
	release := func() {}
	if comp != Plain {
		zr, rel, err := decompress(br, comp)
		if err != nil {
			where := "fasta: "
			if name != "" {
				where += name + ": "
			}
			return nil, comp, nil, fmt.Errorf("%s%s header: %w (the file is corrupt)", where, comp, err)
		}
		br, release = bufio.NewReaderSize(zr, size), rel
	}
	bom, err := br.Peek(len(utf8BOM))
	if err != nil && !errors.Is(err, io.EOF) {
		release()
		return nil, comp, nil, &ParseError{File: name, Line: 1, Err: readError(comp, err)}
	}
	if bytes.Equal(bom, utf8BOM) {
		_, _ = br.Discard(len(utf8BOM))
	}
	return br, comp, release, nil
}

// Compression is how the source is compressed.
func (r *Reader) Compression() Compression { return r.comp }

// Close releases the decompressor (not the io.Reader given to NewReader).
// Calling it more than once is harmless.
func (r *Reader) Close() error {
	if r.release != nil {
		r.release()
		r.release = nil
	}
	return nil
}

// Open opens the FASTA file at path (plain or compressed, see NewReader);
// "-" reads standard input, named StdinName in errors. Errors name the path
// (WithName(path) comes first: a later WithName overrides it). The caller
// must Close the returned Closer when done: it releases the Reader and closes
// the file (never standard input).
func Open(path string, opts ...Option) (*Reader, io.Closer, error) {
	f, closer, err := openFile(path)
	if err != nil {
		return nil, nil, err
	}
	r, err := NewReader(f, append([]Option{WithName(DisplayName(path))}, opts...)...)
	if err != nil {
		_ = closer.Close()
		return nil, nil, err
	}
	return r, readerCloser{r, closer}, nil
}

// DisplayName is how Open names path in errors: StdinName for "-", else path.
func DisplayName(path string) string {
	if path == "-" {
		return StdinName
	}
	return path
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

// readerCloser is Open's Closer: the Reader's decompressor, then the file.
type readerCloser struct {
	r *Reader
	f io.Closer
}

func (c readerCloser) Close() error {
	_ = c.r.Close()
	return c.f.Close()
}

// nopCloser is the Closer returned for standard input, which Open leaves open.
type nopCloser struct{}

func (nopCloser) Close() error { return nil }

// Count returns the number of records in the file at path (plain or
// compressed), for sizing progress bars. It counts lines that begin with '>',
// which is the number of Next calls that return a record or a recoverable
// ParseError; it does not validate the file. Count("-") returns ErrStdin.
func Count(path string) (int, error) {
	if path == "-" {
		return 0, ErrStdin
	}
	f, closer, err := openFile(path)
	if err != nil {
		return 0, err
	}
	defer closer.Close()
	br, _, release, err := newSource(f, defaultBufferSize, path)
	if err != nil {
		return 0, err
	}
	defer release()
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
// other error (ErrNoHeader, a read error, io.EOF) is returned again by every
// later call.
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
		return Record{}, &ParseError{File: r.name, Line: line, Err: ErrEmptyID}
	}
	r.seq = r.seq[:0]
	switch err := r.scan(modeKeep); {
	case err == nil || err == io.EOF:
		return Record{ID: id, Desc: desc, Line: line, Seq: r.seq}, nil
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
	return &ParseError{File: r.name, Line: line, ID: id,
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
				err := ErrNoHeader
				if r.hint != "" {
					err = fmt.Errorf("%w (%s)", ErrNoHeader, r.hint)
				}
				return &ParseError{File: r.name, Line: r.line, Err: err}
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
// whether it ends one. It returns io.EOF at the end of input and other read
// errors as a ParseError at the line being read.
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
		return nil, false, false, &ParseError{File: r.name, Line: max(r.line, 1), Err: readError(r.comp, err)}
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
