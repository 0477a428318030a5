package arrowout

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/apache/arrow-go/v18/arrow/float16"
	"github.com/apache/arrow-go/v18/parquet/compress"
	"github.com/apache/arrow-go/v18/parquet/file"
	"github.com/nats-io/nats-server/v2/server"

	"github.com/seqembed/seqembed/internal/natstest"
)

// longRowsBatch is a batch of rows of the given lengths, dim 16, with outputs mean_l1 and
// residues_l2 (float16 when fp16), every value distinct.
func longRowsBatch(fp16 bool, lengths ...int32) (Meta, *Batch) {
	const dim = 16
	m := Meta{Model: "m", Dim: dim, Pooling: "mean", Outputs: "mean_l1,residues_l2", ResiduesFP16: fp16}
	n := len(lengths)
	b := &Batch{Seq: 3, Lengths: lengths, Embeddings: make([]float32, n*dim)}
	pooled := OutputData{F32: make([]float32, n*dim)}
	per := OutputData{PerResidue: true}
	for i, l := range lengths {
		b.IDs = append(b.IDs, fmt.Sprintf("p%d", i))
		b.StreamSeqs = append(b.StreamSeqs, uint64(100+i))
		b.Truncated = append(b.Truncated, false)
		b.SeqSHA256s = append(b.SeqSHA256s, fmt.Sprintf("sha%d", i))
		b.Descriptions = append(b.Descriptions, "d")
		b.InputLengths = append(b.InputLengths, l)
		b.StopStripped = append(b.StopStripped, false)
		b.InputIndexes = append(b.InputIndexes, int64(i))
		for j := range dim {
			b.Embeddings[i*dim+j] = float32(i) + float32(j)/100
			pooled.F32[i*dim+j] = -float32(i) - float32(j)/100
		}
		for r := range int(l) * dim {
			v := float32(i*1000) + float32(r)/8
			if fp16 {
				per.F16 = append(per.F16, float16.New(float32(r%2048)).Uint16())
			} else {
				per.F32 = append(per.F32, v)
			}
		}
	}
	b.Outputs = []OutputData{pooled, per}
	return m, b
}

// TestRowSlices: a row whose per-residue states alone exceed the part limit is split along its
// residues into row slices (each under the limit, together covering the row once, the other
// columns whole in each); published to a server whose max_payload is that small, the parts carry
// HeaderResidues, and the Parquet sink joins them into the row the batch held, beside the rows that
// fit whole. A replay is all duplicates; slices fed in reverse order join too; a row missing a
// slice is named by Close (ErrIncomplete); a slice that contradicts its row's first one fails.
func TestRowSlices(t *testing.T) {
	for _, fp16 := range []bool{false, true} {
		t.Run(fmt.Sprintf("fp16=%v", fp16), func(t *testing.T) {
			m, b := longRowsBatch(fp16, 3, 900, 40, 2500)
			e, err := NewEncoder(m)
			if err != nil {
				t.Fatal(err)
			}
			whole, err := e.Encode(nil, b, 0, b.Rows())
			if err != nil {
				t.Fatal(err)
			}
			_, want, err := Decode(whole)
			if err != nil {
				t.Fatal(err)
			}
			const limit = 24 << 10
			parts, err := e.Split(b, limit)
			if err != nil {
				t.Fatal(err)
			}
			covered := map[int][]int{} // row → residues covered by its slices
			for _, p := range parts {
				if len(p.Data) > limit {
					t.Errorf("part rows [%d,%d) residues [%d,%d): %d bytes > %d", p.Lo, p.Hi, p.ResLo, p.ResHi, len(p.Data), limit)
				}
				if p.ResHi > 0 {
					covered[p.Lo] = append(covered[p.Lo], p.ResLo, p.ResHi)
				}
			}
			for _, r := range []int{1, 3} {
				c := covered[r]
				if len(c) < 4 || c[0] != 0 || c[len(c)-1] != int(b.Lengths[r]) {
					t.Fatalf("row %d (%d residues) slices %v", r, b.Lengths[r], c)
				}
				for i := 1; i+1 < len(c); i += 2 {
					if c[i] != c[i+1] {
						t.Fatalf("row %d slices %v: not contiguous", r, c)
					}
				}
			}
			if len(covered) != 2 {
				t.Fatalf("rows sliced: %v, want rows 1 and 3", covered)
			}

			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			srv := natstest.Server(t, func(o *server.Options) { o.MaxPayload = limit + HeaderHeadroom })
			_, js := natstest.Connect(t, srv)
			stream, err := EnsureStream(ctx, js, StreamConfig{})
			if err != nil {
				t.Fatal(err)
			}
			p, err := NewPublisher(js, "embeddings.x", m)
			if err != nil {
				t.Fatal(err)
			}
			res, err := p.Publish(ctx, b)
			if err != nil || res.Parts != len(parts) {
				t.Fatalf("Publish: %+v, %v; want %d parts", res, err, len(parts))
			}
			if res, err := p.Publish(ctx, b); err != nil || res.Duplicates != len(parts) {
				t.Fatalf("replay: %+v, %v; want %d duplicates", res, err, len(parts))
			}
			msgs := natstest.StoredMsgs(t, ctx, stream)
			slicesSeen := 0
			for _, msg := range msgs {
				if msg.Header.Get(HeaderResidues) != "" {
					slicesSeen++
				}
			}
			if slicesSeen != len(parts)-2 {
				t.Errorf("%d messages with %s, want %d", slicesSeen, HeaderResidues, len(parts)-2)
			}
			path := filepath.Join(t.TempDir(), "out.parquet")
			sink, err := NewParquetSink(path)
			if err != nil {
				t.Fatal(err)
			}
			sctx, scancel := context.WithTimeout(ctx, 30*time.Second)
			defer scancel()
			if err := Sink(sctx, js, stream.CachedInfo().Config.Name, "", sink, func(rows int) bool { return rows == b.Rows() }); err != nil {
				t.Fatal(err)
			}
			if err := sink.Close(); err != nil {
				t.Fatal(err)
			}
			_, got, err := ReadParquet(path)
			if err != nil {
				t.Fatal(err)
			}
			equalRows(t, got, want)

			// Reverse order, straight into a sink; then a row missing its first slice.
			path2 := filepath.Join(t.TempDir(), "rev.parquet")
			sink2, err := NewParquetSink(path2)
			if err != nil {
				t.Fatal(err)
			}
			for i := len(parts) - 1; i >= 0; i-- {
				pt := parts[i]
				if pt.ResHi == 0 {
					_, _, err = sink2.WriteIPC(pt.Data)
				} else {
					_, _, err = sink2.WriteSlice(pt.Data, "g", RowSlice{pt.ResLo, pt.ResHi, int(b.Lengths[pt.Lo])})
				}
				if err != nil {
					t.Fatal(err)
				}
			}
			first := slices.IndexFunc(parts, func(p Part) bool { return p.ResHi > 0 })
			pt := parts[first]
			if _, _, err := sink2.WriteSlice(parts[first+1].Data, "other", RowSlice{parts[first+1].ResLo, parts[first+1].ResHi, int(b.Lengths[pt.Lo])}); err != nil {
				t.Fatal(err)
			}
			// A slice of another row under the same group and stream seq contradicts it.
			_, other := longRowsBatch(fp16, 3, 900, 40, 2500)
			other.IDs[1] = "not-p1"
			oparts, err := e.Split(other, limit)
			if err != nil {
				t.Fatal(err)
			}
			op := oparts[slices.IndexFunc(oparts, func(p Part) bool { return p.ResHi > 0 })]
			if _, _, err := sink2.WriteSlice(op.Data, "other", RowSlice{op.ResLo, op.ResHi, int(b.Lengths[op.Lo])}); !errors.Is(err, ErrDecode) {
				t.Errorf("contradicting slice: %v, want ErrDecode", err)
			}
			if n := sink2.Incomplete(); n != 0 {
				t.Errorf("Incomplete %d before Close: the half-joined copy of p1 was also stored whole", n)
			}
			if err := sink2.Close(); err != nil {
				t.Fatal(err)
			}
			_, got2, err := ReadParquet(path2)
			if err != nil {
				t.Fatal(err)
			}
			slices.SortFunc(got2, func(a, b Row) int { return int(a.StreamSeq) - int(b.StreamSeq) })
			equalRows(t, got2, want)

			path3 := filepath.Join(t.TempDir(), "cut.parquet")
			sink3, err := NewParquetSink(path3)
			if err != nil {
				t.Fatal(err)
			}
			for _, pt := range parts[first+1:] {
				if pt.ResHi == 0 {
					_, _, err = sink3.WriteIPC(pt.Data)
				} else {
					_, _, err = sink3.WriteSlice(pt.Data, "g", RowSlice{pt.ResLo, pt.ResHi, int(b.Lengths[pt.Lo])})
				}
				if err != nil {
					t.Fatal(err)
				}
			}
			if err := sink3.Close(); !errors.Is(err, ErrIncomplete) {
				t.Errorf("Close with p1's first slice missing: %v, want ErrIncomplete", err)
			} else {
				t.Log(err)
			}
		})
	}
}

// TestParseRowSlice: HeaderResidues values.
func TestParseRowSlice(t *testing.T) {
	if s, err := ParseRowSlice("10-20/30"); err != nil || s != (RowSlice{10, 20, 30}) {
		t.Errorf("10-20/30: %+v, %v", s, err)
	}
	for _, bad := range []string{"", "10-20", "20-10/30", "10-40/30", "-1-2/3", "a-b/c", "5-5/9"} {
		if _, err := ParseRowSlice(bad); !errors.Is(err, ErrDecode) {
			t.Errorf("%q: %v, want ErrDecode", bad, err)
		}
	}
}

// TestRowGroupsBoundedByBytes: per-residue rows are megabytes, so a sink writes a row group once
// its buffered rows hold maxRowGroupBytes, long before WithRowGroupRows rows (which would be
// gigabytes); the rows read back whole, in order.
func TestRowGroupsBoundedByBytes(t *testing.T) {
	lengths := make([]int32, 160)
	for i := range lengths {
		lengths[i] = 200
	}
	m, b := longRowsBatch(false, lengths...)
	m.Dim = 1280 // 1 MB a row in float32 (one message each, under the sink's 1 MiB direct path): 164 MB
	b.Embeddings = make([]float32, b.Rows()*m.Dim)
	b.Outputs = []OutputData{{F32: make([]float32, b.Rows()*m.Dim)}, {PerResidue: true, F32: make([]float32, 160*200*m.Dim)}}
	for i := range b.Outputs[1].F32 {
		b.Outputs[1].F32[i] = float32(i % 977)
	}
	e, err := NewEncoder(m)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "big.parquet")
	sink, err := NewParquetSink(path, WithRowGroupRows(100_000), WithCompression(compress.Codecs.Uncompressed))
	if err != nil {
		t.Fatal(err)
	}
	for r := range b.Rows() { // one message a row, each under directBytes: the builders' path
		data, err := e.Encode(nil, b, r, r+1)
		if err != nil {
			t.Fatal(err)
		}
		if len(data) >= directBytes {
			t.Fatalf("a %d-byte message would be written whole", len(data))
		}
		if _, _, err := sink.WriteIPC(data); err != nil {
			t.Fatal(err)
		}
	}
	if err := sink.Close(); err != nil {
		t.Fatal(err)
	}
	f, err := file.OpenParquetFile(path, false)
	if err != nil {
		t.Fatal(err)
	}
	groups := f.NumRowGroups()
	f.Close()
	if groups < 2 {
		t.Errorf("%d row groups for 164 MB of rows, want >= 2 (at most %d bytes buffered)", groups, maxRowGroupBytes)
	}
	_, got, err := ReadParquet(path)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != b.Rows() || got[97].StreamSeq != b.StreamSeqs[97] || !slices.Equal(got[97].Outputs[1][:5], b.Outputs[1].F32[97*200*1280:97*200*1280+5]) {
		t.Fatalf("%d rows read back", len(got))
	}
}
