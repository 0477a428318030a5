// Package safetensors reads (and, for tests and tools, writes) the safetensors format of Hugging
// Face checkpoints: an 8-byte little-endian header length N, N bytes of JSON
// {name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {...}}, then the raw
// little-endian tensor data, offsets relative to its start. Float tensors (F32, F16, BF16, F64)
// read as float32. Nothing is read until a tensor is asked for; a bad header is an error, never a
// panic (the parser is fuzzed).
package safetensors

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"slices"
	"strings"

	"github.com/seqembed/seqembed/internal/half"
)

var (
	// ErrFormat: the file is not a well-formed safetensors file (header, offsets, truncation).
	ErrFormat = errors.New("safetensors: bad file")
	// ErrDType: the tensor's dtype cannot be read as float32.
	ErrDType = errors.New("safetensors: unsupported dtype")
	// ErrNotFound: no tensor of that name.
	ErrNotFound = errors.New("safetensors: no such tensor")
)

// MaxHeaderSize is the largest header accepted (the reference implementation's limit).
const MaxHeaderSize = 100_000_000

// dtypeSizes are the element sizes of the dtypes the format defines.
var dtypeSizes = map[string]int64{
	"BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1,
	"I16": 2, "U16": 2, "F16": 2, "BF16": 2,
	"I32": 4, "U32": 4, "F32": 4,
	"I64": 8, "U64": 8, "F64": 8,
}

// TensorInfo is one header entry.
type TensorInfo struct {
	Name  string
	DType string
	Shape []int64
	// Begin and End are byte offsets into the data section.
	Begin, End int64
}

// NumElements is the product of Shape (1 for a scalar).
func (t TensorInfo) NumElements() int64 {
	n := int64(1)
	for _, d := range t.Shape {
		n *= d
	}
	return n
}

// Header is a parsed header: tensors in data order, and the free-form metadata.
type Header struct {
	Tensors  []TensorInfo
	Metadata map[string]string
}

type entry struct {
	DType       string  `json:"dtype"`
	Shape       []int64 `json:"shape"`
	DataOffsets []int64 `json:"data_offsets"`
}

// ParseHeader parses the JSON header of a file whose data section is dataLen bytes long, checking
// every entry: a known dtype, non-negative dimensions, offsets inside the data, a byte length
// that matches shape × element size, and no two tensors overlapping.
func ParseHeader(js []byte, dataLen int64) (*Header, error) {
	var raw map[string]json.RawMessage
	if err := json.Unmarshal(js, &raw); err != nil {
		return nil, fmt.Errorf("%w: header JSON: %v", ErrFormat, err)
	}
	h := &Header{}
	for name, msg := range raw {
		if name == "__metadata__" {
			if err := json.Unmarshal(msg, &h.Metadata); err != nil {
				return nil, fmt.Errorf("%w: __metadata__: %v (want string values)", ErrFormat, err)
			}
			continue
		}
		var e entry
		if err := json.Unmarshal(msg, &e); err != nil {
			return nil, fmt.Errorf("%w: tensor %q: %v", ErrFormat, name, err)
		}
		size, ok := dtypeSizes[e.DType]
		if !ok {
			return nil, fmt.Errorf("%w: tensor %q: unknown dtype %q", ErrFormat, name, e.DType)
		}
		if len(e.DataOffsets) != 2 {
			return nil, fmt.Errorf("%w: tensor %q: data_offsets %v (want [begin, end])", ErrFormat, name, e.DataOffsets)
		}
		t := TensorInfo{Name: name, DType: e.DType, Shape: e.Shape, Begin: e.DataOffsets[0], End: e.DataOffsets[1]}
		if t.Shape == nil {
			t.Shape = []int64{}
		}
		n := int64(1)
		for _, d := range t.Shape {
			if d < 0 {
				return nil, fmt.Errorf("%w: tensor %q: negative dimension in shape %v", ErrFormat, name, t.Shape)
			}
			if d != 0 && n > math.MaxInt64/size/d {
				return nil, fmt.Errorf("%w: tensor %q: shape %v too large", ErrFormat, name, t.Shape)
			}
			n *= d
		}
		if t.Begin < 0 || t.End < t.Begin || t.End > dataLen {
			return nil, fmt.Errorf("%w: tensor %q: data_offsets [%d, %d] outside the %d-byte data section (truncated file?)",
				ErrFormat, name, t.Begin, t.End, dataLen)
		}
		if t.End-t.Begin != n*size {
			return nil, fmt.Errorf("%w: tensor %q: %s %v needs %d bytes, data_offsets give %d",
				ErrFormat, name, t.DType, t.Shape, n*size, t.End-t.Begin)
		}
		h.Tensors = append(h.Tensors, t)
	}
	slices.SortFunc(h.Tensors, func(a, b TensorInfo) int {
		if c := a.Begin - b.Begin; c != 0 {
			if c < 0 {
				return -1
			}
			return 1
		}
		return strings.Compare(a.Name, b.Name)
	})
	for i := 1; i < len(h.Tensors); i++ {
		if a, b := h.Tensors[i-1], h.Tensors[i]; b.Begin < a.End {
			return nil, fmt.Errorf("%w: tensors %q and %q overlap", ErrFormat, a.Name, b.Name)
		}
	}
	return h, nil
}

// File is an open safetensors file.
type File struct {
	r         io.ReaderAt
	closer    io.Closer
	path      string
	dataStart int64
	header    *Header
	byName    map[string]int
}

// Open opens and parses path; tensors are read on demand. Close it when done.
func Open(path string) (*File, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, err
	}
	sf, err := NewReader(f, st.Size())
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	sf.closer, sf.path = f, path
	return sf, nil
}

// NewReader parses the safetensors file of size bytes that r reads.
func NewReader(r io.ReaderAt, size int64) (*File, error) {
	var lenBuf [8]byte
	if size < 8 {
		return nil, fmt.Errorf("%w: %d bytes, shorter than the 8-byte header length", ErrFormat, size)
	}
	if _, err := r.ReadAt(lenBuf[:], 0); err != nil {
		return nil, fmt.Errorf("%w: reading the header length: %v", ErrFormat, err)
	}
	n := binary.LittleEndian.Uint64(lenBuf[:])
	if n > MaxHeaderSize {
		return nil, fmt.Errorf("%w: header length %d over the %d limit (not a safetensors file?)", ErrFormat, n, MaxHeaderSize)
	}
	if int64(n) > size-8 {
		return nil, fmt.Errorf("%w: header length %d but only %d bytes follow (truncated file?)", ErrFormat, n, size-8)
	}
	js := make([]byte, n)
	if _, err := r.ReadAt(js, 8); err != nil {
		return nil, fmt.Errorf("%w: reading the header: %v", ErrFormat, err)
	}
	h, err := ParseHeader(js, size-8-int64(n))
	if err != nil {
		return nil, err
	}
	f := &File{r: r, dataStart: 8 + int64(n), header: h, byName: make(map[string]int, len(h.Tensors))}
	for i, t := range h.Tensors {
		f.byName[t.Name] = i
	}
	return f, nil
}

// Path is the file's path ("" for NewReader).
func (f *File) Path() string { return f.path }

// Tensors lists the file's tensors in data order.
func (f *File) Tensors() []TensorInfo { return f.header.Tensors }

// Metadata is the header's __metadata__ (nil when absent).
func (f *File) Metadata() map[string]string { return f.header.Metadata }

// Lookup is the named tensor's header entry.
func (f *File) Lookup(name string) (TensorInfo, bool) {
	i, ok := f.byName[name]
	if !ok {
		return TensorInfo{}, false
	}
	return f.header.Tensors[i], true
}

// Float32 reads the named tensor as float32 values (row-major). F16, BF16 and F64 are converted.
func (f *File) Float32(name string) ([]float32, error) {
	t, ok := f.Lookup(name)
	if !ok {
		return nil, fmt.Errorf("%w: %q", ErrNotFound, name)
	}
	size := dtypeSizes[t.DType]
	switch t.DType {
	case "F32", "F16", "BF16", "F64":
	default:
		return nil, fmt.Errorf("%w: tensor %q is %s (want F32, F16, BF16 or F64)", ErrDType, name, t.DType)
	}
	buf := make([]byte, t.End-t.Begin)
	if _, err := f.r.ReadAt(buf, f.dataStart+t.Begin); err != nil {
		return nil, fmt.Errorf("%w: reading tensor %q: %v", ErrFormat, name, err)
	}
	out := make([]float32, int64(len(buf))/size)
	DecodeFloat32(out, buf, t.DType)
	return out, nil
}

// DecodeFloat32 converts little-endian values of dtype (F32, F16, BF16 or F64) from src into dst
// (len(dst) elements). Other dtypes leave dst unchanged.
func DecodeFloat32(dst []float32, src []byte, dtype string) {
	half.DecodeLE(dst, src, map[string]half.Kind{"F32": half.F32, "F16": half.F16, "BF16": half.BF16, "F64": half.F64}[dtype])
}

// Close closes the file (a no-op for NewReader's).
func (f *File) Close() error {
	if f.closer == nil {
		return nil
	}
	return f.closer.Close()
}

// Tensor is one tensor to Write: Data holds its little-endian bytes (NumElements × dtype size).
type Tensor struct {
	Name  string
	DType string
	Shape []int64
	Data  []byte
}

// F32 is a float32 Tensor of values.
func F32(name string, shape []int64, values []float32) Tensor {
	b := make([]byte, 4*len(values))
	for i, v := range values {
		binary.LittleEndian.PutUint32(b[4*i:], math.Float32bits(v))
	}
	return Tensor{Name: name, DType: "F32", Shape: shape, Data: b}
}

// Write writes tensors (in order) and metadata as a safetensors file. The header is padded with
// spaces to a multiple of 8 bytes, as the reference writer does.
func Write(w io.Writer, tensors []Tensor, metadata map[string]string) error {
	hdr := make(map[string]any, len(tensors)+1)
	if metadata != nil {
		hdr["__metadata__"] = metadata
	}
	var off int64
	for _, t := range tensors {
		size, ok := dtypeSizes[t.DType]
		if !ok {
			return fmt.Errorf("%w: tensor %q: unknown dtype %q", ErrDType, t.Name, t.DType)
		}
		ti := TensorInfo{Shape: t.Shape}
		if want := ti.NumElements() * size; int64(len(t.Data)) != want {
			return fmt.Errorf("%w: tensor %q: %d data bytes for %s %v (want %d)", ErrFormat, t.Name, len(t.Data), t.DType, t.Shape, want)
		}
		shape := t.Shape
		if shape == nil {
			shape = []int64{}
		}
		hdr[t.Name] = entry{DType: t.DType, Shape: shape, DataOffsets: []int64{off, off + int64(len(t.Data))}}
		off += int64(len(t.Data))
	}
	js, err := json.Marshal(hdr)
	if err != nil {
		return err
	}
	for len(js)%8 != 0 {
		js = append(js, ' ')
	}
	var lenBuf [8]byte
	binary.LittleEndian.PutUint64(lenBuf[:], uint64(len(js)))
	if _, err := w.Write(lenBuf[:]); err != nil {
		return err
	}
	if _, err := w.Write(js); err != nil {
		return err
	}
	for _, t := range tensors {
		if _, err := w.Write(t.Data); err != nil {
			return err
		}
	}
	return nil
}
