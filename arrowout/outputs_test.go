package arrowout

import (
	"errors"
	"path/filepath"
	"slices"
	"testing"

	"github.com/apache/arrow-go/v18/arrow/float16"
)

// outputsBatch is a batch of 3 rows (lengths 2, 0, 3) of dim 2 with extra outputs mean_l0, bos_l1
// and residues_l2 (float16 when fp16).
func outputsBatch(fp16 bool) *Batch {
	b := &Batch{Seq: 7, IDs: []string{"a", "b", "c"}, StreamSeqs: []uint64{1, 2, 3}, Lengths: []int32{2, 0, 3},
		Truncated: []bool{false, false, true}, Embeddings: []float32{1, 2, 3, 4, 5, 6},
		SeqSHA256s: []string{"s1", "s2", "s3"}, Descriptions: []string{"", "d", ""}, InputLengths: []int32{2, 0, 9},
		StopStripped: []bool{false, true, false}, InputIndexes: []int64{0, 1, -1}}
	res := []float32{0.5, 1.5, 2.5, 3.5, 4.5, 5.5, 6.5, 7.5, 8.5, 9.5} // 5 residues × 2
	per := OutputData{PerResidue: true, F32: res}
	if fp16 {
		per = OutputData{PerResidue: true}
		for _, v := range res {
			per.F16 = append(per.F16, float16.New(v).Uint16())
		}
	}
	b.Outputs = []OutputData{{F32: []float32{10, 11, 12, 13, 14, 15}}, {F32: []float32{20, 21, 22, 23, 24, 25}}, per}
	return b
}

// TestOutputColumns: a Meta with extra outputs writes layout version 3 (columns after
// input_index named as the outputs, list<fixed_size_list> for per-residue ones, layers and
// poolings in the metadata); Decode, Split, the Parquet sink and ReadParquet give each row's
// outputs back (per-residue rows of their Length), float32 and float16; a Meta without outputs
// stays version 2; bad names and batches are refused.
func TestOutputColumns(t *testing.T) {
	for _, fp16 := range []bool{false, true} {
		m := Meta{Model: "m", Dim: 2, Pooling: "mean", Outputs: "mean_l0,bos_l1,residues_l2", ResiduesFP16: fp16}
		e, err := NewEncoder(m)
		if err != nil {
			t.Fatal(err)
		}
		s := e.Schema()
		if s.NumFields() != 14 || s.Field(10).Name != ColChunks || s.Field(11).Name != "mean_l0" || s.Field(13).Name != "residues_l2" {
			t.Fatalf("schema %s", fieldList(s))
		}
		md := s.Metadata()
		for k, want := range map[string]string{MetaKeyVersion: "3", MetaKeyOutputs: m.Outputs, MetaKeyLayers: "0,1,2", MetaKeyPoolings: "mean,bos,per-residue"} {
			if v, _ := md.GetValue(k); v != want {
				t.Errorf("fp16 %v: %s = %q, want %q", fp16, k, v, want)
			}
		}
		b := outputsBatch(fp16)
		data, err := e.Encode(nil, b, 0, 3)
		if err != nil {
			t.Fatal(err)
		}
		check := func(what string, gm Meta, rows []Row) {
			t.Helper()
			if gm != m || len(rows) != 3 {
				t.Fatalf("%s: meta %+v, %d rows", what, gm, len(rows))
			}
			want := [][][]float32{
				{{10, 11}, {20, 21}, {0.5, 1.5, 2.5, 3.5}},
				{{12, 13}, {22, 23}, {}},
				{{14, 15}, {24, 25}, {4.5, 5.5, 6.5, 7.5, 8.5, 9.5}},
			}
			for i, r := range rows {
				for k := range want[i] {
					if !slices.Equal(r.Outputs[k], want[i][k]) {
						t.Errorf("%s fp16 %v: row %d output %d = %v, want %v", what, fp16, i, k, r.Outputs[k], want[i][k])
					}
				}
			}
		}
		gm, rows, err := Decode(data)
		if err != nil {
			t.Fatal(err)
		}
		check("Decode", gm, rows)
		parts, err := e.Split(b, len(data)-1)
		if err != nil || len(parts) < 2 {
			t.Fatalf("Split: %d parts, %v", len(parts), err)
		}
		var joined []Row
		for _, p := range parts {
			_, rs, err := Decode(p.Data)
			if err != nil {
				t.Fatal(err)
			}
			joined = append(joined, rs...)
		}
		check("Split", m, joined)
		var part Batch
		part.AppendRow(b, 2, 2)
		if got := part.Outputs[2]; got.PerResidue != true || len(got.F32)+len(got.F16) != 6 {
			t.Errorf("AppendRow outputs %+v", part.Outputs)
		}
		path := filepath.Join(t.TempDir(), "out.parquet")
		sink, err := NewParquetSink(path)
		if err != nil {
			t.Fatal(err)
		}
		if _, _, err := sink.WriteIPC(data); err != nil {
			t.Fatal(err)
		}
		if err := sink.Close(); err != nil {
			t.Fatal(err)
		}
		gm, rows, err = ReadParquet(path)
		if err != nil {
			t.Fatal(err)
		}
		check("ReadParquet", gm, rows)
	}
	if s := Schema(Meta{Model: "m", Dim: 2}); s.NumFields() != 10 {
		t.Errorf("no outputs: %s", fieldList(s))
	}
	for _, bad := range []string{"max_l1", "mean_l", "bos_l-1", "embedding", "bos_l1,bos_l1"} {
		if err := (Meta{Model: "m", Dim: 2, Outputs: bad}).Validate(); !errors.Is(err, ErrOption) {
			t.Errorf("outputs %q: %v", bad, err)
		}
	}
	e, _ := NewEncoder(Meta{Model: "m", Dim: 2, Outputs: "mean_l0,bos_l1,residues_l2"})
	b := outputsBatch(false)
	b.Outputs[2].F32 = b.Outputs[2].F32[:8]
	if _, err := e.Encode(nil, b, 0, 3); !errors.Is(err, ErrInvalidBatch) {
		t.Errorf("short per-residue output: %v", err)
	}
}

// TestChunksColumn: layout version 3 carries each row's chunk count (Batch.Chunks; 1 for a batch
// without) through Encode, Split, AppendRow, Decode, the Parquet sink and ReadParquet; a
// version-2 stream has no chunks column, is byte-identical whether Chunks is empty or all 1s,
// decodes as 1 chunk a row, and refuses a chunked row.
func TestChunksColumn(t *testing.T) {
	m := Meta{Model: "m", Dim: 2, Pooling: "mean", Outputs: "mean_l0,bos_l1,residues_l2"}
	e, err := NewEncoder(m)
	if err != nil {
		t.Fatal(err)
	}
	counts := func(rows []Row) []int32 {
		var c []int32
		for _, r := range rows {
			c = append(c, r.Chunks)
		}
		return c
	}
	b := outputsBatch(false)
	for _, c := range []struct {
		chunks, want []int32
	}{{nil, []int32{1, 1, 1}}, {[]int32{1, 9, 2}, []int32{1, 9, 2}}} {
		b.Chunks = c.chunks
		data, err := e.Encode(nil, b, 0, 3)
		if err != nil {
			t.Fatal(err)
		}
		_, rows, err := Decode(data)
		if err != nil || !slices.Equal(counts(rows), c.want) {
			t.Fatalf("Chunks %v: decoded %v, %v", c.chunks, counts(rows), err)
		}
		parts, err := e.Split(b, len(data)-1)
		if err != nil || len(parts) < 2 {
			t.Fatalf("Split: %d parts, %v", len(parts), err)
		}
		var joined []Row
		for _, p := range parts {
			_, rs, err := Decode(p.Data)
			if err != nil {
				t.Fatal(err)
			}
			joined = append(joined, rs...)
		}
		if !slices.Equal(counts(joined), c.want) {
			t.Errorf("Split: chunks %v, want %v", counts(joined), c.want)
		}
		var part Batch
		part.AppendRow(b, 1, 2)
		part.AppendRow(b, 2, 2)
		if !slices.Equal([]int32{part.chunks(0), part.chunks(1)}, c.want[1:]) {
			t.Errorf("AppendRow: chunks %v", part.Chunks)
		}
		path := filepath.Join(t.TempDir(), "out.parquet")
		sink, err := NewParquetSink(path)
		if err != nil {
			t.Fatal(err)
		}
		if _, _, err := sink.WriteIPC(data); err != nil {
			t.Fatal(err)
		}
		if err := sink.Close(); err != nil {
			t.Fatal(err)
		}
		_, rows, err = ReadParquet(path)
		if err != nil || !slices.Equal(counts(rows), c.want) {
			t.Errorf("ReadParquet: chunks %v, %v", counts(rows), err)
		}
	}
	b.Chunks = []int32{1, 0, 1}
	if _, err := e.Encode(nil, b, 0, 3); !errors.Is(err, ErrInvalidBatch) {
		t.Errorf("0 chunks: %v", err)
	}
	b.Chunks = []int32{1, 1}
	if _, err := e.Encode(nil, b, 0, 3); !errors.Is(err, ErrInvalidBatch) {
		t.Errorf("2 chunk counts for 3 rows: %v", err)
	}

	v2 := Meta{Model: "m", Dim: 2, Pooling: "mean"}
	e2, err := NewEncoder(v2)
	if err != nil {
		t.Fatal(err)
	}
	if e2.Schema().FieldIndices(ColChunks) != nil {
		t.Fatalf("version 2 has a chunks column: %s", fieldList(e2.Schema()))
	}
	b = outputsBatch(false)
	b.Outputs = nil
	plain, err := e2.Encode(nil, b, 0, 3)
	if err != nil {
		t.Fatal(err)
	}
	b.Chunks = []int32{1, 1, 1}
	ones, err := e2.Encode(nil, b, 0, 3)
	if err != nil || !slices.Equal(plain, ones) {
		t.Errorf("version 2 with Chunks of 1s: %v, bytes equal %v", err, slices.Equal(plain, ones))
	}
	if _, rows, err := Decode(plain); err != nil || !slices.Equal(counts(rows), []int32{1, 1, 1}) {
		t.Errorf("version 2 decoded chunks %v, %v", counts(rows), err)
	}
	b.Chunks = []int32{1, 2, 1}
	if _, err := e2.Encode(nil, b, 0, 3); !errors.Is(err, ErrInvalidBatch) {
		t.Errorf("version 2 with a chunked row: %v", err)
	}
}
