package arrowout

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/apache/arrow-go/v18/arrow"
	"github.com/apache/arrow-go/v18/arrow/ipc"
	"github.com/apache/arrow-go/v18/arrow/memory"
	"github.com/apache/arrow-go/v18/parquet/compress"

	"github.com/seqembed/seqembed/internal/natstest"
)

// readArrowFile reads a sink's file back with ipc.NewFileReader alone: its schema, the number
// of record batches and the rows. The schema must equal Schema(want), metadata keys and values
// in order included.
func readArrowFile(t *testing.T, path string, want Meta) (*arrow.Schema, int, []Row) {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	r, err := ipc.NewFileReader(f, ipc.WithAllocator(memory.DefaultAllocator))
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	schema, ws := r.Schema(), Schema(want)
	if !schema.Equal(ws) {
		t.Fatalf("schema\n%s\nwant\n%s", schema, ws)
	}
	if md, wmd := schema.Metadata(), ws.Metadata(); !slices.Equal(md.Keys(), wmd.Keys()) || !slices.Equal(md.Values(), wmd.Values()) {
		t.Fatalf("schema metadata %s, want %s", md, wmd)
	}
	var rows []Row
	for i := range r.NumRecords() {
		rec, err := r.RecordBatchAt(i)
		if err != nil {
			t.Fatal(err)
		}
		if !rec.Schema().Equal(ws) {
			t.Fatalf("record batch %d schema %s", i, rec.Schema())
		}
		rows = appendRows(rows, columnsOf(rec))
		rec.Release()
	}
	// ReadArrowFile, the package's own reader, agrees.
	m, rows2, err := ReadArrowFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if m != want {
		t.Fatalf("ReadArrowFile meta %+v, want %+v", m, want)
	}
	equalRows(t, rows2, rows)
	return schema, r.NumRecords(), rows
}

func TestArrowFileSinkDedupAndReadBack(t *testing.T) {
	path := filepath.Join(t.TempDir(), "out.arrow")
	s, err := NewArrowFileSink(path, WithRowGroupRows(4))
	if err != nil {
		t.Fatal(err)
	}
	want := dedupAndClose(t, s, path)
	if m, ok := s.Meta(); !ok || m != testMeta {
		t.Fatalf("Meta() = %+v, %v", m, ok)
	}

	schema, batches, rows := readArrowFile(t, path, testMeta)
	equalRows(t, rows, want)
	if batches != 3 {
		t.Errorf("%d record batches, want 3 of at most 4 rows", batches)
	}
	if got := schema.Field(4).Type.String(); got != "fixed_size_list<item: float32, nullable>[8]" {
		t.Errorf("embedding type %s", got)
	}
}

func TestArrowFileSinkSchemaMismatch(t *testing.T) {
	s, err := NewArrowFileSink(filepath.Join(t.TempDir(), "out.arrow"))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	e1, _ := NewEncoder(testMeta)
	other := testMeta
	other.Dim = 4
	e2, _ := NewEncoder(other)
	if _, _, err := s.WriteIPC(encodeRange(t, e1, makeBatch(1, 2, testMeta.Dim, 1), 0, 2)); err != nil {
		t.Fatal(err)
	}
	added, _, err := s.WriteIPC(encodeRange(t, e2, makeBatch(2, 2, other.Dim, 50), 0, 2))
	if !errors.Is(err, ErrSchemaMismatch) || added != 0 {
		t.Fatalf("other meta: added %d, %v; want ErrSchemaMismatch", added, err)
	}
	if _, _, err := s.WriteIPC([]byte("junk")); !errors.Is(err, ErrDecode) {
		t.Fatalf("junk: %v, want ErrDecode", err)
	}
	if s.Rows() != 2 || s.Messages() != 1 {
		t.Fatalf("rows %d msgs %d", s.Rows(), s.Messages())
	}
}

func TestArrowFileSinkEmptyAndOptions(t *testing.T) {
	dir := t.TempDir()
	path := emptySinks(t, dir, "arrow", func(p string, o ...SinkOption) (testSink, error) { return NewArrowFileSink(p, o...) })
	if _, batches, rows := readArrowFile(t, path, testMeta); batches != 0 || len(rows) != 0 {
		t.Fatalf("empty file has %d batches, %d rows", batches, len(rows))
	}

	for _, o := range []SinkOption{WithRowGroupRows(0), WithMeta(Meta{}), WithCompression(compress.Codecs.Snappy)} {
		if _, err := NewArrowFileSink(filepath.Join(dir, "x.arrow"), o); !errors.Is(err, ErrOption) {
			t.Errorf("bad option: %v, want ErrOption", err)
		}
	}
	if _, err := NewArrowFileSink(""); !errors.Is(err, ErrOption) {
		t.Errorf("empty path: %v, want ErrOption", err)
	}
	if _, err := NewArrowFileSink(filepath.Join(dir, "missing", "x.arrow")); err == nil {
		t.Error("sink in a missing directory succeeded")
	}
	if left, _ := filepath.Glob(filepath.Join(dir, ".*.tmp")); len(left) != 0 {
		t.Fatalf("temporary files left: %v", left)
	}
}

// Zstd body compression still reads back bit for bit.
func TestArrowFileSinkZstd(t *testing.T) {
	path := filepath.Join(t.TempDir(), "z.arrow")
	s, err := NewArrowFileSink(path, WithCompression(compress.Codecs.Zstd))
	if err != nil {
		t.Fatal(err)
	}
	e, _ := NewEncoder(testMeta)
	b := makeBatch(1, 50, testMeta.Dim, 1)
	if _, _, err := s.WriteIPC(encodeRange(t, e, b, 0, 50)); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	_, _, rows := readArrowFile(t, path, testMeta)
	equalRows(t, rows, wantRows(b, testMeta.Dim, 0, 50))
}

// Concurrent writers with overlapping ids: every id lands once (run with -race).
func TestArrowFileSinkConcurrent(t *testing.T) {
	path := filepath.Join(t.TempDir(), "c.arrow")
	s, err := NewArrowFileSink(path, WithRowGroupRows(7))
	if err != nil {
		t.Fatal(err)
	}
	e, _ := NewEncoder(testMeta) // an Encoder is not for concurrent use: encode up front
	const writers, n = 8, 40
	b := makeBatch(1, n, testMeta.Dim, 1)
	var msgs [writers][][]byte
	total := 0
	for w := range writers {
		for lo := w % 4; lo < n; lo += 10 {
			msgs[w] = append(msgs[w], encodeRange(t, e, b, lo, min(lo+10, n)))
			total += min(lo+10, n) - lo
		}
	}
	var wg sync.WaitGroup
	for w := range writers {
		wg.Go(func() {
			for _, m := range msgs[w] {
				if _, _, err := s.WriteIPC(m); err != nil {
					t.Error(err)
				}
				_ = s.Rows()
				_ = s.Has(b.IDs[w])
			}
		})
	}
	wg.Wait()
	if s.Rows() != n || s.Rows()+s.Duplicates() != total || s.Messages() != writers*4 {
		t.Fatalf("rows %d dups %d msgs %d, want %d rows of %d", s.Rows(), s.Duplicates(), s.Messages(), n, total)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	_, _, rows := readArrowFile(t, path, testMeta)
	slices.SortFunc(rows, func(x, y Row) int { return int(x.StreamSeq) - int(y.StreamSeq) })
	equalRows(t, rows, wantRows(b, testMeta.Dim, 0, n))
}

// Sink over a real in-process JetStream server into an ArrowFileSink.
func TestSinkToArrowFile(t *testing.T) {
	ctx := testCtx(t)
	_, js := natstest.Connect(t, natstest.Server(t, nil))
	meta, want := publishThreeBatches(t, ctx, js)
	// A redelivered batch published again without a message id (so JetStream keeps it): its
	// rows, with other embeddings, are duplicates that lose to the first copy.
	dup := makeBatch(9, 100, meta.Dim, 0)
	for j := range dup.IDs {
		dup.IDs[j] = "b0-" + dup.IDs[j]
		dup.Embeddings[j] = -1
	}
	e, _ := NewEncoder(meta)
	if _, err := js.Publish(ctx, "embeddings.a", encodeRange(t, e, dup, 0, dup.Rows())); err != nil {
		t.Fatal(err)
	}
	if _, err := js.Publish(ctx, "embeddings.other", []byte("not arrow")); err != nil {
		t.Fatal(err)
	}

	path := filepath.Join(t.TempDir(), "sink.arrow")
	s, err := NewArrowFileSink(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := Sink(ctx, js, DefaultStreamName, "embeddings.a", s, func(int) bool { return s.Messages() >= 4 }); err != nil {
		t.Fatal(err)
	}
	if s.Rows() != len(want) || s.Duplicates() != 100 {
		t.Fatalf("sink rows %d dups %d", s.Rows(), s.Duplicates())
	}
	short, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
	defer cancel()
	if err := Sink(short, js, DefaultStreamName, "embeddings.a", s, nil); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("second run: %v, want context.DeadlineExceeded", err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	_, _, rows := readArrowFile(t, path, meta)
	equalRows(t, rows, want)
}
