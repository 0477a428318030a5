package safetensors

import (
	"bytes"
	"encoding/binary"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func writeFile(t *testing.T, tensors []Tensor, meta map[string]string) []byte {
	t.Helper()
	var buf bytes.Buffer
	if err := Write(&buf, tensors, meta); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// TestRoundTrip: Write then Open gives back names, shapes, metadata and values, for every float
// dtype the reader converts (F16 and BF16 values chosen to be exact).
func TestRoundTrip(t *testing.T) {
	f16 := []byte{0x00, 0x3c, 0x00, 0xc0, 0x01, 0x00} // 1, -2, 2^-24
	bf16 := []byte{0x80, 0x3f, 0x80, 0x3e}            // 1, 0.25
	f64 := make([]byte, 16)
	binary.LittleEndian.PutUint64(f64, 0x3ff8000000000000)     // 1.5
	binary.LittleEndian.PutUint64(f64[8:], 0xc000000000000000) // -2
	tensors := []Tensor{
		F32("a.weight", []int64{2, 3}, []float32{1, 2, 3, 4, 5, 6}),
		{Name: "half", DType: "F16", Shape: []int64{3}, Data: f16},
		{Name: "brain", DType: "BF16", Shape: []int64{2}, Data: bf16},
		{Name: "double", DType: "F64", Shape: []int64{2}, Data: f64},
		F32("scalar", nil, []float32{7}),
		{Name: "ids", DType: "I64", Shape: []int64{1}, Data: make([]byte, 8)},
	}
	path := filepath.Join(t.TempDir(), "m.safetensors")
	if err := os.WriteFile(path, writeFile(t, tensors, map[string]string{"format": "pt"}), 0o644); err != nil {
		t.Fatal(err)
	}
	f, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if f.Path() != path || f.Metadata()["format"] != "pt" || len(f.Tensors()) != len(tensors) {
		t.Fatalf("path %q metadata %v, %d tensors", f.Path(), f.Metadata(), len(f.Tensors()))
	}
	want := map[string][]float32{
		"a.weight": {1, 2, 3, 4, 5, 6}, "half": {1, -2, 1.0 / (1 << 24)}, "brain": {1, 0.25},
		"double": {1.5, -2}, "scalar": {7},
	}
	for name, w := range want {
		got, err := f.Float32(name)
		if err != nil {
			t.Fatal(err)
		}
		if len(got) != len(w) {
			t.Fatalf("%s: %v, want %v", name, got, w)
		}
		for i := range w {
			if got[i] != w[i] {
				t.Fatalf("%s: %v, want %v", name, got, w)
			}
		}
	}
	if ti, _ := f.Lookup("a.weight"); ti.DType != "F32" || len(ti.Shape) != 2 || ti.Shape[1] != 3 || ti.NumElements() != 6 {
		t.Errorf("a.weight info %+v", ti)
	}
	if ti, _ := f.Lookup("scalar"); len(ti.Shape) != 0 || ti.NumElements() != 1 {
		t.Errorf("scalar info %+v", ti)
	}
	if _, err := f.Float32("ids"); !errors.Is(err, ErrDType) {
		t.Errorf("I64 as float32: %v, want ErrDType", err)
	}
	if _, err := f.Float32("nope"); !errors.Is(err, ErrNotFound) {
		t.Errorf("missing tensor: %v, want ErrNotFound", err)
	}
}

// TestBadFiles: truncation, bad header lengths, inconsistent entries: ErrFormat with a message
// that says what is wrong.
func TestBadFiles(t *testing.T) {
	good := writeFile(t, []Tensor{F32("w", []int64{4}, []float32{1, 2, 3, 4})}, nil)
	header := func(js string, data int) []byte {
		b := binary.LittleEndian.AppendUint64(nil, uint64(len(js)))
		return append(append(b, js...), make([]byte, data)...)
	}
	cases := []struct {
		name string
		data []byte
		msg  string
	}{
		{"empty", nil, "shorter than"},
		{"truncated data", good[:len(good)-3], "outside"},
		{"truncated header", good[:12], "only"},
		{"huge header length", binary.LittleEndian.AppendUint64(nil, 1<<40), "limit"},
		{"not JSON", header("{nope", 0), "JSON"},
		{"not an object", header(`[1]`, 0), "JSON"},
		{"unknown dtype", header(`{"w":{"dtype":"F12","shape":[1],"data_offsets":[0,4]}}`, 4), "unknown dtype"},
		{"bad offsets", header(`{"w":{"dtype":"F32","shape":[1],"data_offsets":[0]}}`, 4), "data_offsets"},
		{"length mismatch", header(`{"w":{"dtype":"F32","shape":[2],"data_offsets":[0,4]}}`, 8), "needs 8 bytes"},
		{"negative dim", header(`{"w":{"dtype":"F32","shape":[-1],"data_offsets":[0,4]}}`, 4), "negative"},
		{"huge shape", header(`{"w":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,4]}}`, 4), "too large"},
		{"overlap", header(`{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}`, 8), "overlap"},
		{"bad metadata", header(`{"__metadata__":{"x":1}}`, 0), "__metadata__"},
		{"entry not an object", header(`{"w":3}`, 0), `tensor "w"`},
	}
	for _, c := range cases {
		_, err := NewReader(bytes.NewReader(c.data), int64(len(c.data)))
		if !errors.Is(err, ErrFormat) || !strings.Contains(err.Error(), c.msg) {
			t.Errorf("%s: %v, want ErrFormat mentioning %q", c.name, err, c.msg)
		}
	}
	if err := Write(&bytes.Buffer{}, []Tensor{{Name: "x", DType: "F32", Shape: []int64{2}, Data: make([]byte, 4)}}, nil); !errors.Is(err, ErrFormat) {
		t.Errorf("Write with short data: %v", err)
	}
	if err := Write(&bytes.Buffer{}, []Tensor{{Name: "x", DType: "Q7"}}, nil); !errors.Is(err, ErrDType) {
		t.Errorf("Write with a bad dtype: %v", err)
	}
	if _, err := Open(filepath.Join(t.TempDir(), "absent.safetensors")); err == nil {
		t.Error("Open of a missing file succeeded")
	}
}

// FuzzReader: no input makes the parser panic, and whatever it accepts can be read in full.
func FuzzReader(f *testing.F) {
	var buf bytes.Buffer
	_ = Write(&buf, []Tensor{F32("w", []int64{2, 2}, []float32{1, 2, 3, 4}), {Name: "h", DType: "F16", Shape: []int64{1}, Data: []byte{0, 0x3c}}},
		map[string]string{"k": "v"})
	f.Add(buf.Bytes())
	f.Add([]byte("\x10\x00\x00\x00\x00\x00\x00\x00{}              "))
	f.Fuzz(func(t *testing.T, data []byte) {
		sf, err := NewReader(bytes.NewReader(data), int64(len(data)))
		if err != nil {
			return
		}
		for _, ti := range sf.Tensors() {
			if v, err := sf.Float32(ti.Name); err == nil && int64(len(v)) != ti.NumElements() {
				t.Fatalf("%s: %d values for shape %v", ti.Name, len(v), ti.Shape)
			}
		}
	})
}
