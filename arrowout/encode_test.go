package arrowout

import (
	"bytes"
	"errors"
	"runtime"
	"slices"
	"strings"
	"testing"

	"github.com/apache/arrow-go/v18/arrow"
	"github.com/apache/arrow-go/v18/arrow/ipc"
	"github.com/apache/arrow-go/v18/arrow/memory"
)

func TestSchemaLayout(t *testing.T) {
	s := Schema(Meta{Model: "m", ModelSHA256: "sha", Pooling: "cls", Dim: 1280})
	want := []struct {
		name     string
		typ      string
		nullable bool
	}{
		{"id", "utf8", false},
		{"stream_seq", "uint64", true},
		{"length", "int32", true},
		{"truncated", "bool", true},
		{"embedding", "fixed_size_list<item: float32, nullable>[1280]", true},
		{"seq_sha256", "utf8", true},
		{"description", "utf8", true},
		{"input_length", "int32", true},
		{"stop_stripped", "bool", true},
		{"input_index", "int64", true},
	}
	if s.NumFields() != len(want) {
		t.Fatalf("schema has %d fields: %s", s.NumFields(), s)
	}
	for i, w := range want {
		f := s.Field(i)
		if f.Name != w.name || f.Type.String() != w.typ || f.Nullable != w.nullable {
			t.Errorf("field %d = %s %s nullable=%v, want %s %s nullable=%v", i, f.Name, f.Type, f.Nullable, w.name, w.typ, w.nullable)
		}
	}
	fsl := s.Field(4).Type.(*arrow.FixedSizeListType)
	if fsl.Len() != 1280 || fsl.ElemField().Name != "item" || fsl.Elem().ID() != arrow.FLOAT32 {
		t.Errorf("embedding type %s", fsl)
	}
	md := s.Metadata()
	wantKeys := []string{"seqembed.model", "seqembed.model_sha256", "seqembed.dim", "seqembed.pooling", "seqembed.version"}
	wantVals := []string{"m", "sha", "1280", "cls", "2"}
	if !slices.Equal(md.Keys(), wantKeys) || !slices.Equal(md.Values(), wantVals) {
		t.Errorf("metadata %s, want keys %v values %v", md, wantKeys, wantVals)
	}
}

func TestNewEncoderValidates(t *testing.T) {
	for _, m := range []Meta{{Dim: 4}, {Model: "m"}, {Model: "m", Dim: -1}} {
		if _, err := NewEncoder(m); !errors.Is(err, ErrOption) {
			t.Errorf("NewEncoder(%+v) = %v, want ErrOption", m, err)
		}
	}
	if _, err := NewEncoder(testMeta, WithAllocator(nil)); !errors.Is(err, ErrOption) {
		t.Errorf("WithAllocator(nil) = %v, want ErrOption", err)
	}
}

func TestEncodeDecodeRoundTrip(t *testing.T) {
	mem := memory.NewCheckedAllocator(memory.NewGoAllocator())
	defer mem.AssertSize(t, 0)
	e, err := NewEncoder(testMeta, WithAllocator(mem))
	if err != nil {
		t.Fatal(err)
	}
	b := makeBatch(7, 50, testMeta.Dim, 1000)

	prefix := []byte("keep me")
	data, err := e.Encode(slices.Clone(prefix), b, 0, b.Rows())
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.HasPrefix(data, prefix) {
		t.Fatal("Encode clobbered dst")
	}
	data = data[len(prefix):]

	// The stream is a plain Arrow IPC stream: schema, one batch, EOS.
	r, err := ipc.NewReader(bytes.NewReader(data))
	if err != nil {
		t.Fatal(err)
	}
	if !r.Schema().Equal(Schema(testMeta)) || !slices.Equal(r.Schema().Metadata().Keys(), Schema(testMeta).Metadata().Keys()) {
		t.Fatalf("stream schema %s", r.Schema())
	}
	nrec := 0
	for r.Next() {
		nrec++
		if r.RecordBatch().NumRows() != 50 {
			t.Fatalf("record has %d rows", r.RecordBatch().NumRows())
		}
	}
	if r.Err() != nil || nrec != 1 {
		t.Fatalf("read %d records, err %v", nrec, r.Err())
	}
	r.Release()
	if !bytes.HasSuffix(data, eos[:]) {
		t.Fatal("stream does not end with EOS")
	}

	m, rows, err := Decode(data)
	if err != nil {
		t.Fatal(err)
	}
	if m != testMeta {
		t.Fatalf("meta %+v, want %+v", m, testMeta)
	}
	want := wantRows(b, testMeta.Dim, 0, b.Rows())
	equalRows(t, rows, want)

	// The output is a copy: scribbling over the batch changes nothing.
	again := slices.Clone(data)
	for i := range b.Embeddings {
		b.Embeddings[i] = 42
	}
	b.IDs[0], b.StreamSeqs[0] = "changed", 1
	if !bytes.Equal(again, data) {
		t.Fatal("encoded bytes alias the batch")
	}
}

func TestEncodeRange(t *testing.T) {
	e, err := NewEncoder(testMeta)
	if err != nil {
		t.Fatal(err)
	}
	b := makeBatch(1, 20, testMeta.Dim, 5)
	for _, r := range [][2]int{{0, 0}, {3, 4}, {5, 17}, {19, 20}} {
		data, err := e.Encode(nil, b, r[0], r[1])
		if err != nil {
			t.Fatal(err)
		}
		_, rows, err := Decode(data)
		if err != nil {
			t.Fatal(err)
		}
		equalRows(t, rows, wantRows(b, testMeta.Dim, r[0], r[1]))
	}
	for _, r := range [][2]int{{-1, 2}, {4, 3}, {0, 21}} {
		if _, err := e.Encode(nil, b, r[0], r[1]); !errors.Is(err, ErrInvalidBatch) {
			t.Errorf("Encode range %v = %v, want ErrInvalidBatch", r, err)
		}
	}
	bad := makeBatch(9, 3, testMeta.Dim, 5)
	bad.Embeddings = bad.Embeddings[1:]
	if _, err := e.Encode(nil, bad, 0, 3); !errors.Is(err, ErrInvalidBatch) || !strings.Contains(err.Error(), "batch 9") {
		t.Errorf("short embeddings: %v, want ErrInvalidBatch naming batch 9", err)
	}
}

func TestDecodeRejects(t *testing.T) {
	// Not IPC at all.
	if _, _, err := Decode([]byte("junk")); !errors.Is(err, ErrDecode) {
		t.Errorf("junk: %v, want ErrDecode", err)
	}
	// A corrupt length prefix ("defi" is 1.7 GB) must not be allocated.
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	if _, _, err := Decode([]byte("definitely not arrow")); !errors.Is(err, ErrDecode) {
		t.Errorf("garbage: %v, want ErrDecode", err)
	}
	runtime.ReadMemStats(&after)
	if n := after.TotalAlloc - before.TotalAlloc; n > 1<<20 {
		t.Errorf("decoding 20 bytes of garbage allocated %d bytes", n)
	}
	// Valid IPC, wrong layout.
	var buf bytes.Buffer
	other := arrow.NewSchema([]arrow.Field{{Name: "x", Type: arrow.PrimitiveTypes.Int64}}, nil)
	w := ipc.NewWriter(&buf, ipc.WithSchema(other))
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	if _, _, err := Decode(buf.Bytes()); !errors.Is(err, ErrDecode) {
		t.Errorf("foreign schema: %v, want ErrDecode", err)
	}
	// Truncated stream.
	e, _ := NewEncoder(testMeta)
	data, err := e.Encode(nil, makeBatch(1, 4, testMeta.Dim, 1), 0, 4)
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := Decode(data[:len(data)-40]); !errors.Is(err, ErrDecode) {
		t.Errorf("truncated: %v, want ErrDecode", err)
	}
}

func TestDecodeSeveralRecordBatches(t *testing.T) {
	e, _ := NewEncoder(testMeta)
	b := makeBatch(1, 10, testMeta.Dim, 100)
	var buf bytes.Buffer
	w := ipc.NewWriter(&buf, ipc.WithSchema(e.Schema()))
	for _, r := range [][2]int{{0, 4}, {4, 10}} {
		rec, err := e.record(b, r[0], r[1])
		if err != nil {
			t.Fatal(err)
		}
		if err := w.Write(rec); err != nil {
			t.Fatal(err)
		}
		rec.Release()
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	_, rows, err := Decode(buf.Bytes())
	if err != nil {
		t.Fatal(err)
	}
	equalRows(t, rows, wantRows(b, testMeta.Dim, 0, 10))
}

func TestSplit(t *testing.T) {
	mem := memory.NewCheckedAllocator(memory.NewGoAllocator())
	defer mem.AssertSize(t, 0)
	meta := testMeta
	meta.Dim = 64
	e, err := NewEncoder(meta, WithAllocator(mem))
	if err != nil {
		t.Fatal(err)
	}
	b := makeBatch(3, 301, meta.Dim, 10_000)
	whole, err := e.Encode(nil, b, 0, b.Rows())
	if err != nil {
		t.Fatal(err)
	}

	for _, maxBytes := range []int{len(whole), len(whole) / 2, 20_000, 5_000, e.overhead + 600} {
		parts, err := e.Split(b, maxBytes)
		if err != nil {
			t.Fatalf("max %d: %v", maxBytes, err)
		}
		next := 0
		var rows []Row
		for _, p := range parts {
			if len(p.Data) > maxBytes {
				t.Fatalf("max %d: part [%d,%d) has %d bytes", maxBytes, p.Lo, p.Hi, len(p.Data))
			}
			if p.Lo != next || p.Hi <= p.Lo {
				t.Fatalf("max %d: part [%d,%d) after row %d", maxBytes, p.Lo, p.Hi, next)
			}
			next = p.Hi
			_, r, err := Decode(p.Data)
			if err != nil {
				t.Fatal(err)
			}
			rows = append(rows, r...)
		}
		if next != b.Rows() {
			t.Fatalf("max %d: parts cover rows [0,%d) of %d", maxBytes, next, b.Rows())
		}
		equalRows(t, rows, wantRows(b, meta.Dim, 0, b.Rows()))

		// Close to the fewest parts possible: the body of whole spread
		// over parts paying the fixed overhead and some padding each.
		body, room := len(whole)-e.overhead, maxBytes-e.overhead-partPadding
		if fewest := (body + room - 1) / room; len(parts) > fewest+fewest/4+1 {
			t.Errorf("max %d: %d parts, fewest possible about %d", maxBytes, len(parts), fewest)
		}
		if maxBytes == len(whole) && (len(parts) != 1 || !bytes.Equal(parts[0].Data, whole)) {
			t.Errorf("a batch that fits must come back as Encode's single stream")
		}

		// Deterministic: the same batch splits into the same bytes.
		again, err := e.Split(b, maxBytes)
		if err != nil {
			t.Fatal(err)
		}
		if len(again) != len(parts) {
			t.Fatalf("re-split gave %d parts, first %d", len(again), len(parts))
		}
		for i := range parts {
			if !bytes.Equal(parts[i].Data, again[i].Data) || parts[i].Lo != again[i].Lo {
				t.Fatalf("re-split part %d differs", i)
			}
		}
	}

	if parts, err := e.Split(&Batch{}, 1000); err != nil || len(parts) != 0 {
		t.Errorf("empty batch: %d parts, %v", len(parts), err)
	}
	if _, err := e.Split(b, 0); !errors.Is(err, ErrOption) {
		t.Errorf("maxBytes 0: %v, want ErrOption", err)
	}
}

func TestSplitTooLarge(t *testing.T) {
	e, _ := NewEncoder(testMeta)
	b := makeBatch(12, 5, testMeta.Dim, 500)
	b.IDs[3] = strings.Repeat("x", 10_000)
	_, err := e.Split(b, 4_000)
	if !errors.Is(err, ErrTooLarge) {
		t.Fatalf("got %v, want ErrTooLarge", err)
	}
	for _, s := range []string{"batch 12", "row 3", "stream seq 503", "xxxx"} {
		if !strings.Contains(err.Error(), s) {
			t.Errorf("error %q does not mention %q", err, s)
		}
	}
	if _, err := e.Split(b, e.overhead); !errors.Is(err, ErrTooLarge) || !strings.Contains(err.Error(), "row 0") {
		t.Errorf("limit below any row: %v, want ErrTooLarge for row 0", err)
	}
}
