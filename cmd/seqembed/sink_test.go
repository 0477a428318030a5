package main

import (
	"context"
	"path/filepath"
	"testing"
	"time"

	"github.com/seqembed/seqembed/arrowout"
	"github.com/seqembed/seqembed/internal/natstest"
)

func TestSinkFormat(t *testing.T) {
	for _, c := range []struct{ format, out, want string }{
		{"", "x.parquet", formatParquet},
		{"", "x", formatParquet},
		{"", "dir.arrow/x.pq", formatParquet},
		{"", "x.arrow", formatArrow},
		{"", "X.ARROWS", formatArrow},
		{"", "x.feather", formatArrow},
		{"", "x.ipc", formatArrow},
		{"parquet", "x.arrow", formatParquet},
		{"arrow", "x.parquet", formatArrow},
		{"Arrow", "x", formatArrow},
	} {
		got, err := sinkFormat(c.format, c.out)
		if err != nil || got != c.want {
			t.Errorf("sinkFormat(%q, %q) = %q, %v; want %q", c.format, c.out, got, err, c.want)
		}
	}
	if _, err := sinkFormat("csv", "x.csv"); err == nil {
		t.Error("sinkFormat accepted csv")
	}
}

// startSink picks the format from --format or the extension, and both files hold the rows.
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
		{"a.parquet", "", formatParquet},
		{"b.arrow", "", formatArrow},
		{"c.parquet", "arrow", formatArrow},
		{"d.feather", "parquet", formatParquet},
	} {
		out := filepath.Join(dir, c.out)
		s, err := startSink(ctx, js, arrowout.DefaultStreamName, "embeddings.m", out, c.format, func(rows int) bool { return rows >= 2 })
		if err != nil {
			t.Fatal(err)
		}
		if err := <-s.done; err != nil {
			t.Fatalf("%s: %v", c.out, err)
		}
		s.done <- nil
		if err := s.finish(); err != nil {
			t.Fatal(err)
		}
		read := arrowout.ReadParquet
		if c.read == formatArrow {
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
	if _, err := startSink(ctx, js, arrowout.DefaultStreamName, "", filepath.Join(dir, "e.x"), "csv", nil); err == nil {
		t.Fatal("startSink accepted format csv")
	}
}
