package arrowout_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/seqembed/seqembed/arrowout"
	"github.com/seqembed/seqembed/internal/natstest"
)

// TestFileFormat: --format wins; without it the suffix decides, and a suffix that names no format
// (or none) is ErrFormat saying how to name the file, never a silent Parquet file. NewFileSink
// refuses such a path before creating anything.
func TestFileFormat(t *testing.T) {
	for _, c := range []struct{ format, out, want string }{
		{"", "x.parquet", arrowout.FormatParquet},
		{"", "x.PARQ", arrowout.FormatParquet},
		{"", "dir.arrow/x.pq", arrowout.FormatParquet},
		{"", "x.arrow", arrowout.FormatArrow},
		{"", "X.ARROWS", arrowout.FormatArrow},
		{"", "x.feather", arrowout.FormatArrow},
		{"", "x.ipc", arrowout.FormatArrow},
		{"parquet", "x.arrow", arrowout.FormatParquet},
		{"arrow", "x.parquet", arrowout.FormatArrow},
		{"Arrow", "x", arrowout.FormatArrow},
	} {
		got, err := arrowout.FileFormat(c.format, c.out)
		if err != nil || got != c.want {
			t.Errorf("arrowout.FileFormat(%q, %q) = %q, %v; want %q", c.format, c.out, got, err, c.want)
		}
	}
	for _, c := range []struct{ format, out, want string }{
		{"csv", "x.csv", `--format "csv": want parquet or arrow`},
		{"", "x", "x has no suffix: name it .parquet, .pq, .parq (Parquet) or .arrow, .arrows, .feather, .ipc (Arrow IPC file), or pass --format parquet|arrow"},
		{"", "emb.csv", "emb.csv has the suffix .csv"},
		{"", "dir.parquet/emb.npy", "the suffix .npy"},
	} {
		got, err := arrowout.FileFormat(c.format, c.out)
		if !errors.Is(err, arrowout.ErrFormat) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("arrowout.FileFormat(%q, %q) = %q, %v; want ErrFormat with %q", c.format, c.out, got, err, c.want)
		}
	}
	dir := t.TempDir()
	if _, err := arrowout.NewFileSink("", filepath.Join(dir, "emb.csv")); !errors.Is(err, arrowout.ErrFormat) {
		t.Errorf("NewFileSink(emb.csv) = %v, want ErrFormat", err)
	}
	if left, _ := os.ReadDir(dir); len(left) != 0 {
		t.Errorf("NewFileSink of an unknown format left %v", left)
	}
}

// StartSink writes the format NewFileSink picked from --format or the extension; the format from --format or the extension, and both files hold the rows.
func TestStartSinkFormats(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	_, js := natstest.Connect(t, natstest.Server(t, nil))
	if _, err := arrowout.EnsureStream(ctx, js, arrowout.StreamConfig{}); err != nil {
		t.Fatal(err)
	}
	meta := arrowout.Meta{Model: "m", Dim: 3}
	p, err := arrowout.NewPublisher(js, "embeddings.m", meta)
	if err != nil {
		t.Fatal(err)
	}
	b := &arrowout.Batch{IDs: []string{"a", "b"}, StreamSeqs: []uint64{1, 2}, Lengths: []int32{5, 6},
		Truncated: []bool{false, true}, Embeddings: []float32{1, 2, 3, 4, 5, 6},
		SeqSHA256s: []string{"aa", "bb"}, Descriptions: []string{"", "protein b"}, InputLengths: []int32{5, 9},
		StopStripped: []bool{true, false}, InputIndexes: []int64{0, 1}}
	if _, err := p.Publish(ctx, b); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	for _, c := range []struct{ out, format, read string }{
		{"a.parquet", "", arrowout.FormatParquet},
		{"b.arrow", "", arrowout.FormatArrow},
		{"c.parquet", "arrow", arrowout.FormatArrow},
		{"d.feather", "parquet", arrowout.FormatParquet},
	} {
		out := filepath.Join(dir, c.out)
		fs, err := arrowout.NewFileSink(c.format, out)
		if err != nil {
			t.Fatal(err)
		}
		s := arrowout.StartSink(ctx, js, arrowout.DefaultStreamName, "embeddings.m", fs, func(rows int) bool { return rows >= 2 })
		<-s.Done() // it stops by itself at 2 rows
		if err := s.Finish(); err != nil {
			t.Fatalf("%s: %v", c.out, err)
		}
		read := arrowout.ReadParquet
		if c.read == arrowout.FormatArrow {
			read = arrowout.ReadArrowFile
		}
		m, rows, err := read(out)
		if err != nil {
			t.Fatalf("%s as %s: %v", c.out, c.read, err)
		}
		if m != meta || len(rows) != 2 || rows[1].ID != "b" || rows[1].Embedding[2] != 6 || !rows[1].Truncated ||
			rows[1].Description != "protein b" || rows[1].InputLength != 9 || !rows[0].StopStripped || rows[1].InputIndex != 1 {
			t.Fatalf("%s: meta %+v rows %+v", c.out, m, rows)
		}
	}
	if _, err := arrowout.NewFileSink("csv", filepath.Join(dir, "e.x")); err == nil {
		t.Fatal("NewFileSink accepted format csv")
	}
}
