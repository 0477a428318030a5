package arrowout

import (
	"bytes"
	"context"
	"fmt"
	"path/filepath"
	"testing"
	"time"

	"github.com/apache/arrow-go/v18/arrow"
	"github.com/apache/arrow-go/v18/arrow/array"
	"github.com/apache/arrow-go/v18/arrow/ipc"
	"github.com/apache/arrow-go/v18/arrow/memory"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/seqembed/seqembed/internal/natsconn"
	"github.com/seqembed/seqembed/internal/natstest"
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

// perResidueBench is ESM-2 650M's last layer per residue in float16 (1280 dims): 40 rows of 400
// residues, one 41 MB message.
func perResidueBench(b *testing.B, fp16 bool) []byte {
	lengths := make([]int32, 40)
	for i := range lengths {
		lengths[i] = 400
	}
	_, batch := longRowsBatch(true, lengths...)
	meta := Meta{Model: "m", Dim: 1280, Pooling: "mean", Outputs: "residues_l33", ResiduesFP16: fp16}
	batch.Embeddings = make([]float32, 40*1280)
	per := OutputData{PerResidue: true}
	if fp16 {
		per.F16 = make([]uint16, 40*400*1280)
		for i := range per.F16 {
			per.F16[i] = uint16(0x3c00 + i%1024)
		}
	} else {
		per.F32 = make([]float32, 40*400*1280)
		for i := range per.F32 {
			per.F32[i] = float32(i % 1024)
		}
	}
	batch.Outputs = []OutputData{per}
	e, err := NewEncoder(meta)
	if err != nil {
		b.Fatal(err)
	}
	data, err := e.Encode(nil, batch, 0, batch.Rows())
	if err != nil {
		b.Fatal(err)
	}
	return data
}

// BenchmarkSinkPerResidue is a file sink taking per-residue float16 messages (what `seqembed run`
// and `seqembed sink` do with them), Parquet against the Arrow IPC file as the baseline.
func BenchmarkSinkPerResidue(b *testing.B) {
	for _, c := range []struct {
		format string
		fp16   bool
	}{{"parquet", true}, {"arrow", true}, {"parquet", false}} {
		format := c.format
		data := perResidueBench(b, c.fp16)
		b.Run(fmt.Sprintf("%s/fp16=%v", format, c.fp16), func(b *testing.B) {
			b.SetBytes(int64(len(data)))
			path := filepath.Join(b.TempDir(), "out."+format) // one file, replaced each time
			for b.Loop() {
				b.StopTimer()
				fs, err := NewFileSink(format, path)
				if err != nil {
					b.Fatal(err)
				}
				b.StartTimer()
				if _, _, err := fs.WriteIPC(data); err != nil {
					b.Fatal(err)
				}
				if err := fs.Close(); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkStorePerResidue is the host's share of per-residue output end to end, without a
// model: batches of 40 rows × 400 residues × 1280 float16 states (41 MB, published in 2 parts
// under the file store's 32 MiB) through a Publisher into an in-process JetStream file store
// ("publish"), and the same then read back by the sink into an Arrow IPC file ("publish+sink").
func BenchmarkStorePerResidue(b *testing.B) {
	lengths := make([]int32, 40)
	for i := range lengths {
		lengths[i] = 400
	}
	meta := Meta{Model: "m", Dim: 1280, Pooling: "mean", Outputs: "residues_l33", ResiduesFP16: true}
	for _, withSink := range []bool{false, true} {
		name := "publish"
		if withSink {
			name = "publish+sink"
		}
		b.Run(name, func(b *testing.B) {
			ctx := context.Background()
			srv := natstest.Server(b, func(o *server.Options) { o.MaxPayload = 64 << 20 })
			_, js := natstest.Connect(b, srv)
			stream, err := EnsureStream(ctx, js, StreamConfig{})
			if err != nil {
				b.Fatal(err)
			}
			p, err := NewPublisher(js, "embeddings.m", meta, WithAckTimeout(5*time.Minute))
			if err != nil {
				b.Fatal(err)
			}
			total := b.N * len(lengths)
			var run *SinkRun
			if withSink {
				fs, err := NewFileSink("arrow", filepath.Join(b.TempDir(), "out.arrow"))
				if err != nil {
					b.Fatal(err)
				}
				run = StartSink(ctx, js, stream.CachedInfo().Config.Name, "", fs, func(rows int) bool { return rows >= total })
			}
			bytes := 0
			b.ResetTimer()
			for i := range b.N {
				_, batch := longRowsBatch(true, lengths...)
				batch.Embeddings = make([]float32, len(lengths)*1280)
				batch.Outputs = []OutputData{{PerResidue: true, F16: make([]uint16, len(lengths)*400*1280)}}
				for r := range batch.StreamSeqs {
					batch.StreamSeqs[r] = uint64(i*len(lengths) + r + 1)
					batch.IDs[r] = fmt.Sprintf("b%d-%d", i, r)
				}
				res, err := p.Publish(ctx, batch)
				if err != nil {
					b.Fatal(err)
				}
				bytes += res.Bytes
			}
			if withSink {
				<-run.Done() // the sink stops by itself once it has every row
				if err := run.Finish(); err != nil {
					b.Fatal(err)
				}
			}
			b.StopTimer()
			b.SetBytes(int64(bytes / b.N))
			b.ReportMetric(float64(total*400)/b.Elapsed().Seconds(), "residues/s")
		})
	}
}
