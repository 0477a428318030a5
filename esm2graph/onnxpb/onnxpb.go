// Package onnxpb writes (and reads back) the ONNX protobuf messages a weights-to-graph builder
// needs: ModelProto, GraphProto, NodeProto, AttributeProto, TensorProto, ValueInfoProto,
// TypeProto and OperatorSetIdProto, hand-encoded with protowire (field numbers from onnx.proto).
//
// A Model is written in two steps so that weights stream from their source to disk one tensor at
// a time, never all in memory: Plan decides which initializers go to an external data file (and
// at which offsets), WriteModel writes the .onnx file (inline tensors' bytes included) and
// WriteData the external file. Nested message lengths are computed up front from the tensors'
// byte sizes, which is what lets tensor bytes be streamed.
package onnxpb

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"math"
	"strconv"

	"google.golang.org/protobuf/encoding/protowire"
)

// ErrFormat: a message could not be decoded, or a tensor's data does not match its declared size.
var ErrFormat = errors.New("onnxpb: bad model")

// DataType is TensorProto.DataType.
type DataType int32

// The data types used here.
const (
	Float    DataType = 1
	Uint8    DataType = 2
	Int8     DataType = 3
	Int32    DataType = 6
	Int64    DataType = 7
	Bool     DataType = 9
	Float16  DataType = 10
	Double   DataType = 11
	BFloat16 DataType = 16
)

// Size is the element size in bytes (0 for a type not listed above).
func (d DataType) Size() int64 {
	switch d {
	case Uint8, Int8, Bool:
		return 1
	case Float16, BFloat16:
		return 2
	case Float, Int32:
		return 4
	case Int64, Double:
		return 8
	}
	return 0
}

// AttrType is AttributeProto.AttributeType.
type AttrType int32

// The attribute types used here.
const (
	AttrFloat  AttrType = 1
	AttrInt    AttrType = 2
	AttrString AttrType = 3
	AttrFloats AttrType = 6
	AttrInts   AttrType = 7
)

// Attribute is a node attribute; Type says which value field is used.
type Attribute struct {
	Name   string
	Type   AttrType
	F      float32
	I      int64
	S      string
	Floats []float32
	Ints   []int64
}

// IntAttr is an INT attribute.
func IntAttr(name string, v int64) Attribute { return Attribute{Name: name, Type: AttrInt, I: v} }

// FloatAttr is a FLOAT attribute.
func FloatAttr(name string, v float32) Attribute { return Attribute{Name: name, Type: AttrFloat, F: v} }

// Node is a NodeProto. An empty input or output name is an omitted optional one.
type Node struct {
	Name, OpType, Domain string
	Inputs, Outputs      []string
	Attrs                []Attribute
}

// Tensor is an initializer (TensorProto). Its bytes are Raw, or, when Raw is nil, Size bytes
// that Data writes (called once, when the tensor is written: the source of a streamed weight).
type Tensor struct {
	Name     string
	DataType DataType
	Dims     []int64
	Raw      []byte
	Size     int64
	Data     func(w io.Writer) error

	// Where Decode found the data of an external tensor (Raw nil until LoadExternal).
	External       bool
	Location       string
	Offset, Length int64
}

// ByteLen is the tensor's data size in bytes.
func (t *Tensor) ByteLen() int64 {
	if t.Raw != nil {
		return int64(len(t.Raw))
	}
	return t.Size
}

// NumElements is the product of Dims (1 for a scalar).
func (t *Tensor) NumElements() int64 {
	n := int64(1)
	for _, d := range t.Dims {
		n *= d
	}
	return n
}

// Dim is one dimension of a ValueInfo shape: a fixed Value, or a named (symbolic) Param.
type Dim struct {
	Value int64
	Param string
}

// ValueInfo is a graph input or output: a tensor of ElemType and Shape.
type ValueInfo struct {
	Name     string
	ElemType DataType
	Shape    []Dim
}

// OpsetID is an OperatorSetIdProto.
type OpsetID struct {
	Domain  string
	Version int64
}

// Graph is a GraphProto.
type Graph struct {
	Name            string
	Nodes           []Node
	Initializers    []*Tensor
	Inputs, Outputs []ValueInfo
}

// Model is a ModelProto.
type Model struct {
	IRVersion    int64
	ProducerName string
	Opsets       []OpsetID
	Graph        Graph
}

// Field numbers (onnx.proto).
const (
	modelIRVersion, modelProducerName, modelGraph, modelOpsetImport           = 1, 2, 7, 8
	graphNode, graphName, graphInitializer, graphInput, graphOutput           = 1, 2, 5, 11, 12
	nodeInput, nodeOutput, nodeName, nodeOpType, nodeAttribute, nodeDomain    = 1, 2, 3, 4, 5, 7
	attrName, attrF, attrI, attrS, attrFloats, attrInts, attrType             = 1, 2, 3, 4, 7, 8, 20
	tensorDims, tensorDataType, tensorFloatData, tensorInt32Data              = 1, 2, 4, 5
	tensorInt64Data, tensorName, tensorRawData, tensorExternalData, tensorLoc = 7, 8, 9, 13, 14
	valueInfoName, valueInfoType                                              = 1, 2
	typeTensorType, typeTensorElemType, typeTensorShape, shapeDim             = 1, 1, 2, 1
	dimValue, dimParam, entryKey, entryValue, opsetDomain, opsetVersion       = 1, 2, 1, 2, 1, 2
	dataLocationExternal                                                      = 1
)

func appendString(b []byte, num protowire.Number, s string) []byte {
	b = protowire.AppendTag(b, num, protowire.BytesType)
	return protowire.AppendString(b, s)
}

func appendBytes(b []byte, num protowire.Number, msg []byte) []byte {
	b = protowire.AppendTag(b, num, protowire.BytesType)
	return protowire.AppendBytes(b, msg)
}

func appendVarint(b []byte, num protowire.Number, v int64) []byte {
	b = protowire.AppendTag(b, num, protowire.VarintType)
	return protowire.AppendVarint(b, uint64(v))
}

func encodeAttr(a Attribute) []byte {
	b := appendString(nil, attrName, a.Name)
	switch a.Type {
	case AttrFloat:
		b = protowire.AppendTag(b, attrF, protowire.Fixed32Type)
		b = protowire.AppendFixed32(b, math.Float32bits(a.F))
	case AttrInt:
		b = appendVarint(b, attrI, a.I)
	case AttrString:
		b = appendString(b, attrS, a.S)
	case AttrFloats:
		for _, f := range a.Floats {
			b = protowire.AppendTag(b, attrFloats, protowire.Fixed32Type)
			b = protowire.AppendFixed32(b, math.Float32bits(f))
		}
	case AttrInts:
		for _, v := range a.Ints {
			b = appendVarint(b, attrInts, v)
		}
	}
	return appendVarint(b, attrType, int64(a.Type))
}

func encodeNode(n *Node) []byte {
	var b []byte
	for _, s := range n.Inputs {
		b = appendString(b, nodeInput, s)
	}
	for _, s := range n.Outputs {
		b = appendString(b, nodeOutput, s)
	}
	if n.Name != "" {
		b = appendString(b, nodeName, n.Name)
	}
	b = appendString(b, nodeOpType, n.OpType)
	for _, a := range n.Attrs {
		b = appendBytes(b, nodeAttribute, encodeAttr(a))
	}
	if n.Domain != "" {
		b = appendString(b, nodeDomain, n.Domain)
	}
	return b
}

func encodeValueInfo(v *ValueInfo) []byte {
	var shape []byte
	for _, d := range v.Shape {
		var dim []byte
		if d.Param != "" {
			dim = appendString(nil, dimParam, d.Param)
		} else {
			dim = appendVarint(nil, dimValue, d.Value)
		}
		shape = appendBytes(shape, shapeDim, dim)
	}
	tt := appendVarint(nil, typeTensorElemType, int64(v.ElemType))
	tt = appendBytes(tt, typeTensorShape, shape)
	b := appendString(nil, valueInfoName, v.Name)
	return appendBytes(b, valueInfoType, appendBytes(nil, typeTensorType, tt))
}

func encodeOpset(o OpsetID) []byte {
	b := appendString(nil, opsetDomain, o.Domain)
	return appendVarint(b, opsetVersion, o.Version)
}

// tensorHead is a TensorProto up to its data: dims, data type and name, then either the external
// data entries (location, offset, length) and data_location, or raw_data's tag and length.
func tensorHead(t *Tensor, ext *extRef) []byte {
	var b []byte
	for _, d := range t.Dims {
		b = appendVarint(b, tensorDims, d)
	}
	b = appendVarint(b, tensorDataType, int64(t.DataType))
	b = appendString(b, tensorName, t.Name)
	if ext != nil {
		for _, kv := range [][2]string{{"location", ext.location}, {"offset", strconv.FormatInt(ext.offset, 10)},
			{"length", strconv.FormatInt(t.ByteLen(), 10)}} {
			e := appendString(nil, entryKey, kv[0])
			e = appendString(e, entryValue, kv[1])
			b = appendBytes(b, tensorExternalData, e)
		}
		return appendVarint(b, tensorLoc, dataLocationExternal)
	}
	b = protowire.AppendTag(b, tensorRawData, protowire.BytesType)
	return protowire.AppendVarint(b, uint64(t.ByteLen()))
}

type extRef struct {
	location string
	offset   int64
}

// TensorProtoSize is the size of t's TensorProto with its data inline (what onnx's ByteSize
// reports, and what the 2 GB protobuf limit applies to).
func TensorProtoSize(t *Tensor) int64 { return int64(len(tensorHead(t, nil))) + t.ByteLen() }

// Plan is a model laid out for writing: which tensors are external, at what offsets.
type Plan struct {
	m    *Model
	ext  map[*Tensor]*extRef
	size int64 // external file size
}

// Plan lays m out. With location "" every tensor is inline; otherwise tensors of at least
// threshold bytes go to the external file named location (relative to the model file, as ONNX
// wants), each at an offset that is a multiple of align (> 0; ONNX recommends 4096 for mmap).
func (m *Model) Plan(location string, threshold, align int64) *Plan {
	p := &Plan{m: m, ext: map[*Tensor]*extRef{}}
	if location == "" {
		return p
	}
	align = max(align, 1)
	for _, t := range m.Graph.Initializers {
		if t.ByteLen() < threshold {
			continue
		}
		off := (p.size + align - 1) / align * align
		p.ext[t] = &extRef{location: location, offset: off}
		p.size = off + t.ByteLen()
	}
	return p
}

// External says whether any tensor goes to the external file.
func (p *Plan) External() bool { return len(p.ext) > 0 }

func (p *Plan) graphSize() int64 {
	g := &p.m.Graph
	var n int64
	for i := range g.Nodes {
		n += int64(protowire.SizeTag(graphNode) + protowire.SizeBytes(len(encodeNode(&g.Nodes[i]))))
	}
	n += int64(protowire.SizeTag(graphName) + protowire.SizeBytes(len(g.Name)))
	for _, t := range g.Initializers {
		n += int64(protowire.SizeTag(graphInitializer)) + sizeBytes64(p.tensorSize(t))
	}
	for _, vs := range [][]ValueInfo{g.Inputs, g.Outputs} {
		for i := range vs {
			n += int64(protowire.SizeTag(graphInput) + protowire.SizeBytes(len(encodeValueInfo(&vs[i]))))
		}
	}
	return n
}

func sizeBytes64(n int64) int64 { return int64(protowire.SizeVarint(uint64(n))) + n }

func (p *Plan) tensorSize(t *Tensor) int64 {
	if ext := p.ext[t]; ext != nil {
		return int64(len(tensorHead(t, ext)))
	}
	return TensorProtoSize(t)
}

// countWriter counts what passes through it.
type countWriter struct {
	w io.Writer
	n int64
}

func (c *countWriter) Write(b []byte) (int, error) {
	n, err := c.w.Write(b)
	c.n += int64(n)
	return n, err
}

func writeData(w io.Writer, t *Tensor) error {
	if t.Raw != nil {
		_, err := w.Write(t.Raw)
		return err
	}
	if t.Data == nil {
		return fmt.Errorf("%w: tensor %s has neither Raw nor Data", ErrFormat, t.Name)
	}
	cw := &countWriter{w: w}
	if err := t.Data(cw); err != nil {
		return fmt.Errorf("tensor %s: %w", t.Name, err)
	}
	if cw.n != t.Size {
		return fmt.Errorf("%w: tensor %s wrote %d bytes, declared %d", ErrFormat, t.Name, cw.n, t.Size)
	}
	return nil
}

// WriteModel writes the ModelProto, streaming inline tensors' data (fields in field-number
// order, as protobuf serializers write them).
func (p *Plan) WriteModel(w io.Writer) error {
	bw := bufio.NewWriterSize(w, 1<<20)
	m := p.m
	head := appendVarint(nil, modelIRVersion, m.IRVersion)
	head = appendString(head, modelProducerName, m.ProducerName)
	head = protowire.AppendTag(head, modelGraph, protowire.BytesType)
	head = protowire.AppendVarint(head, uint64(p.graphSize()))
	if _, err := bw.Write(head); err != nil {
		return err
	}
	g := &m.Graph
	var b []byte
	for i := range g.Nodes {
		b = appendBytes(b, graphNode, encodeNode(&g.Nodes[i]))
	}
	b = appendString(b, graphName, g.Name)
	if _, err := bw.Write(b); err != nil {
		return err
	}
	for _, t := range g.Initializers {
		ext := p.ext[t]
		b = protowire.AppendTag(nil, graphInitializer, protowire.BytesType)
		b = protowire.AppendVarint(b, uint64(p.tensorSize(t)))
		b = append(b, tensorHead(t, ext)...)
		if _, err := bw.Write(b); err != nil {
			return err
		}
		if ext == nil {
			if err := writeData(bw, t); err != nil {
				return err
			}
		}
	}
	b = b[:0]
	for i := range g.Inputs {
		b = appendBytes(b, graphInput, encodeValueInfo(&g.Inputs[i]))
	}
	for i := range g.Outputs {
		b = appendBytes(b, graphOutput, encodeValueInfo(&g.Outputs[i]))
	}
	for _, o := range m.Opsets {
		b = appendBytes(b, modelOpsetImport, encodeOpset(o))
	}
	if _, err := bw.Write(b); err != nil {
		return err
	}
	return bw.Flush()
}

// WriteData writes the external tensors' data, zero-padded to their offsets.
func (p *Plan) WriteData(w io.Writer) error {
	bw := bufio.NewWriterSize(w, 1<<20)
	var pos int64
	zeros := make([]byte, 4096)
	for _, t := range p.m.Graph.Initializers {
		ext := p.ext[t]
		if ext == nil {
			continue
		}
		for pos < ext.offset {
			n, err := bw.Write(zeros[:min(int64(len(zeros)), ext.offset-pos)])
			if err != nil {
				return err
			}
			pos += int64(n)
		}
		if err := writeData(bw, t); err != nil {
			return err
		}
		pos += t.ByteLen()
	}
	return bw.Flush()
}
