package arrowout_test

import (
	"context"
	"path/filepath"
	"testing"
	"time"

	"github.com/seqembed/seqembed/arrowout"
	"github.com/seqembed/seqembed/internal/natstest"
)

func TestFileFormat(t *testing.T) {
	for _, c := range []struct{ format, out, want string }{
		{"", "x.parquet", arrowout.FormatParquet},
		{"", "x", arrowout.FormatParquet},
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
	if _, err := arrowout.FileFormat("csv", "x.csv"); err == nil {
		t.Error("FileFormat accepted csv")
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
		Truncated: []bool{false, true}, Embeddings: []float32{1, 2, 3, 4, 5, 6}}
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
		if m != meta || len(rows) != 2 || rows[1].ID != "b" || rows[1].Embedding[2] != 6 || !rows[1].Truncated {
			t.Fatalf("%s: meta %+v rows %+v", c.out, m, rows)
		}
	}
	if _, err := arrowout.NewFileSink("csv", filepath.Join(dir, "e.x")); err == nil {
		t.Fatal("NewFileSink accepted format csv")
	}
}
