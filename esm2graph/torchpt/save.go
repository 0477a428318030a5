package torchpt

import (
	"archive/zip"
	"bytes"
	"encoding/binary"
	"fmt"
	"io"
	"math"
	"strconv"

	"github.com/seqembed/seqembed/internal/half"
)

// NewTensor is an in-memory, contiguous tensor of values stored as dtype ("float32", "float16"
// or "float64"), for Save.
func NewTensor(dtype string, shape []int64, values []float32) (*Tensor, error) {
	var size int64
	var cls string
	switch dtype {
	case "float32":
		size, cls = 4, "FloatStorage"
	case "float16":
		size, cls = 2, "HalfStorage"
	case "float64":
		size, cls = 8, "DoubleStorage"
	default:
		return nil, fmt.Errorf("%w: NewTensor of dtype %s", ErrUnsupported, dtype)
	}
	t := &Tensor{DType: dtype, Shape: shape, Stride: make([]int64, len(shape))}
	if n := t.NumElements(); n != int64(len(values)) {
		return nil, fmt.Errorf("%w: %d values for shape %v", ErrFormat, len(values), shape)
	}
	st := int64(1)
	for i := len(shape) - 1; i >= 0; i-- {
		t.Stride[i] = st
		st *= shape[i]
	}
	mem := make([]byte, int64(len(values))*size)
	for i, v := range values {
		switch dtype {
		case "float32":
			binary.LittleEndian.PutUint32(mem[4*i:], math.Float32bits(v))
		case "float16":
			binary.LittleEndian.PutUint16(mem[2*i:], half.FromFloat64(float64(v)))
		case "float64":
			binary.LittleEndian.PutUint64(mem[8*i:], math.Float64bits(float64(v)))
		}
	}
	t.st = &storage{dtype: dtype, size: size, numel: int64(len(values)), mem: mem, class: cls}
	return t, nil
}

// Save writes root as a torch.save zip (archive/data.pkl, pickle protocol 2, and one stored
// entry per storage), the way torch >= 1.6 does. root may hold *Dict, Tuple, *List, string,
// int64, int, float64, bool, nil, *Object (written as cls.__new__ + BUILD(state), like
// argparse.Namespace) and *Tensor values from NewTensor or from an open File. A *Dict whose
// values are all tensors is written as a collections.OrderedDict, as state dicts are.
func Save(w io.Writer, root any) error {
	p := &pickler{memo: map[Global]int{}, keys: map[*storage]string{}}
	p.buf.WriteString("\x80\x02")
	if err := p.value(root); err != nil {
		return err
	}
	p.buf.WriteByte('.')
	zw := zip.NewWriter(w)
	put := func(name string, data []byte) error {
		fw, err := zw.CreateHeader(&zip.FileHeader{Name: "archive/" + name, Method: zip.Store})
		if err == nil {
			_, err = fw.Write(data)
		}
		return err
	}
	if err := put("data.pkl", p.buf.Bytes()); err != nil {
		return err
	}
	if err := put("byteorder", []byte("little")); err != nil {
		return err
	}
	for _, st := range p.order {
		data := st.mem
		if data == nil {
			var err error
			if data, err = st.read(0, st.numel); err != nil {
				return err
			}
		}
		if err := put("data/"+p.keys[st], data); err != nil {
			return err
		}
	}
	if err := put("version", []byte("3\n")); err != nil {
		return err
	}
	return zw.Close()
}

type pickler struct {
	buf   bytes.Buffer
	memo  map[Global]int
	keys  map[*storage]string
	order []*storage
}

func (p *pickler) global(g Global) {
	if i, ok := p.memo[g]; ok {
		p.buf.WriteByte('h')
		p.buf.WriteByte(byte(i))
		return
	}
	fmt.Fprintf(&p.buf, "c%s\n%s\n", g.Module, g.Name)
	if i := len(p.memo); i < 256 {
		p.memo[g] = i
		p.buf.WriteByte('q')
		p.buf.WriteByte(byte(i))
	}
}

func (p *pickler) str(s string) {
	p.buf.WriteByte('X')
	_ = binary.Write(&p.buf, binary.LittleEndian, uint32(len(s)))
	p.buf.WriteString(s)
}

func (p *pickler) int(v int64) {
	switch {
	case v >= 0 && v < 256:
		p.buf.WriteByte('K')
		p.buf.WriteByte(byte(v))
	case v >= math.MinInt32 && v <= math.MaxInt32:
		p.buf.WriteByte('J')
		_ = binary.Write(&p.buf, binary.LittleEndian, int32(v))
	default:
		p.buf.WriteByte(0x8a)
		p.buf.WriteByte(8)
		_ = binary.Write(&p.buf, binary.LittleEndian, v)
	}
}

func (p *pickler) tuple(items ...any) error {
	p.buf.WriteByte('(')
	for _, it := range items {
		if err := p.value(it); err != nil {
			return err
		}
	}
	p.buf.WriteByte('t')
	return nil
}

func (p *pickler) value(v any) error {
	switch x := v.(type) {
	case nil:
		p.buf.WriteByte('N')
	case bool:
		if x {
			p.buf.WriteByte(0x88)
		} else {
			p.buf.WriteByte(0x89)
		}
	case int:
		p.int(int64(x))
	case int64:
		p.int(x)
	case float64:
		p.buf.WriteByte('G')
		_ = binary.Write(&p.buf, binary.BigEndian, math.Float64bits(x))
	case string:
		p.str(x)
	case Tuple:
		return p.tuple(x...)
	case *List:
		p.buf.WriteString("](")
		for _, it := range x.Items {
			if err := p.value(it); err != nil {
				return err
			}
		}
		p.buf.WriteByte('e')
	case *Dict:
		if len(tensorDict(x)) == len(x.Keys) && len(x.Keys) > 0 {
			p.global(Global{"collections", "OrderedDict"})
			p.buf.WriteString(")R")
		} else {
			p.buf.WriteByte('}')
		}
		p.buf.WriteByte('(')
		for i, k := range x.Keys {
			if err := p.value(k); err != nil {
				return err
			}
			if err := p.value(x.Values[i]); err != nil {
				return err
			}
		}
		p.buf.WriteByte('u')
	case *Object:
		p.global(x.Class)
		if err := p.tuple(x.Args...); err != nil {
			return err
		}
		p.buf.WriteByte(0x81) // NEWOBJ
		if x.State != nil {
			if err := p.value(x.State); err != nil {
				return err
			}
			p.buf.WriteByte('b')
		}
	case *Tensor:
		key, ok := p.keys[x.st]
		if !ok {
			key = strconv.Itoa(len(p.order))
			p.keys[x.st] = key
			p.order = append(p.order, x.st)
		}
		cls := x.st.class
		if cls == "" {
			for name, ty := range storageTypes {
				if ty.dtype == x.st.dtype {
					cls = name
				}
			}
		}
		p.global(Global{"torch._utils", "_rebuild_tensor_v2"})
		p.buf.WriteByte('(')
		p.buf.WriteByte('(')
		p.str("storage")
		p.global(Global{"torch", cls})
		p.str(key)
		p.str("cpu")
		p.int(x.st.numel)
		p.buf.WriteString("tQ") // TUPLE, BINPERSID
		p.int(x.Offset)
		shape, stride := make(Tuple, len(x.Shape)), make(Tuple, len(x.Stride))
		for i := range x.Shape {
			shape[i], stride[i] = x.Shape[i], x.Stride[i]
		}
		if err := p.tuple(shape...); err != nil {
			return err
		}
		if err := p.tuple(stride...); err != nil {
			return err
		}
		p.buf.WriteByte(0x89)
		p.global(Global{"collections", "OrderedDict"})
		p.buf.WriteString(")R")
		p.buf.WriteString("tR")
	default:
		return fmt.Errorf("%w: Save of a %T", ErrUnsupported, v)
	}
	return nil
}
