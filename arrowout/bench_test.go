package arrowout

import (
	"bytes"
	"testing"

	"github.com/apache/arrow-go/v18/arrow"
	"github.com/apache/arrow-go/v18/arrow/array"
	"github.com/apache/arrow-go/v18/arrow/ipc"
	"github.com/apache/arrow-go/v18/arrow/memory"
	"github.com/seqembed/seqembed/internal/natsconn"
)

// benchMeta and benchBatch are the production shape: ESM-2 650M (1280 dims),
// 256 rows per batch.
var benchMeta = Meta{Model: "esm2_t33_650M_UR50D", ModelSHA256: "0123456789abcdef", Pooling: "mean", Dim: 1280}

func benchBatch() *Batch { return makeBatch(1, 256, benchMeta.Dim, 1) }

// BenchmarkEncode is the Encoder hot path, reusing its scratch and dst.
func BenchmarkEncode(b *testing.B) {
	e, err := NewEncoder(benchMeta)
	if err != nil {
		b.Fatal(err)
	}
	batch := benchBatch()
	dst, err := e.Encode(nil, batch, 0, batch.Rows())
	if err != nil {
		b.Fatal(err)
	}
	b.SetBytes(int64(len(dst)))
	b.ReportAllocs()
	for b.Loop() {
		if dst, err = e.Encode(dst[:0], batch, 0, batch.Rows()); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkEncodeNaive is the textbook arrow-go way, as a baseline: a new
// allocator, RecordBuilder and ipc.Writer per call, values appended through
// the builders.
func BenchmarkEncodeNaive(b *testing.B) {
	batch := benchBatch()
	schema := Schema(benchMeta)
	out := naiveEncode(b, schema, batch)
	if _, rows, err := Decode(out); err != nil || len(rows) != batch.Rows() {
		b.Fatalf("naive output does not decode: %v", err)
	}
	b.SetBytes(int64(len(out)))
	b.ReportAllocs()
	for b.Loop() {
		naiveEncode(b, schema, batch)
	}
}

func naiveEncode(b *testing.B, schema *arrow.Schema, batch *Batch) []byte {
	mem := memory.NewGoAllocator()
	rb := array.NewRecordBuilder(mem, schema)
	defer rb.Release()
	rb.Field(0).(*array.StringBuilder).AppendValues(batch.IDs, nil)
	rb.Field(1).(*array.Uint64Builder).AppendValues(batch.StreamSeqs, nil)
	rb.Field(2).(*array.Int32Builder).AppendValues(batch.Lengths, nil)
	rb.Field(3).(*array.BooleanBuilder).AppendValues(batch.Truncated, nil)
	lb := rb.Field(4).(*array.FixedSizeListBuilder)
	for range batch.Rows() {
		lb.Append(true)
	}
	lb.ValueBuilder().(*array.Float32Builder).AppendValues(batch.Embeddings, nil)
	rec := rb.NewRecordBatch()
	defer rec.Release()
	var buf bytes.Buffer
	w := ipc.NewWriter(&buf, ipc.WithSchema(schema), ipc.WithAllocator(mem))
	if err := w.Write(rec); err != nil {
		b.Fatal(err)
	}
	if err := w.Close(); err != nil {
		b.Fatal(err)
	}
	return buf.Bytes()
}

// BenchmarkSplit splits the batch at the default NATS payload limit
// (1 MiB - 4 KiB), i.e. into two parts, as Publish does.
func BenchmarkSplit(b *testing.B) {
	e, err := NewEncoder(benchMeta)
	if err != nil {
		b.Fatal(err)
	}
	batch := benchBatch()
	limit := natsconn.FallbackMaxPayload - HeaderHeadroom
	buf, parts, err := e.split(nil, nil, batch, limit)
	if err != nil {
		b.Fatal(err)
	}
	b.ReportMetric(float64(len(parts)), "parts")
	b.SetBytes(int64(len(buf)))
	b.ReportAllocs()
	for b.Loop() {
		if buf, parts, err = e.split(buf[:0], parts[:0], batch, limit); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkDecode(b *testing.B) {
	e, _ := NewEncoder(benchMeta)
	batch := benchBatch()
	data, err := e.Encode(nil, batch, 0, batch.Rows())
	if err != nil {
		b.Fatal(err)
	}
	b.SetBytes(int64(len(data)))
	b.ReportAllocs()
	for b.Loop() {
		if _, _, err := Decode(data); err != nil {
			b.Fatal(err)
		}
	}
}
