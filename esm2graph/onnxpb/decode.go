package onnxpb

import (
	"encoding/binary"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strconv"

	"google.golang.org/protobuf/encoding/protowire"

	"github.com/seqembed/seqembed/internal/half"
)

// Decode parses a ModelProto (the fields Model has; others are skipped). Tensors whose data is
// external are marked External with their location, offset and length: LoadExternal reads them.
func Decode(b []byte) (*Model, error) {
	m := &Model{}
	err := fields(b, func(num protowire.Number, typ protowire.Type, v uint64, sub []byte) error {
		switch num {
		case modelIRVersion:
			m.IRVersion = int64(v)
		case modelProducerName:
			m.ProducerName = string(sub)
		case modelGraph:
			return decodeGraph(sub, &m.Graph)
		case modelOpsetImport:
			var o OpsetID
			err := fields(sub, func(num protowire.Number, _ protowire.Type, v uint64, sub []byte) error {
				switch num {
				case opsetDomain:
					o.Domain = string(sub)
				case opsetVersion:
					o.Version = int64(v)
				}
				return nil
			})
			m.Opsets = append(m.Opsets, o)
			return err
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return m, nil
}

// fields calls fn for each field of the message b: v is a varint or fixed value, sub the bytes of
// a length-delimited one.
func fields(b []byte, fn func(num protowire.Number, typ protowire.Type, v uint64, sub []byte) error) error {
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return fmt.Errorf("%w: %v", ErrFormat, protowire.ParseError(n))
		}
		b = b[n:]
		var v uint64
		var sub []byte
		switch typ {
		case protowire.VarintType:
			v, n = protowire.ConsumeVarint(b)
		case protowire.Fixed32Type:
			var x uint32
			x, n = protowire.ConsumeFixed32(b)
			v = uint64(x)
		case protowire.Fixed64Type:
			v, n = protowire.ConsumeFixed64(b)
		case protowire.BytesType:
			sub, n = protowire.ConsumeBytes(b)
		default:
			n = protowire.ConsumeFieldValue(num, typ, b)
		}
		if n < 0 {
			return fmt.Errorf("%w: field %d: %v", ErrFormat, num, protowire.ParseError(n))
		}
		b = b[n:]
		if err := fn(num, typ, v, sub); err != nil {
			return err
		}
	}
	return nil
}

func decodeGraph(b []byte, g *Graph) error {
	return fields(b, func(num protowire.Number, _ protowire.Type, _ uint64, sub []byte) error {
		switch num {
		case graphNode:
			var n Node
			if err := decodeNode(sub, &n); err != nil {
				return err
			}
			g.Nodes = append(g.Nodes, n)
		case graphName:
			g.Name = string(sub)
		case graphInitializer:
			t := &Tensor{}
			if err := decodeTensor(sub, t); err != nil {
				return err
			}
			g.Initializers = append(g.Initializers, t)
		case graphInput, graphOutput:
			var vi ValueInfo
			if err := decodeValueInfo(sub, &vi); err != nil {
				return err
			}
			if num == graphInput {
				g.Inputs = append(g.Inputs, vi)
			} else {
				g.Outputs = append(g.Outputs, vi)
			}
		}
		return nil
	})
}

func decodeNode(b []byte, n *Node) error {
	return fields(b, func(num protowire.Number, _ protowire.Type, _ uint64, sub []byte) error {
		switch num {
		case nodeInput:
			n.Inputs = append(n.Inputs, string(sub))
		case nodeOutput:
			n.Outputs = append(n.Outputs, string(sub))
		case nodeName:
			n.Name = string(sub)
		case nodeOpType:
			n.OpType = string(sub)
		case nodeDomain:
			n.Domain = string(sub)
		case nodeAttribute:
			var a Attribute
			err := fields(sub, func(num protowire.Number, typ protowire.Type, v uint64, sub []byte) error {
				switch num {
				case attrName:
					a.Name = string(sub)
				case attrType:
					a.Type = AttrType(v)
				case attrF:
					a.F = math.Float32frombits(uint32(v))
				case attrI:
					a.I = int64(v)
				case attrS:
					a.S = string(sub)
				case attrInts:
					if typ == protowire.BytesType { // packed
						return packedVarints(sub, func(x uint64) { a.Ints = append(a.Ints, int64(x)) })
					}
					a.Ints = append(a.Ints, int64(v))
				case attrFloats:
					if typ == protowire.BytesType {
						for len(sub) >= 4 {
							a.Floats = append(a.Floats, math.Float32frombits(binary.LittleEndian.Uint32(sub)))
							sub = sub[4:]
						}
						return nil
					}
					a.Floats = append(a.Floats, math.Float32frombits(uint32(v)))
				}
				return nil
			})
			if err != nil {
				return err
			}
			n.Attrs = append(n.Attrs, a)
		}
		return nil
	})
}

func packedVarints(b []byte, fn func(uint64)) error {
	for len(b) > 0 {
		v, n := protowire.ConsumeVarint(b)
		if n < 0 {
			return fmt.Errorf("%w: packed varint: %v", ErrFormat, protowire.ParseError(n))
		}
		fn(v)
		b = b[n:]
	}
	return nil
}

func decodeTensor(b []byte, t *Tensor) error {
	var floats []float32
	var ints []int64
	err := fields(b, func(num protowire.Number, typ protowire.Type, v uint64, sub []byte) error {
		switch num {
		case tensorDims:
			if typ == protowire.BytesType {
				return packedVarints(sub, func(x uint64) { t.Dims = append(t.Dims, int64(x)) })
			}
			t.Dims = append(t.Dims, int64(v))
		case tensorDataType:
			t.DataType = DataType(v)
		case tensorName:
			t.Name = string(sub)
		case tensorRawData:
			t.Raw = append([]byte{}, sub...)
		case tensorFloatData:
			if typ == protowire.BytesType {
				for len(sub) >= 4 {
					floats = append(floats, math.Float32frombits(binary.LittleEndian.Uint32(sub)))
					sub = sub[4:]
				}
				return nil
			}
			floats = append(floats, math.Float32frombits(uint32(v)))
		case tensorInt64Data, tensorInt32Data:
			if typ == protowire.BytesType {
				return packedVarints(sub, func(x uint64) { ints = append(ints, int64(x)) })
			}
			ints = append(ints, int64(v))
		case tensorExternalData:
			var k, val string
			err := fields(sub, func(num protowire.Number, _ protowire.Type, _ uint64, sub []byte) error {
				switch num {
				case entryKey:
					k = string(sub)
				case entryValue:
					val = string(sub)
				}
				return nil
			})
			if err != nil {
				return err
			}
			switch k {
			case "location":
				t.Location = val
			case "offset", "length":
				x, err := strconv.ParseInt(val, 10, 64)
				if err != nil || x < 0 {
					return fmt.Errorf("%w: tensor %s: external %s %q", ErrFormat, t.Name, k, val)
				}
				if k == "offset" {
					t.Offset = x
				} else {
					t.Length = x
				}
			}
		case tensorLoc:
			t.External = v == dataLocationExternal
		}
		return nil
	})
	if err != nil {
		return err
	}
	switch {
	case floats != nil:
		t.Raw = make([]byte, 4*len(floats))
		for i, f := range floats {
			binary.LittleEndian.PutUint32(t.Raw[4*i:], math.Float32bits(f))
		}
	case ints != nil:
		size := t.DataType.Size()
		t.Raw = make([]byte, size*int64(len(ints)))
		for i, x := range ints {
			switch size {
			case 8:
				binary.LittleEndian.PutUint64(t.Raw[8*i:], uint64(x))
			case 4:
				binary.LittleEndian.PutUint32(t.Raw[4*i:], uint32(x))
			case 2:
				binary.LittleEndian.PutUint16(t.Raw[2*i:], uint16(x))
			case 1:
				t.Raw[i] = byte(x)
			}
		}
	}
	if t.Raw != nil {
		t.Size = int64(len(t.Raw))
	} else if t.External {
		t.Size = t.Length
	}
	return nil
}

func decodeValueInfo(b []byte, vi *ValueInfo) error {
	return fields(b, func(num protowire.Number, _ protowire.Type, _ uint64, sub []byte) error {
		switch num {
		case valueInfoName:
			vi.Name = string(sub)
		case valueInfoType:
			return fields(sub, func(num protowire.Number, _ protowire.Type, _ uint64, sub []byte) error {
				if num != typeTensorType {
					return nil
				}
				return fields(sub, func(num protowire.Number, _ protowire.Type, v uint64, sub []byte) error {
					switch num {
					case typeTensorElemType:
						vi.ElemType = DataType(v)
					case typeTensorShape:
						return fields(sub, func(num protowire.Number, _ protowire.Type, _ uint64, sub []byte) error {
							if num != shapeDim {
								return nil
							}
							var d Dim
							err := fields(sub, func(num protowire.Number, _ protowire.Type, v uint64, sub []byte) error {
								switch num {
								case dimValue:
									d.Value = int64(v)
								case dimParam:
									d.Param = string(sub)
								}
								return nil
							})
							vi.Shape = append(vi.Shape, d)
							return err
						})
					}
					return nil
				})
			})
		}
		return nil
	})
}

// LoadExternal reads external tensors' data from files relative to dir (the model file's
// directory).
func (m *Model) LoadExternal(dir string) error {
	files := map[string]*os.File{}
	defer func() {
		for _, f := range files {
			f.Close()
		}
	}()
	for _, t := range m.Graph.Initializers {
		if !t.External {
			continue
		}
		f := files[t.Location]
		if f == nil {
			var err error
			if f, err = os.Open(filepath.Join(dir, filepath.FromSlash(t.Location))); err != nil {
				return fmt.Errorf("%w: tensor %s: %v", ErrFormat, t.Name, err)
			}
			files[t.Location] = f
		}
		t.Raw = make([]byte, t.Length)
		if _, err := f.ReadAt(t.Raw, t.Offset); err != nil {
			return fmt.Errorf("%w: tensor %s: reading %d bytes at %d of %s: %v", ErrFormat, t.Name, t.Length, t.Offset, t.Location, err)
		}
	}
	return nil
}

// Float64s is the tensor's data as float64 values (Float, Float16, Double, Int32, Int64, Bool).
func (t *Tensor) Float64s() ([]float64, error) {
	size := t.DataType.Size()
	if size == 0 || int64(len(t.Raw)) != t.NumElements()*size {
		return nil, fmt.Errorf("%w: tensor %s: %d bytes of type %d for dims %v", ErrFormat, t.Name, len(t.Raw), t.DataType, t.Dims)
	}
	out := make([]float64, t.NumElements())
	le := binary.LittleEndian
	for i := range out {
		switch t.DataType {
		case Float:
			out[i] = float64(math.Float32frombits(le.Uint32(t.Raw[4*i:])))
		case Float16:
			out[i] = float64(half.ToFloat32(le.Uint16(t.Raw[2*i:])))
		case BFloat16:
			out[i] = float64(half.BFloat16ToFloat32(le.Uint16(t.Raw[2*i:])))
		case Double:
			out[i] = math.Float64frombits(le.Uint64(t.Raw[8*i:]))
		case Int32:
			out[i] = float64(int32(le.Uint32(t.Raw[4*i:])))
		case Int64:
			out[i] = float64(int64(le.Uint64(t.Raw[8*i:])))
		case Int8:
			out[i] = float64(int8(t.Raw[i]))
		case Uint8, Bool:
			out[i] = float64(t.Raw[i])
		}
	}
	return out, nil
}
