package arrowout

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/apache/arrow-go/v18/arrow"
	"github.com/apache/arrow-go/v18/arrow/memory"
	"github.com/apache/arrow-go/v18/parquet/file"
	"github.com/apache/arrow-go/v18/parquet/pqarrow"
	"github.com/nats-io/nats.go/jetstream"
)

// readParquet reads a sink's file back with pqarrow: its Arrow schema, rows and file reader.
func readParquet(t *testing.T, path string) (*arrow.Schema, []Row, *file.Reader) {
	t.Helper()
	_, rows, err := ReadParquet(path)
	if err != nil {
		t.Fatal(err)
	}
	rdr, err := file.OpenParquetFile(path, false)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { rdr.Close() })
	fr, err := pqarrow.NewFileReader(rdr, pqarrow.ArrowReadProperties{}, memory.DefaultAllocator)
	if err != nil {
		t.Fatal(err)
	}
	schema, err := fr.Schema()
	if err != nil {
		t.Fatal(err)
	}
	return schema, rows, rdr
}

func encodeRange(t *testing.T, e *Encoder, b *Batch, lo, hi int) []byte {
	t.Helper()
	data, err := e.Encode(nil, b, lo, hi)
	if err != nil {
		t.Fatal(err)
	}
	return data
}

// testSink is the API that ParquetSink and ArrowFileSink share.
type testSink interface {
	MessageWriter
	Duplicates() int
	Messages() int
	Has(id string) bool
	Close() error
}

// dedupAndClose writes two overlapping messages of testMeta rows to s, whose target is path;
// checks the counts, that the target appears only at Close (mode 0644, no temporary file
// left) and that Close is idempotent; and returns the rows the file must hold, in order.
func dedupAndClose(t *testing.T, s testSink, path string) []Row {
	t.Helper()
	e, _ := NewEncoder(testMeta)
	b := makeBatch(1, 10, testMeta.Dim, 100)

	added, dups, err := s.WriteIPC(encodeRange(t, e, b, 0, 6))
	if err != nil || added != 6 || dups != 0 {
		t.Fatalf("first message: added %d dups %d err %v", added, dups, err)
	}
	// Rows 3..5 again (a replayed batch), with different embeddings that
	// must lose to the first occurrence.
	b2 := makeBatch(2, 10, testMeta.Dim, 100)
	for i := range b2.Embeddings {
		b2.Embeddings[i] = -1
	}
	added, dups, err = s.WriteIPC(encodeRange(t, e, b2, 3, 10))
	if err != nil || added != 4 || dups != 3 {
		t.Fatalf("second message: added %d dups %d err %v", added, dups, err)
	}
	if s.Rows() != 10 || s.Duplicates() != 3 || s.Messages() != 2 || !s.Has(b.IDs[4]) || s.Has("nope") {
		t.Fatalf("rows %d dups %d msgs %d", s.Rows(), s.Duplicates(), s.Messages())
	}
	if _, err := os.Stat(path); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("target exists before Close: %v", err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if _, _, err := s.WriteIPC(encodeRange(t, e, b, 0, 1)); err == nil {
		t.Fatal("WriteIPC after Close succeeded")
	}
	if left, _ := filepath.Glob(filepath.Join(filepath.Dir(path), ".*.tmp")); len(left) != 0 {
		t.Fatalf("temporary files left: %v", left)
	}
	if fi, err := os.Stat(path); err != nil || fi.Mode().Perm() != 0o644 {
		t.Fatalf("target after Close: %v, %v (want mode 0644)", fi, err)
	}
	return append(wantRows(b, testMeta.Dim, 0, 6), wantRows(b2, testMeta.Dim, 6, 10)...)
}

func TestParquetSinkDedupAndReadBack(t *testing.T) {
	path := filepath.Join(t.TempDir(), "out.parquet")
	s, err := NewParquetSink(path, WithRowGroupRows(4))
	if err != nil {
		t.Fatal(err)
	}
	want := dedupAndClose(t, s, path)

	schema, rows, rdr := readParquet(t, path)
	equalRows(t, rows, want)
	if rdr.NumRowGroups() != 3 {
		t.Errorf("%d row groups, want 3 of at most 4 rows", rdr.NumRowGroups())
	}
	wantTypes := []string{"utf8", "uint64", "int32", "bool", "fixed_size_list<element: float32, nullable>[8]", "utf8", "utf8", "int32", "bool", "int64"}
	for i, f := range schema.Fields() {
		if f.Name != Schema(testMeta).Field(i).Name || f.Type.String() != wantTypes[i] || f.Nullable != Schema(testMeta).Field(i).Nullable {
			t.Errorf("parquet field %d: %s %s nullable=%v", i, f.Name, f.Type, f.Nullable)
		}
	}
	kv := rdr.MetaData().KeyValueMetadata()
	for k, v := range map[string]string{MetaKeyModel: testMeta.Model, MetaKeyModelSHA256: testMeta.ModelSHA256,
		MetaKeyDim: "8", MetaKeyPooling: testMeta.Pooling, MetaKeyVersion: "2"} {
		if got := kv.FindValue(k); got == nil || *got != v {
			t.Errorf("parquet metadata %s = %v, want %q", k, got, v)
		}
	}
}

func TestParquetSinkSchemaMismatch(t *testing.T) {
	path := filepath.Join(t.TempDir(), "out.parquet")
	s, err := NewParquetSink(path)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	e1, _ := NewEncoder(testMeta)
	other := testMeta
	other.ModelSHA256 = "different"
	e2, _ := NewEncoder(other)
	if _, _, err := s.WriteIPC(encodeRange(t, e1, makeBatch(1, 2, testMeta.Dim, 1), 0, 2)); err != nil {
		t.Fatal(err)
	}
	added, _, err := s.WriteIPC(encodeRange(t, e2, makeBatch(2, 2, testMeta.Dim, 50), 0, 2))
	if !errors.Is(err, ErrSchemaMismatch) || added != 0 {
		t.Fatalf("other meta: added %d, %v; want ErrSchemaMismatch", added, err)
	}
	if _, _, err := s.WriteIPC(encodeRange(t, e2, &Batch{}, 0, 0)); !errors.Is(err, ErrSchemaMismatch) {
		t.Fatalf("zero-row message with other meta: %v, want ErrSchemaMismatch", err)
	}
	if _, _, err := s.WriteIPC([]byte("junk")); !errors.Is(err, ErrDecode) {
		t.Fatalf("junk: %v, want ErrDecode", err)
	}
	if s.Rows() != 2 {
		t.Fatalf("rows %d", s.Rows())
	}
}

// emptySinks checks that a sink closed without meta or rows leaves no file, then writes a sink
// closed with meta but no rows to dir/empty.<ext> and returns its path for the caller to read.
// open is NewParquetSink or NewArrowFileSink; extra options go to the second sink.
func emptySinks(t *testing.T, dir, ext string, open func(string, ...SinkOption) (testSink, error), extra ...SinkOption) string {
	t.Helper()
	s, err := open(filepath.Join(dir, "none."+ext))
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 0 {
		t.Fatalf("sink without meta or rows left %v", ents)
	}
	path := filepath.Join(dir, "empty."+ext)
	if s, err = open(path, append([]SinkOption{WithMeta(testMeta)}, extra...)...); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestParquetSinkEmpty(t *testing.T) {
	dir := t.TempDir()
	path := emptySinks(t, dir, "parquet", func(p string, o ...SinkOption) (testSink, error) { return NewParquetSink(p, o...) },
		WithCompression(0))
	_, rows, rdr := readParquet(t, path)
	if len(rows) != 0 || rdr.NumRows() != 0 {
		t.Fatalf("empty file has %d rows", len(rows))
	}

	for _, o := range []SinkOption{WithRowGroupRows(0), WithMeta(Meta{}), WithCompression(99)} {
		if _, err := NewParquetSink(filepath.Join(dir, "x.parquet"), o); !errors.Is(err, ErrOption) {
			t.Errorf("bad option: %v, want ErrOption", err)
		}
	}
	if _, err := NewParquetSink(filepath.Join(dir, "missing", "x.parquet")); err == nil {
		t.Error("sink in a missing directory succeeded")
	}
}

// publishThreeBatches creates the output stream and publishes three 100-row, 320-dim batches
// with distinct ids to embeddings.a; it returns their meta and rows.
func publishThreeBatches(t *testing.T, ctx context.Context, js jetstream.JetStream) (Meta, []Row) {
	t.Helper()
	if _, err := EnsureStream(ctx, js, StreamConfig{}); err != nil {
		t.Fatal(err)
	}
	meta := testMeta
	meta.Dim = 320
	p, err := NewPublisher(js, "embeddings.a", meta)
	if err != nil {
		t.Fatal(err)
	}
	var want []Row
	for i := range 3 {
		b := makeBatch(uint64(i), 100, meta.Dim, uint64(1000*i))
		for j := range b.IDs {
			b.IDs[j] = "b" + strconv.Itoa(i) + "-" + b.IDs[j]
		}
		if _, err := p.Publish(ctx, b); err != nil {
			t.Fatal(err)
		}
		want = append(want, wantRows(b, meta.Dim, 0, b.Rows())...)
	}
	return meta, want
}

func TestSinkFromStream(t *testing.T) {
	ctx := testCtx(t)
	_, _, js := runJetStream(t, smallPayload)
	_, want := publishThreeBatches(t, ctx, js)
	// Noise on another subject of the same stream must be filtered out.
	if _, err := js.Publish(ctx, "embeddings.other", []byte("not arrow")); err != nil {
		t.Fatal(err)
	}

	path := filepath.Join(t.TempDir(), "sink.parquet")
	s, err := NewParquetSink(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := Sink(ctx, js, DefaultStreamName, "embeddings.a", s, func(rows int) bool { return rows >= len(want) }); err != nil {
		t.Fatal(err)
	}
	if s.Rows() != len(want) || s.Duplicates() != 0 {
		t.Fatalf("sink rows %d dups %d", s.Rows(), s.Duplicates())
	}

	// Running again (the stream replays from the start) only finds
	// duplicates; it ends when the context does.
	short, cancel := context.WithTimeout(ctx, 500*time.Millisecond)
	defer cancel()
	err = Sink(short, js, DefaultStreamName, "embeddings.a", s, nil)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("second run: %v, want context.DeadlineExceeded", err)
	}
	if s.Rows() != len(want) || s.Duplicates() != len(want) {
		t.Fatalf("after replay rows %d dups %d", s.Rows(), s.Duplicates())
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	_, rows, _ := readParquet(t, path)
	equalRows(t, rows, want)

	// Without a subject filter the junk message is an error naming it.
	s2, err := NewParquetSink(filepath.Join(t.TempDir(), "all.parquet"))
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Close()
	err = Sink(ctx, js, DefaultStreamName, "", s2, nil)
	if !errors.Is(err, ErrDecode) {
		t.Fatalf("junk in stream: %v, want ErrDecode", err)
	}
	t.Log(err)

	// A stop that is already satisfied returns at once.
	if err := Sink(ctx, js, "NO_SUCH_STREAM", "", s2, func(int) bool { return true }); err != nil {
		t.Fatal(err)
	}
}

// The default compression is Zstd and dictionaries are off.
func TestParquetSinkProperties(t *testing.T) {
	path := filepath.Join(t.TempDir(), "z.parquet")
	s, err := NewParquetSink(path)
	if err != nil {
		t.Fatal(err)
	}
	e, _ := NewEncoder(testMeta)
	if _, _, err := s.WriteIPC(encodeRange(t, e, makeBatch(1, 5, testMeta.Dim, 1), 0, 5)); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	_, _, rdr := readParquet(t, path)
	rg := rdr.MetaData().RowGroup(0)
	for i := range rg.NumColumns() {
		cc, err := rg.ColumnChunk(i)
		if err != nil {
			t.Fatal(err)
		}
		if cc.Compression().String() != "ZSTD" {
			t.Errorf("column %d compression %s", i, cc.Compression())
		}
		if cc.HasDictionaryPage() {
			t.Errorf("column %d has a dictionary page", i)
		}
	}
}
