package onnxpb

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"testing"

	"google.golang.org/protobuf/encoding/protowire"
)

func sample() *Model {
	return &Model{
		IRVersion: 8, ProducerName: "test",
		Opsets: []OpsetID{{"", 17}, {"com.microsoft", 1}},
		Graph: Graph{
			Name: "g",
			Nodes: []Node{
				{Name: "Add_1", OpType: "Add", Inputs: []string{"x", "w"}, Outputs: []string{"Add_1_0"}},
				{Name: "LN_2", OpType: "SkipLayerNormalization", Domain: "com.microsoft", Inputs: []string{"Add_1_0", "", "big"},
					Outputs: []string{"y", "", ""}, Attrs: []Attribute{FloatAttr("epsilon", 1e-5), IntAttr("axis", -1),
						{Name: "s", Type: AttrString, S: "hi"}, {Name: "fs", Type: AttrFloats, Floats: []float32{1, 2}},
						{Name: "is", Type: AttrInts, Ints: []int64{-3, 4}}}},
			},
			Initializers: []*Tensor{
				{Name: "w", DataType: Float, Dims: []int64{2}, Raw: []byte{0, 0, 0x80, 0x3f, 0, 0, 0, 0x40}},
				{Name: "big", DataType: Float16, Dims: []int64{3, 1000}, Size: 6000, Data: func(w io.Writer) error {
					b := make([]byte, 6000)
					for i := range b {
						b[i] = byte(i)
					}
					_, err := w.Write(b)
					return err
				}},
				{Name: "scalar", DataType: Int64, Raw: make([]byte, 8)},
			},
			Inputs:  []ValueInfo{{Name: "x", ElemType: Float, Shape: []Dim{{Param: "batch"}, {Value: 2}}}},
			Outputs: []ValueInfo{{Name: "y", ElemType: Float, Shape: []Dim{{Param: "batch"}, {Value: 2}}}},
		},
	}
}

// TestRoundTrip: a model written inline, or with external data, decodes back to the same model,
// and TensorProtoSize is the initializer's encoded size.
func TestRoundTrip(t *testing.T) {
	for _, location := range []string{"", "m.onnx.data"} {
		m := sample()
		p := m.Plan(location, 8, 4096)
		if p.External() != (location != "") {
			t.Fatalf("%q: External %v", location, p.External())
		}
		dir := t.TempDir()
		var model, data bytes.Buffer
		if err := p.WriteModel(&model); err != nil {
			t.Fatal(err)
		}
		if err := p.WriteData(&data); err != nil {
			t.Fatal(err)
		}
		if location != "" {
			if data.Len() != 12288+8 {
				t.Errorf("data file %d bytes, want 12296 (w at 0, big at 4096, scalar at 12288)", data.Len())
			}
			os.WriteFile(filepath.Join(dir, location), data.Bytes(), 0o644)
		} else if data.Len() != 0 {
			t.Errorf("inline model wrote %d data bytes", data.Len())
		}
		got, err := Decode(model.Bytes())
		if err != nil {
			t.Fatal(err)
		}
		if location != "" {
			for i, off := range []int64{0, 4096, 12288} {
				it := got.Graph.Initializers[i]
				if !it.External || it.Location != location || it.Offset != off || it.Length != it.Size {
					t.Fatalf("external refs %+v", it)
				}
			}
			if err := got.LoadExternal(dir); err != nil {
				t.Fatal(err)
			}
		}
		want := sample()
		var buf bytes.Buffer
		want.Graph.Initializers[1].Data(&buf)
		want.Graph.Initializers[1].Raw = buf.Bytes()
		for i, it := range got.Graph.Initializers {
			w := want.Graph.Initializers[i]
			if it.Name != w.Name || it.DataType != w.DataType || !reflect.DeepEqual(it.Dims, w.Dims) || !bytes.Equal(it.Raw, w.Raw) {
				t.Errorf("%q: initializer %d = %s %v %v (%d bytes)", location, i, it.Name, it.DataType, it.Dims, len(it.Raw))
			}
		}
		got.Graph.Initializers, want.Graph.Initializers = nil, nil
		if !reflect.DeepEqual(got, want) {
			t.Errorf("%q: decoded\n%+v\nwant\n%+v", location, got, want)
		}
	}
	w := sample().Graph.Initializers[0]
	var b []byte
	b = protowire.AppendTag(b, 5, protowire.BytesType)
	if n := TensorProtoSize(w); int64(len(encodeTensorInline(w)))-int64(len(b))-1 != n {
		t.Errorf("TensorProtoSize %d", n)
	}
}

func encodeTensorInline(t *Tensor) []byte {
	b := protowire.AppendTag(nil, 5, protowire.BytesType)
	msg := append(tensorHead(t, nil), t.Raw...)
	return protowire.AppendBytes(b, msg)
}

// TestDataErrors: a streamed tensor that writes the wrong number of bytes, or has no data,
// fails the write; garbage fails Decode; a missing external file fails LoadExternal.
func TestDataErrors(t *testing.T) {
	m := sample()
	m.Graph.Initializers[1].Size = 6001
	if err := m.Plan("", 0, 1).WriteModel(io.Discard); !errors.Is(err, ErrFormat) {
		t.Errorf("short tensor: %v", err)
	}
	m = sample()
	m.Graph.Initializers[1].Data = nil
	if err := m.Plan("x", 0, 1).WriteData(io.Discard); !errors.Is(err, ErrFormat) {
		t.Errorf("tensor without data: %v", err)
	}
	m = sample()
	boom := errors.New("boom")
	m.Graph.Initializers[1].Data = func(io.Writer) error { return boom }
	if err := m.Plan("", 0, 1).WriteModel(io.Discard); !errors.Is(err, boom) {
		t.Errorf("failing source: %v", err)
	}
	for _, garbage := range [][]byte{{0xff}, {0x3a, 0x05, 0x01}, {0x0a, 0x80}} {
		if _, err := Decode(garbage); !errors.Is(err, ErrFormat) {
			t.Errorf("Decode(%x): %v", garbage, err)
		}
	}
	ext := &Model{Graph: Graph{Initializers: []*Tensor{{Name: "x", External: true, Location: "absent.data", Length: 4}}}}
	if err := ext.LoadExternal(t.TempDir()); !errors.Is(err, ErrFormat) {
		t.Errorf("missing external file: %v", err)
	}
}

// TestDecodeTypedFields: tensors stored in float_data / int64_data / int32_data (as some
// writers do) and packed dims decode to Raw; Float64s converts every element type.
func TestDecodeTypedFields(t *testing.T) {
	tensor := func(dt DataType, fields func([]byte) []byte) *Tensor {
		var b []byte
		b = protowire.AppendTag(b, tensorDims, protowire.BytesType)
		b = protowire.AppendBytes(b, protowire.AppendVarint(nil, 2))
		b = appendVarint(b, tensorDataType, int64(dt))
		b = fields(b)
		g := appendBytes(nil, graphInitializer, b)
		m, err := Decode(appendBytes(nil, modelGraph, g))
		if err != nil {
			t.Fatal(err)
		}
		return m.Graph.Initializers[0]
	}
	f := tensor(Float, func(b []byte) []byte {
		packed := binary.LittleEndian.AppendUint32(nil, 0x3f800000)
		packed = binary.LittleEndian.AppendUint32(packed, 0x40000000)
		return appendBytes(b, tensorFloatData, packed)
	})
	i := tensor(Int64, func(b []byte) []byte {
		return appendBytes(b, tensorInt64Data, protowire.AppendVarint(protowire.AppendVarint(nil, 7), uint64(1<<64-2)))
	})
	h := tensor(Float16, func(b []byte) []byte {
		return appendBytes(b, tensorInt32Data, protowire.AppendVarint(protowire.AppendVarint(nil, 0x3c00), 0xc000))
	})
	for _, c := range []struct {
		t    *Tensor
		want []float64
	}{{f, []float64{1, 2}}, {i, []float64{7, -2}}, {h, []float64{1, -2}}} {
		got, err := c.t.Float64s()
		if err != nil || !reflect.DeepEqual(got, c.want) || !reflect.DeepEqual(c.t.Dims, []int64{2}) {
			t.Errorf("type %d: %v %v dims %v, want %v", c.t.DataType, got, err, c.t.Dims, c.want)
		}
	}
	for _, c := range []struct {
		dt   DataType
		raw  []byte
		want float64
	}{
		{Double, binary.LittleEndian.AppendUint64(nil, 0x3ff8000000000000), 1.5},
		{BFloat16, []byte{0x80, 0x3f}, 1}, {Int32, []byte{0xff, 0xff, 0xff, 0xff}, -1},
		{Int8, []byte{0xfe}, -2}, {Uint8, []byte{0xfe}, 254}, {Bool, []byte{1}, 1},
	} {
		got, err := (&Tensor{DataType: c.dt, Raw: c.raw}).Float64s()
		if err != nil || got[0] != c.want {
			t.Errorf("type %d: %v %v, want %v", c.dt, got, err, c.want)
		}
	}
	if _, err := (&Tensor{DataType: Float, Dims: []int64{3}, Raw: make([]byte, 4)}).Float64s(); !errors.Is(err, ErrFormat) {
		t.Errorf("short raw data: %v", err)
	}
	if n := (&Tensor{Dims: []int64{2, 3}}).NumElements(); n != 6 {
		t.Errorf("NumElements %d", n)
	}
}
