package fasta

import (
	"bytes"
	"compress/gzip"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// item is one Next result: a record, or an error with its location.
type item struct {
	ID, Desc, Seq string
	Err           error // sentinel the error must wrap; nil for a record
	Line          int   // ParseError.Line, for errors
}

// readAll calls Next until io.EOF or an unrecoverable error, which it
// returns as the final item (nil for io.EOF). Records are copied.
func readAll(t testing.TB, r *Reader) (items []item, final error) {
	t.Helper()
	for range 1 << 20 {
		rec, err := r.Next()
		if err == nil {
			items = append(items, item{ID: rec.ID, Desc: rec.Desc, Seq: string(rec.Seq)})
			continue
		}
		if err == io.EOF {
			return items, nil
		}
		var pe *ParseError
		if !errors.As(err, &pe) {
			return items, err
		}
		it := item{ID: pe.ID, Err: pe.Err, Line: pe.Line}
		switch {
		case errors.Is(err, ErrEmptyID):
			it.Err = ErrEmptyID
		case errors.Is(err, ErrRecordTooLarge):
			it.Err = ErrRecordTooLarge
		case errors.Is(err, ErrNoHeader):
			it.Err = ErrNoHeader
		}
		items = append(items, it)
		if !Recoverable(err) {
			// Fatal errors are sticky.
			if _, again := r.Next(); again != err {
				t.Errorf("error not sticky: %v then %v", err, again)
			}
			return items, err
		}
	}
	t.Fatal("Next did not terminate")
	return nil, nil
}

func TestReader(t *testing.T) {
	long := strings.Repeat("ACDEFGHIKLMNPQRSTVWY", 10_000) // 200 kB on one line
	tests := []struct {
		name  string
		in    string
		opts  []Option
		want  []item
		fatal error // ErrNoHeader, or nil for a clean io.EOF
	}{
		{name: "empty", in: ""},
		{name: "blank and comments only", in: "\n  \n;comment\n\t\r\n"},
		{
			name: "basic",
			in:   ">sp|P1|A desc here\nMKV\nLLA\n>P2\nGG\n",
			want: []item{{ID: "sp|P1|A", Desc: "desc here", Seq: "MKVLLA"}, {ID: "P2", Seq: "GG"}},
		},
		{
			name: "header whitespace",
			in:   ">  id1 \t multi  word\tdesc \r\nAC\n>id2\t\nD\n",
			want: []item{{ID: "id1", Desc: "multi  word\tdesc", Seq: "AC"}, {ID: "id2", Seq: "D"}},
		},
		{
			name: "crlf and no trailing newline",
			in:   ">a x\r\nAB C\r\n\r\nD E\r\n>b\r\nFF",
			want: []item{{ID: "a", Desc: "x", Seq: "ABCDE"}, {ID: "b", Seq: "FF"}},
		},
		{
			name: "header without newline at eof",
			in:   ">only",
			want: []item{{ID: "only"}},
		},
		{
			name: "empty sequences kept",
			in:   ">e1\n>e2\n\n>e3 d\nM\n>e4\n",
			want: []item{{ID: "e1"}, {ID: "e2"}, {ID: "e3", Desc: "d", Seq: "M"}, {ID: "e4"}},
		},
		{
			name: "preamble and inner comments",
			in:   "\n;file comment\n   \n>p\n;note\nAA\n;note 2\nBB\n",
			want: []item{{ID: "p", Seq: "AABB"}},
		},
		{
			name: "bytes kept unvalidated",
			in:   ">x\nab*-1X\x00\xff\n",
			want: []item{{ID: "x", Seq: "ab*-1X\x00\xff"}},
		},
		{
			name:  "data before header",
			in:    "\n;c\nMKV\n>p\nAA\n",
			want:  []item{{Err: ErrNoHeader, Line: 3}},
			fatal: ErrNoHeader,
		},
		{
			name:  "indented header is data",
			in:    " >p\nAA\n",
			want:  []item{{Err: ErrNoHeader, Line: 1}},
			fatal: ErrNoHeader,
		},
		{
			name: "empty id skipped",
			in:   ">a\nA\n>\nBB\nCC\n> \t \r\nDD\n> \t desc only\nE\n",
			want: []item{
				{ID: "a", Seq: "A"},
				{Err: ErrEmptyID, Line: 3},
				{Err: ErrEmptyID, Line: 6},
				{ID: "desc", Desc: "only", Seq: "E"},
			},
		},
		{
			name: "too large sequence skipped",
			in:   ">a\nAAAA\n>big x\nAAA\nAAA\nAAA\n>c\nCCCCC\n>d\nDD",
			opts: []Option{WithMaxRecordBytes(5)},
			want: []item{
				{ID: "a", Seq: "AAAA"},
				{ID: "big", Err: ErrRecordTooLarge, Line: 3},
				{ID: "c", Seq: "CCCCC"},
				{ID: "d", Seq: "DD"},
			},
		},
		{
			name: "too large header skipped",
			in:   ">h1 0123456789\nAA\n>h2\nBB\n",
			opts: []Option{WithMaxRecordBytes(8)},
			want: []item{{ID: "h1", Err: ErrRecordTooLarge, Line: 1}, {ID: "h2", Seq: "BB"}},
		},
		{
			name: "too large at eof",
			in:   ">a\nAAAAAA",
			opts: []Option{WithMaxRecordBytes(5)},
			want: []item{{ID: "a", Err: ErrRecordTooLarge, Line: 1}},
		},
		{
			name: "whitespace does not count toward the limit",
			in:   ">a\nA A A\nA A\n",
			opts: []Option{WithMaxRecordBytes(5)},
			want: []item{{ID: "a", Seq: "AAAAA"}},
		},
		{
			name: "very long line",
			in:   ">long\n" + long + "\r\n>short\nM\n",
			want: []item{{ID: "long", Seq: long}, {ID: "short", Seq: "M"}},
		},
		{
			name: "very long line, tiny buffer",
			in:   ">long " + strings.Repeat("d", 100) + "\n" + long[:1000] + "\n" + long[:77] + "\n>short\nM\n",
			opts: []Option{withBufferSize(16)},
			want: []item{
				{ID: "long", Desc: strings.Repeat("d", 100), Seq: long[:1000] + long[:77]},
				{ID: "short", Seq: "M"},
			},
		},
		{
			name: "long too-large line, tiny buffer",
			in:   ">x\n" + long[:500] + "\n>y\nAA\n",
			opts: []Option{withBufferSize(16), WithMaxRecordBytes(100)},
			want: []item{{ID: "x", Err: ErrRecordTooLarge, Line: 1}, {ID: "y", Seq: "AA"}},
		},
		{
			name: "byte order mark",
			in:   "\xef\xbb\xbf>bom\nAA\n",
			want: []item{{ID: "bom", Seq: "AA"}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			for _, gz := range []bool{false, true} {
				in := []byte(tt.in)
				if gz {
					in = gzipBytes(t, in)
				}
				r, err := NewReader(bytes.NewReader(in), tt.opts...)
				if err != nil {
					t.Fatal(err)
				}
				got, final := readAll(t, r)
				if !equalItems(got, tt.want) {
					t.Errorf("gzip=%v\n got %+v\nwant %+v", gz, got, tt.want)
				}
				if (tt.fatal == nil) != (final == nil) || !errors.Is(final, tt.fatal) {
					t.Errorf("gzip=%v: final error %v, want %v", gz, final, tt.fatal)
				}
				if tt.fatal == nil {
					if _, err := r.Next(); err != io.EOF {
						t.Errorf("Next after EOF = %v", err)
					}
				}
				n, err := countHeaders(mustSource(t, in))
				if err != nil {
					t.Fatal(err)
				}
				if tt.fatal == nil && n != len(tt.want) {
					t.Errorf("countHeaders = %d, want %d", n, len(tt.want))
				}
			}
		})
	}
}

func equalItems(a, b []item) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func TestParseErrorMessage(t *testing.T) {
	r, err := NewReader(strings.NewReader(">a\nA\n>sp|Q9 big\nAAAAAA\nAAAAAA\n"), WithMaxRecordBytes(10))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r.Next(); err != nil {
		t.Fatal(err)
	}
	_, err = r.Next()
	var pe *ParseError
	if !errors.As(err, &pe) || pe.ID != "sp|Q9" || pe.Line != 3 || !errors.Is(err, ErrRecordTooLarge) {
		t.Fatalf("err = %#v", err)
	}
	want := `fasta: line 3 (record "sp|Q9"): record too large: sequence exceeds 10 bytes`
	if err.Error() != want {
		t.Errorf("message = %q, want %q", err.Error(), want)
	}
	_, err = NewReaderMust(t, ">ok\nA\nB\n\nC\n>\nA\n").nextN(2)
	if want := "fasta: line 6: header has no identifier"; err == nil || err.Error() != want {
		t.Errorf("empty id message = %v, want %q", err, want)
	}
}

type testReader struct {
	*Reader
	t *testing.T
}

func NewReaderMust(t *testing.T, in string) testReader {
	r, err := NewReader(strings.NewReader(in))
	if err != nil {
		t.Fatal(err)
	}
	return testReader{r, t}
}

// nextN calls Next n times and returns the last result.
func (r testReader) nextN(n int) (rec Record, err error) {
	for range n {
		rec, err = r.Next()
	}
	return rec, err
}

func TestSeqBufferReused(t *testing.T) {
	r := NewReaderMust(t, ">a\nAAAA\n>b\nCC\n")
	a, err := r.Next()
	if err != nil {
		t.Fatal(err)
	}
	id := a.ID
	if _, err := r.Next(); err != nil {
		t.Fatal(err)
	}
	if string(a.Seq) != "CCAA" || id != "a" {
		t.Errorf("expected Seq to alias the reused buffer: %q (id %q)", a.Seq, id)
	}
}

func TestOptions(t *testing.T) {
	for _, n := range []int{0, -1} {
		if _, err := NewReader(strings.NewReader(""), WithMaxRecordBytes(n)); !errors.Is(err, ErrOption) {
			t.Errorf("WithMaxRecordBytes(%d): err = %v, want ErrOption", n, err)
		}
	}
}

func TestGzipErrors(t *testing.T) {
	// Magic bytes followed by garbage: the gzip header is rejected up front.
	if _, err := NewReader(bytes.NewReader([]byte{0x1f, 0x8b, 0, 0})); err == nil {
		t.Error("NewReader accepted a broken gzip header")
	}
	// A truncated stream fails on Next with an I/O error, stickily.
	z := gzipBytes(t, []byte(">a\n"+strings.Repeat("ACDEFGHIKL", 10_000)+"\n"))
	r, err := NewReader(bytes.NewReader(z[:len(z)/2]))
	if err != nil {
		t.Fatal(err)
	}
	_, err = r.Next()
	if !errors.Is(err, io.ErrUnexpectedEOF) || Recoverable(err) {
		t.Fatalf("truncated gzip: err = %v", err)
	}
	if _, again := r.Next(); again != err {
		t.Errorf("I/O error not sticky: %v", again)
	}
}

func TestMultiMemberGzip(t *testing.T) {
	in := append(gzipBytes(t, []byte(">a\nAA\n")), gzipBytes(t, []byte(">b\nBB\n"))...)
	r, err := NewReader(bytes.NewReader(in))
	if err != nil {
		t.Fatal(err)
	}
	got, final := readAll(t, r)
	if want := []item{{ID: "a", Seq: "AA"}, {ID: "b", Seq: "BB"}}; final != nil || !equalItems(got, want) {
		t.Errorf("got %+v, %v", got, final)
	}
}

func TestOpenAndCount(t *testing.T) {
	dir := t.TempDir()
	content := []byte(";c\n>a one\nAA\n>b\nBB\nB\n>c\n")
	plain := filepath.Join(dir, "plain.fa")
	// A gzip file whose name does not say so: detection is by magic bytes.
	packed := filepath.Join(dir, "packed.txt")
	// A plain file named .gz is read as plain.
	misnamed := filepath.Join(dir, "misnamed.fa.gz")
	for path, data := range map[string][]byte{plain: content, packed: gzipBytes(t, content), misnamed: content} {
		if err := os.WriteFile(path, data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	want := []item{{ID: "a", Desc: "one", Seq: "AA"}, {ID: "b", Seq: "BBB"}, {ID: "c"}}
	for _, path := range []string{plain, packed, misnamed} {
		r, closer, err := Open(path)
		if err != nil {
			t.Fatal(err)
		}
		got, final := readAll(t, r)
		if final != nil || !equalItems(got, want) {
			t.Errorf("%s: got %+v, %v", path, got, final)
		}
		if err := closer.Close(); err != nil {
			t.Error(err)
		}
		n, err := Count(path)
		if err != nil || n != 3 {
			t.Errorf("Count(%s) = %d, %v; want 3", path, n, err)
		}
	}
	if _, _, err := Open(filepath.Join(dir, "missing.fa")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("Open(missing) = %v", err)
	}
	if _, err := Count(filepath.Join(dir, "missing.fa")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("Count(missing) = %v", err)
	}
	if _, err := Count("-"); !errors.Is(err, ErrStdin) {
		t.Errorf("Count(-) = %v, want ErrStdin", err)
	}
	r, closer, err := Open("-")
	if err != nil || r == nil {
		t.Fatalf("Open(-) = %v, %v", r, err)
	}
	if err := closer.Close(); err != nil {
		t.Error(err)
	}
}

func TestCountAcrossBufferBoundary(t *testing.T) {
	// Place a header exactly at the start of the second read buffer.
	pad := strings.Repeat("A", defaultBufferSize-len(">a\n")-1) + "\n"
	in := ">a\n" + pad + ">b\nC\n"
	n, err := countHeaders(strings.NewReader(in))
	if err != nil || n != 2 {
		t.Errorf("countHeaders = %d, %v; want 2", n, err)
	}
}

func gzipBytes(t testing.TB, b []byte) []byte {
	t.Helper()
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	if _, err := zw.Write(b); err != nil {
		t.Fatal(err)
	}
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func mustSource(t testing.TB, b []byte) io.Reader {
	t.Helper()
	br, _, _, err := newSource(bytes.NewReader(b), defaultBufferSize, "")
	if err != nil {
		t.Fatal(err)
	}
	return br
}
