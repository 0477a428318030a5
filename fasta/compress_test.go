package fasta

import (
	"bytes"
	"compress/gzip"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/klauspost/compress/zstd"
	"github.com/ulikunitz/xz"
)

// goldenPlain is the repository's golden FASTA (20 UniProt records); testdata/compressed holds it
// compressed by the system tools (see testdata/compressed/README.md), two streams each.
var goldenPlain = filepath.Join("..", "testdata", "golden-input.fasta")

// fixtures are the compressed copies of goldenPlain and their compression.
var fixtures = map[string]Compression{
	"golden.fasta.gz":  Gzip,
	"golden.fasta.xz":  XZ,
	"golden.fasta.zst": Zstd,
	"golden.fasta.bz2": Bzip2,
}

// readFile reads every record of path through Open, failing the test on any error.
func readFile(t *testing.T, path string) []item {
	t.Helper()
	r, closer, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer closer.Close()
	got, final := readAll(t, r)
	if final != nil {
		t.Fatalf("%s: %v", path, final)
	}
	return got
}

// TestCompressedFixtures reads the golden FASTA compressed by gzip, xz, zstd and bzip2 (each file
// two concatenated streams), under its own name and under a name that says nothing (.txt):
// detection is by magic bytes. Count agrees.
func TestCompressedFixtures(t *testing.T) {
	want := readFile(t, goldenPlain)
	if len(want) != 20 {
		t.Fatalf("golden FASTA: %d records", len(want))
	}
	dir := t.TempDir()
	for name, comp := range fixtures {
		path := filepath.Join("testdata", "compressed", name)
		data, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		if got := detect(data); got != comp {
			t.Errorf("%s: detected %v, want %v", name, got, comp)
		}
		misnamed := filepath.Join(dir, comp.String()+"-data.txt")
		if err := os.WriteFile(misnamed, data, 0o600); err != nil {
			t.Fatal(err)
		}
		for _, p := range []string{path, misnamed} {
			if got := readFile(t, p); !equalItems(got, want) {
				t.Errorf("%s: %d records differ from the plain file's %d", p, len(got), len(want))
			}
			if n, err := Count(p); err != nil || n != 20 {
				t.Errorf("Count(%s) = %d, %v; want 20", p, n, err)
			}
		}
		r, closer, err := Open(path)
		if err != nil {
			t.Fatal(err)
		}
		if r.Compression() != comp {
			t.Errorf("%s: Compression() = %v", name, r.Compression())
		}
		closer.Close()
	}
}

// TestSystemTools compresses 300 kB of FASTA with the system's gzip, xz, zstd and bzip2 commands
// at test time and reads it back. Where a command is missing the file is written with the Go
// library instead (bzip2 has no Go writer: then only the committed fixture covers it).
func TestSystemTools(t *testing.T) {
	plain := genFASTA(300 << 10)
	want, final := readAll(t, NewReaderMust(t, string(plain)).Reader)
	if final != nil {
		t.Fatal(final)
	}
	dir := t.TempDir()
	for _, tc := range []struct {
		tool string
		args []string
		comp Compression
		lib  func([]byte) ([]byte, error)
	}{
		{"gzip", []string{"-c"}, Gzip, gzipLib},
		{"xz", []string{"-c", "-T1"}, XZ, xzLib},
		{"zstd", []string{"-q", "-c"}, Zstd, zstdLib},
		{"bzip2", []string{"-c"}, Bzip2, nil},
	} {
		var data []byte
		if _, err := exec.LookPath(tc.tool); err == nil {
			cmd := exec.Command(tc.tool, tc.args...)
			cmd.Stdin = bytes.NewReader(plain)
			if data, err = cmd.Output(); err != nil {
				t.Fatalf("%s: %v", tc.tool, err)
			}
		} else if tc.lib != nil {
			t.Logf("no %s command: writing the file with the Go library", tc.tool)
			if data, err = tc.lib(plain); err != nil {
				t.Fatal(err)
			}
		} else {
			t.Logf("no %s command and no Go writer: only testdata/compressed covers %v", tc.tool, tc.comp)
			continue
		}
		path := filepath.Join(dir, "made-by-"+tc.tool)
		if err := os.WriteFile(path, data, 0o600); err != nil {
			t.Fatal(err)
		}
		if got := readFile(t, path); !equalItems(got, want) {
			t.Errorf("%s: %d records, want %d", tc.tool, len(got), len(want))
		}
	}
}

func gzipLib(b []byte) ([]byte, error) {
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	if _, err := zw.Write(b); err != nil {
		return nil, err
	}
	return buf.Bytes(), zw.Close()
}

func xzLib(b []byte) ([]byte, error) {
	var buf bytes.Buffer
	zw, err := xz.NewWriter(&buf)
	if err != nil {
		return nil, err
	}
	if _, err := zw.Write(b); err != nil {
		return nil, err
	}
	err = zw.Close()
	return buf.Bytes(), err
}

func zstdLib(b []byte) ([]byte, error) {
	enc, err := zstd.NewWriter(nil)
	if err != nil {
		return nil, err
	}
	defer enc.Close()
	return enc.EncodeAll(b, nil), nil
}

// TestTruncatedFiles cuts each compressed fixture in the middle: Next fails with a ParseError that
// names the file and the 1-based line being read and says the file is truncated; the error is not
// recoverable and wraps the decoder's error.
func TestTruncatedFiles(t *testing.T) {
	dir := t.TempDir()
	for name, comp := range fixtures {
		data, err := os.ReadFile(filepath.Join("testdata", "compressed", name))
		if err != nil {
			t.Fatal(err)
		}
		path := filepath.Join(dir, "cut-"+name)
		if err := os.WriteFile(path, data[:len(data)/3], 0o600); err != nil {
			t.Fatal(err)
		}
		// The decoder may fail while Open sniffs the first decoded bytes (xz decodes whole
		// blocks) or later, in Next: either way a ParseError.
		var got []item
		r, closer, final := Open(path)
		if final == nil {
			got, final = readAll(t, r)
			closer.Close()
		}
		var pe *ParseError
		if !errors.As(final, &pe) || pe.File != path || pe.Line < 1 || Recoverable(final) {
			t.Fatalf("%s cut: %d records, final error %#v", name, len(got), final)
		}
		msg := final.Error()
		if !strings.Contains(msg, path) || !strings.Contains(msg, " line ") || !strings.Contains(msg, comp.String()) {
			t.Errorf("%s cut: message %q does not name the file, line and format", name, msg)
		}
		if errors.Is(final, io.ErrUnexpectedEOF) && !strings.Contains(msg, "truncated") {
			t.Errorf("%s cut: message %q does not say truncated", name, msg)
		}
		t.Logf("%s cut: %s", comp, msg)
	}
}

// TestTruncatedGzipNamesFileAndLine is the case: a gzip file cut short used to say
// "fasta: read line 15: unexpected EOF" without the file.
func TestTruncatedGzipNamesFileAndLine(t *testing.T) {
	var plain strings.Builder
	for i := range 40 {
		plain.WriteString(">r" + strings.Repeat("x", i%3) + "\n" + strings.Repeat("ACDEFGHIKLMNPQRSTVWY", 30) + "\n")
	}
	z := gzipBytes(t, []byte(plain.String()))
	path := filepath.Join(t.TempDir(), "proteins.faa.gz")
	if err := os.WriteFile(path, z[:len(z)-30], 0o600); err != nil { // the trailer and some data lost
		t.Fatal(err)
	}
	r, closer, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer closer.Close()
	_, final := readAll(t, r)
	var pe *ParseError
	if !errors.As(final, &pe) || !errors.Is(final, io.ErrUnexpectedEOF) {
		t.Fatalf("final error %v", final)
	}
	want := "fasta: " + path + " line "
	if msg := final.Error(); !strings.HasPrefix(msg, want) || !strings.HasSuffix(msg, "read gzip data: unexpected EOF (the compressed data ends early: the file is truncated)") {
		t.Errorf("message %q", msg)
	}
	if pe.Line < 70 || pe.Line > 80 {
		t.Errorf("line %d: want the line being read near the end (the file has 80)", pe.Line)
	}
}

// TestMislabelled: a file named .xz that holds neither xz nor FASTA fails with ErrNoHeader, and the
// message says the name and the data disagree; a plain FASTA named .gz is read as plain.
func TestMislabelled(t *testing.T) {
	dir := t.TempDir()
	bad := filepath.Join(dir, "proteins.fa.xz")
	if err := os.WriteFile(bad, []byte("<html>not found</html>\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	r, closer, err := Open(bad)
	if err != nil {
		t.Fatal(err)
	}
	defer closer.Close()
	_, err = r.Next()
	var pe *ParseError
	if !errors.Is(err, ErrNoHeader) || !errors.As(err, &pe) || pe.File != bad || pe.Line != 1 {
		t.Fatalf("err = %v", err)
	}
	if !strings.Contains(err.Error(), "the name ends in .xz but the data is plain, not xz") {
		t.Errorf("message %q lacks the mislabelling hint", err)
	}
}

// TestOpenStdin reads xz-compressed FASTA from standard input ("-"); errors name it "stdin".
func TestOpenStdin(t *testing.T) {
	f, err := os.Open(filepath.Join("testdata", "compressed", "golden.fasta.xz"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	defer func(orig *os.File) { os.Stdin = orig }(os.Stdin)
	os.Stdin = f
	if got := readFile(t, "-"); len(got) != 20 {
		t.Errorf("stdin: %d records, want 20", len(got))
	}
	bad, err := os.Open(filepath.Join("testdata", "compressed", "golden.fasta.gz"))
	if err != nil {
		t.Fatal(err)
	}
	defer bad.Close()
	if _, err := bad.Seek(100, io.SeekStart); err != nil { // no gzip magic there: plain garbage
		t.Fatal(err)
	}
	os.Stdin = bad
	r, closer, err := Open("-")
	if err != nil {
		t.Fatal(err)
	}
	defer closer.Close()
	if _, err := r.Next(); err == nil || !strings.HasPrefix(err.Error(), "fasta: stdin line ") {
		t.Errorf("stdin garbage: %v", err)
	}
}

// TestRecordLine: records carry their header's 1-based line.
func TestRecordLine(t *testing.T) {
	r := NewReaderMust(t, ";c\n\n>a\nAA\nAA\n>b\n>c x\nC\n")
	for _, want := range []struct {
		id   string
		line int
	}{{"a", 3}, {"b", 6}, {"c", 7}} {
		rec, err := r.Next()
		if err != nil || rec.ID != want.id || rec.Line != want.line {
			t.Errorf("record %q line %d, %v; want %q line %d", rec.ID, rec.Line, err, want.id, want.line)
		}
	}
}

// TestParseErrorNamesFile: WithName puts the file in every parse error.
func TestParseErrorNamesFile(t *testing.T) {
	r, err := NewReader(strings.NewReader(">a\nA\n>\nB\n"), WithName("in.faa"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r.Next(); err != nil {
		t.Fatal(err)
	}
	_, err = r.Next()
	if want := "fasta: in.faa line 3: header has no identifier"; err == nil || err.Error() != want {
		t.Errorf("err = %v, want %q", err, want)
	}
}

// TestBrokenCompressedHeader: magic bytes followed by garbage fail in Open, naming the file and
// the format.
func TestBrokenCompressedHeader(t *testing.T) {
	dir := t.TempDir()
	for name, data := range map[string][]byte{
		"a.gz": {0x1f, 0x8b, 0, 0, 1, 2, 3},
		"b.xz": append(append([]byte{}, xzMagic...), 9, 9, 9, 9, 9, 9),
	} {
		path := filepath.Join(dir, name)
		if err := os.WriteFile(path, data, 0o600); err != nil {
			t.Fatal(err)
		}
		_, _, err := Open(path)
		if err == nil || !strings.HasPrefix(err.Error(), "fasta: "+path+": ") || !strings.Contains(err.Error(), " header: ") {
			t.Errorf("%s: %v", name, err)
		}
	}
}
