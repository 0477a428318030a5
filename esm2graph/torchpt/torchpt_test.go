package torchpt

import (
	"archive/zip"
	"bytes"
	"errors"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func mustTensor(t *testing.T, dtype string, shape []int64, vals []float32) *Tensor {
	t.Helper()
	x, err := NewTensor(dtype, shape, vals)
	if err != nil {
		t.Fatal(err)
	}
	return x
}

func saveFile(t *testing.T, root any) string {
	t.Helper()
	var buf bytes.Buffer
	if err := Save(&buf, root); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "ckpt.pt")
	if err := os.WriteFile(path, buf.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

// TestSaveOpen: a fair-esm-shaped checkpoint ({"model": state dict, "cfg": {"model":
// Namespace(...)}}) written by Save reads back: tensors of each float dtype, a strided view of
// a shared storage, and the config through Lookup.
func TestSaveOpen(t *testing.T) {
	w := mustTensor(t, "float32", []int64{2, 3}, []float32{1, 2, 3, 4, 5, 6})
	wT := &Tensor{DType: "float32", Shape: []int64{3, 2}, Stride: []int64{1, 3}, st: w.st} // w.T, same storage
	row := &Tensor{DType: "float32", Shape: []int64{3}, Stride: []int64{1}, Offset: 3, st: w.st}
	sd := &Dict{}
	sd.set("encoder.w", w)
	sd.set("encoder.wT", wT)
	sd.set("encoder.row", row)
	sd.set("h", mustTensor(t, "float16", []int64{2}, []float32{0.5, -3}))
	sd.set("d", mustTensor(t, "float64", []int64{1}, []float32{1.25}))
	ns := &Object{Class: Global{"argparse", "Namespace"}, State: &Dict{
		Keys: []any{"encoder_layers", "token_dropout", "lr", "arch"}, Values: []any{int64(33), true, 1e-4, "esm2"}}}
	cfg := &Dict{Keys: []any{"model"}, Values: []any{ns}}
	root := &Dict{Keys: []any{"model", "cfg", "big", "list"}, Values: []any{sd, cfg, int64(1) << 40, &List{Items: []any{nil, 1.5}}}}
	f, err := Open(saveFile(t, root))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	got, err := f.StateDict()
	if err != nil {
		t.Fatal(err)
	}
	want := map[string][]float32{
		"encoder.w": {1, 2, 3, 4, 5, 6}, "encoder.wT": {1, 4, 2, 5, 3, 6}, "encoder.row": {4, 5, 6},
		"h": {0.5, -3}, "d": {1.25},
	}
	if len(got) != len(want) {
		t.Fatalf("state dict keys %v", Keys(f.Root))
	}
	for name, w := range want {
		vals, err := got[name].Float32()
		if err != nil {
			t.Fatal(err)
		}
		if len(vals) != len(w) {
			t.Fatalf("%s = %v, want %v", name, vals, w)
		}
		for i := range w {
			if vals[i] != w[i] {
				t.Fatalf("%s = %v, want %v", name, vals, w)
			}
		}
	}
	if got["encoder.w"].StorageKey() != got["encoder.wT"].StorageKey() {
		t.Error("views of one storage got different storages")
	}
	for path, want := range map[string]any{"cfg.model.encoder_layers": int64(33), "cfg.model.token_dropout": true,
		"cfg.model.arch": "esm2", "big": int64(1) << 40} {
		v, ok := Lookup(f.Root, strings.Split(path, ".")...)
		if !ok || v != want {
			t.Errorf("Lookup %s = %v, %v; want %v", path, v, ok, want)
		}
	}
	if _, ok := Lookup(f.Root, "cfg", "model", "nope"); ok {
		t.Error("Lookup of a missing attribute succeeded")
	}
	if f.Path() == "" {
		t.Error("no path")
	}
}

// TestOmegaConfLookup: omegaconf DictConfig state (_content of nodes holding _val) is followed.
func TestOmegaConfLookup(t *testing.T) {
	node := func(v any) *Object {
		return &Object{Class: Global{"omegaconf.nodes", "AnyNode"}, State: &Dict{Keys: []any{"_val", "_parent"}, Values: []any{v, nil}}}
	}
	inner := &Object{Class: Global{"omegaconf.dictconfig", "DictConfig"}, State: &Dict{
		Keys: []any{"_metadata", "_content"}, Values: []any{nil, &Dict{Keys: []any{"encoder_embed_dim"}, Values: []any{node(int64(1280))}}}}}
	outer := &Object{Class: Global{"omegaconf.dictconfig", "DictConfig"}, State: &Dict{
		Keys: []any{"_content"}, Values: []any{&Dict{Keys: []any{"model"}, Values: []any{inner}}}}}
	// Round-trip through the pickle as well.
	f, err := Open(saveFile(t, &Dict{Keys: []any{"cfg", "model"}, Values: []any{outer,
		&Dict{Keys: []any{"x"}, Values: []any{mustTensor(t, "float32", []int64{1}, []float32{1})}}}}))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	cfg, _ := f.Root.(*Dict).Get("cfg")
	if v, ok := Lookup(cfg, "model", "encoder_embed_dim"); !ok || v != int64(1280) {
		t.Fatalf("omegaconf lookup = %v, %v", v, ok)
	}
}

// TestBadCheckpoints: files that are not torch zips, or are broken ones, give ErrFormat or
// ErrUnsupported with a message naming the problem.
func TestBadCheckpoints(t *testing.T) {
	dir := t.TempDir()
	write := func(name string, data []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, data, 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	zipOf := func(entries map[string][]byte) []byte {
		var buf bytes.Buffer
		zw := zip.NewWriter(&buf)
		for name, data := range entries {
			fw, _ := zw.CreateHeader(&zip.FileHeader{Name: name, Method: zip.Store})
			fw.Write(data)
		}
		zw.Close()
		return buf.Bytes()
	}
	var good bytes.Buffer
	sd := &Dict{Keys: []any{"w"}, Values: []any{mustTensor(t, "float32", []int64{4}, []float32{1, 2, 3, 4})}}
	if err := Save(&good, sd); err != nil {
		t.Fatal(err)
	}
	zr, _ := zip.NewReader(bytes.NewReader(good.Bytes()), int64(good.Len()))
	entries := map[string][]byte{}
	for _, e := range zr.File {
		rc, _ := e.Open()
		var b bytes.Buffer
		b.ReadFrom(rc)
		entries[e.Name] = b.Bytes()
	}
	without := func(name string, repl []byte) map[string][]byte {
		m := map[string][]byte{}
		for k, v := range entries {
			if k != name {
				m[k] = v
			} else if repl != nil {
				m[k] = repl
			}
		}
		return m
	}
	cases := []struct {
		name string
		data []byte
		want error
		msg  string
	}{
		{"legacy", []byte("\x80\x02\x8a\x0alz\xfc\x9cF\xf9 j\xa8P\x19."), ErrUnsupported, "legacy"},
		{"text", []byte("hello world"), ErrFormat, "not a zip"},
		{"tiny", []byte("PK"), ErrFormat, "too short"},
		{"truncated zip", good.Bytes()[:good.Len()/2], ErrFormat, "zip"},
		{"no pickle", zipOf(without("archive/data.pkl", nil)), ErrFormat, "data.pkl"},
		{"no storage", zipOf(without("archive/data/0", nil)), ErrFormat, "no entry"},
		{"short storage", zipOf(without("archive/data/0", []byte{1, 2, 3})), ErrFormat, "truncated"},
		{"big endian", zipOf(without("archive/byteorder", []byte("big"))), ErrUnsupported, "byteorder"},
		{"truncated pickle", zipOf(without("archive/data.pkl", entries["archive/data.pkl"][:20])), ErrFormat, "pickle"},
		{"bad opcode", zipOf(without("archive/data.pkl", []byte("\x80\x02\xff."))), ErrFormat, "opcode"},
		{"underflow", zipOf(without("archive/data.pkl", []byte("\x80\x02R."))), ErrFormat, "underflow"},
		{"bad memo", zipOf(without("archive/data.pkl", []byte("\x80\x02h\x07."))), ErrFormat, "memo"},
		{"no state dict", zipOf(without("archive/data.pkl", []byte("\x80\x02K\x07."))), ErrFormat, "state dict"},
	}
	for _, c := range cases {
		f, err := Open(write(c.name, c.data))
		if err == nil {
			_, err = f.StateDict()
			f.Close()
		}
		if !errors.Is(err, c.want) || !strings.Contains(err.Error(), c.msg) {
			t.Errorf("%s: %v, want %v mentioning %q", c.name, err, c.want, c.msg)
		}
	}
	// A view reaching past its storage is refused when the pickle is read.
	bad := &Tensor{DType: "float32", Shape: []int64{5}, Stride: []int64{1}, st: sd.Values[0].(*Tensor).st}
	if _, err := Open(saveFile(t, &Dict{Keys: []any{"w"}, Values: []any{bad}})); !errors.Is(err, ErrFormat) || !strings.Contains(err.Error(), "reaches") {
		t.Errorf("out-of-range view: %v", err)
	}
	if _, err := NewTensor("int8", []int64{1}, []float32{1}); !errors.Is(err, ErrUnsupported) {
		t.Errorf("NewTensor int8: %v", err)
	}
	if _, err := NewTensor("float32", []int64{2}, []float32{1}); !errors.Is(err, ErrFormat) {
		t.Errorf("NewTensor with too few values: %v", err)
	}
	if _, err := Open(filepath.Join(dir, "absent.pt")); err == nil {
		t.Error("Open of a missing file succeeded")
	}
}

// TestPickleOpcodes: the opcodes torch.save does not use but other picklers do (text ints,
// protocol 4 framing, STACK_GLOBAL, MEMOIZE, sets, long integers).
func TestPickleOpcodes(t *testing.T) {
	pk := []byte("\x80\x04\x95\x00\x00\x00\x00\x00\x00\x00\x00" + // PROTO 4, FRAME
		"(" + "I01\n" + "I-5\n" + "L123456789012345678901234567890L\n" + "F2.5\n" + // MARK, INT true, INT, LONG, FLOAT
		"\x8c\x03mod\x94" + "\x8c\x04Name\x94" + "\x93" + ")" + "\x81" + // STACK_GLOBAL, EMPTY_TUPLE, NEWOBJ
		"\x8f(K\x01K\x02\x90" + // EMPTY_SET, ADDITEMS
		"\x8a\x02\x00\x80" + // LONG1 -32768
		"C\x02ab" + // SHORT_BINBYTES
		"h\x00" + // BINGET 0 ("mod")
		"l" + ".") // LIST
	u := &unpickler{data: pk, memo: map[int64]any{}}
	v, err := u.run()
	if err != nil {
		t.Fatal(err)
	}
	l := v.(*List).Items
	if len(l) != 9 || l[0] != true || l[1] != int64(-5) || l[3] != 2.5 || l[6] != int64(-32768) || string(l[7].(Bytes)) != "ab" || l[8] != "mod" {
		t.Fatalf("items %#v", l)
	}
	if b, ok := l[2].(*big.Int); !ok || b.String() != "123456789012345678901234567890" {
		t.Errorf("LONG %v", l[2])
	}
	if o, ok := l[4].(*Object); !ok || o.Class != (Global{"mod", "Name"}) {
		t.Errorf("NEWOBJ %#v", l[4])
	}
	if s, ok := l[5].(*Set); !ok || len(s.Items) != 2 {
		t.Errorf("set %#v", l[5])
	}
	if decodeLong([]byte{0xff}) != int64(-1) || decodeLong(nil) != int64(0) {
		t.Error("decodeLong")
	}
	if b := decodeLong([]byte{0, 0, 0, 0, 0, 0, 0, 0, 0xff}).(*big.Int); b.Sign() >= 0 {
		t.Errorf("9-byte negative LONG = %v", b)
	}
}

// FuzzUnpickle: no pickle makes the virtual machine panic or loop.
func FuzzUnpickle(f *testing.F) {
	var buf bytes.Buffer
	p := &pickler{memo: map[Global]int{}, keys: map[*storage]string{}}
	_ = p.value(&Dict{Keys: []any{"a", "b"}, Values: []any{Tuple{int64(1), "x", 2.5}, &List{Items: []any{true, nil}}}})
	buf.WriteString("\x80\x02")
	buf.Write(p.buf.Bytes())
	buf.WriteByte('.')
	f.Add(buf.Bytes())
	f.Fuzz(func(t *testing.T, data []byte) {
		u := &unpickler{data: data, memo: map[int64]any{}, persistent: func(any) (any, error) { return nil, nil }}
		_, _ = u.run()
	})
}
