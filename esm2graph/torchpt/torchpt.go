// Package torchpt reads PyTorch checkpoints written by torch.save (the zip format of torch >= 1.6:
// ARCHIVE/data.pkl, a pickle whose tensors refer by persistent id to the raw storages
// ARCHIVE/data/KEY): fair-esm .pt files and Hugging Face pytorch_model.bin alike.
//
// The pickle is read by this package's own small virtual machine, which only builds data: dicts,
// lists, tuples, strings, numbers, tensors (torch._utils._rebuild_tensor_v2 and
// _rebuild_parameter), and an opaque *Object for any other class (argparse.Namespace, omegaconf
// configs), with the state the pickle gave it. Nothing in the file is executed, unlike
// torch.load without weights_only. Storages are read when a tensor's values are asked for.
package torchpt

import (
	"archive/zip"
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
	// ErrFormat: not a readable torch.save zip (bad zip, pickle or storage reference).
	ErrFormat = errors.New("torchpt: bad checkpoint")
	// ErrUnsupported: a well-formed file this reader does not handle (legacy format, big-endian
	// data, a dtype that is not a float).
	ErrUnsupported = errors.New("torchpt: unsupported checkpoint")
)

// maxPickle bounds data.pkl (checkpoints' pickles are kilobytes to a few megabytes).
const maxPickle = 1 << 30

// storageTypes maps torch's storage classes to dtype names and element sizes.
var storageTypes = map[string]struct {
	dtype string
	size  int64
}{
	"FloatStorage": {"float32", 4}, "HalfStorage": {"float16", 2}, "BFloat16Storage": {"bfloat16", 2},
	"DoubleStorage": {"float64", 8}, "LongStorage": {"int64", 8}, "IntStorage": {"int32", 4},
	"ShortStorage": {"int16", 2}, "CharStorage": {"int8", 1}, "ByteStorage": {"uint8", 1},
	"BoolStorage": {"bool", 1},
}

type storage struct {
	file  *File
	key   string
	dtype string
	size  int64 // element size
	numel int64
	entry *zip.File // in a File
	mem   []byte    // NewTensor's
	class string    // NewTensor's storage class
}

// Tensor is a tensor of the checkpoint: its dtype, shape and strides (in elements) and where its
// values are. Values are read by Float32.
type Tensor struct {
	DType  string // "float32", "float16", "bfloat16", "float64", "int64", ...
	Shape  []int64
	Stride []int64
	Offset int64 // storage offset, in elements
	st     *storage
}

// StorageKey is the storage's key (its archive entry data/KEY).
func (t *Tensor) StorageKey() string { return t.st.key }

// NumElements is the product of Shape.
func (t *Tensor) NumElements() int64 {
	n := int64(1)
	for _, d := range t.Shape {
		n *= d
	}
	return n
}

// File is an open torch.save checkpoint.
type File struct {
	path   string
	f      *os.File
	zr     *zip.Reader
	prefix string // "ARCHIVE/"
	// Root is the unpickled object (for a state dict, a *Dict of name → *Tensor).
	Root     any
	storages map[string]*storage
}

// Open reads path's zip directory and pickle. Close it when done.
func Open(path string) (*File, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	tf, err := newFile(path, f)
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return tf, nil
}

func newFile(path string, f *os.File) (*File, error) {
	st, err := f.Stat()
	if err != nil {
		return nil, err
	}
	var magic [4]byte
	if _, err := f.ReadAt(magic[:], 0); err != nil {
		return nil, fmt.Errorf("%w: %d bytes, too short for a checkpoint", ErrFormat, st.Size())
	}
	if string(magic[:]) != "PK\x03\x04" {
		if magic[0] == 0x80 { // a bare pickle: torch's legacy (pre-1.6) format
			return nil, fmt.Errorf("%w: legacy torch serialization (not a zip); re-save it with torch >= 1.6 "+
				"(torch.save(torch.load(f), f2))", ErrUnsupported)
		}
		return nil, fmt.Errorf("%w: not a zip file (magic %q)", ErrFormat, magic[:])
	}
	zr, err := zip.NewReader(f, st.Size())
	if err != nil {
		return nil, fmt.Errorf("%w: zip: %v", ErrFormat, err)
	}
	tf := &File{path: path, f: f, zr: zr, storages: map[string]*storage{}}
	var pkl *zip.File
	for _, e := range zr.File {
		dir, base, ok := strings.Cut(e.Name, "/")
		if ok && base == "data.pkl" {
			if pkl != nil {
				return nil, fmt.Errorf("%w: two pickles (%s, %s)", ErrFormat, pkl.Name, e.Name)
			}
			pkl, tf.prefix = e, dir+"/"
		}
	}
	if pkl == nil {
		return nil, fmt.Errorf("%w: no ARCHIVE/data.pkl entry (not a torch.save file?)", ErrFormat)
	}
	if e := tf.entry("byteorder"); e != nil {
		b, err := readEntry(e, 16)
		if err != nil {
			return nil, err
		}
		if strings.TrimSpace(string(b)) != "little" {
			return nil, fmt.Errorf("%w: byteorder %q (only little-endian data is read)", ErrUnsupported, b)
		}
	}
	data, err := readEntry(pkl, maxPickle)
	if err != nil {
		return nil, err
	}
	u := &unpickler{data: data, memo: map[int64]any{}, persistent: tf.persistentLoad, reduce: tf.rebuild}
	if tf.Root, err = u.run(); err != nil {
		return nil, fmt.Errorf("%s: %w", pkl.Name, err)
	}
	return tf, nil
}

func (f *File) entry(name string) *zip.File {
	for _, e := range f.zr.File {
		if e.Name == f.prefix+name {
			return e
		}
	}
	return nil
}

func readEntry(e *zip.File, limit uint64) ([]byte, error) {
	if e.UncompressedSize64 > limit {
		return nil, fmt.Errorf("%w: %s is %d bytes (limit %d)", ErrFormat, e.Name, e.UncompressedSize64, limit)
	}
	rc, err := e.Open()
	if err != nil {
		return nil, fmt.Errorf("%w: %s: %v", ErrFormat, e.Name, err)
	}
	defer rc.Close()
	b, err := io.ReadAll(io.LimitReader(rc, int64(limit)+1))
	if err != nil {
		return nil, fmt.Errorf("%w: %s: %v", ErrFormat, e.Name, err)
	}
	return b, nil
}

// persistentLoad resolves ('storage', StorageClass, key, location, numel).
func (f *File) persistentLoad(pid any) (any, error) {
	t, ok := pid.(Tuple)
	if !ok || len(t) < 5 {
		return nil, fmt.Errorf("%w: persistent id %v (want a 5-tuple)", ErrFormat, pid)
	}
	if s, _ := t[0].(string); s != "storage" {
		return nil, fmt.Errorf("%w: persistent id kind %v (want storage)", ErrFormat, t[0])
	}
	cls, ok1 := t[1].(Global)
	key, ok2 := t[2].(string)
	numel, ok3 := t[4].(int64)
	if !ok1 || !ok2 || !ok3 || numel < 0 {
		return nil, fmt.Errorf("%w: persistent id %v", ErrFormat, pid)
	}
	if st := f.storages[key]; st != nil {
		return st, nil
	}
	ty, ok := storageTypes[cls.Name]
	if !ok {
		return nil, fmt.Errorf("%w: storage %s of type %s.%s", ErrUnsupported, key, cls.Module, cls.Name)
	}
	e := f.entry("data/" + key)
	if e == nil {
		return nil, fmt.Errorf("%w: storage %s: no entry %sdata/%s", ErrFormat, key, f.prefix, key)
	}
	if numel > math.MaxInt64/ty.size || e.UncompressedSize64 != uint64(numel*ty.size) {
		return nil, fmt.Errorf("%w: storage %s: %d %s elements need %d bytes, its entry has %d (truncated?)",
			ErrFormat, key, numel, ty.dtype, numel*ty.size, e.UncompressedSize64)
	}
	st := &storage{file: f, key: key, dtype: ty.dtype, size: ty.size, numel: numel, entry: e}
	f.storages[key] = st
	return st, nil
}

// rebuild builds tensors from torch._utils' rebuild functions.
func (f *File) rebuild(g Global, args Tuple) (any, bool, error) {
	if g.Module != "torch._utils" {
		return nil, false, nil
	}
	switch g.Name {
	case "_rebuild_tensor_v2", "_rebuild_tensor":
		if len(args) < 4 {
			return nil, false, fmt.Errorf("%w: %s with %d arguments", ErrFormat, g.Name, len(args))
		}
		st, ok := args[0].(*storage)
		if !ok {
			return nil, false, fmt.Errorf("%w: %s of a %T, not a storage", ErrFormat, g.Name, args[0])
		}
		off, ok := args[1].(int64)
		shape, ok1 := ints(args[2])
		stride, ok2 := ints(args[3])
		if !ok || !ok1 || !ok2 || len(shape) != len(stride) || off < 0 {
			return nil, false, fmt.Errorf("%w: %s(offset %v, size %v, stride %v)", ErrFormat, g.Name, args[1], args[2], args[3])
		}
		t := &Tensor{DType: st.dtype, Shape: shape, Stride: stride, Offset: off, st: st}
		if err := t.check(); err != nil {
			return nil, false, err
		}
		return t, true, nil
	case "_rebuild_parameter", "_rebuild_parameter_with_state":
		if len(args) < 1 {
			return nil, false, fmt.Errorf("%w: %s without arguments", ErrFormat, g.Name)
		}
		return args[0], true, nil
	}
	return nil, false, nil
}

func ints(v any) ([]int64, bool) {
	t, ok := v.(Tuple)
	if !ok {
		return nil, false
	}
	out := make([]int64, len(t))
	for i, x := range t {
		if out[i], ok = x.(int64); !ok {
			return nil, false
		}
	}
	return out, true
}

// check makes sure every element the view addresses lies in its storage.
func (t *Tensor) check() error {
	last := t.Offset
	for i, d := range t.Shape {
		if d < 0 || t.Stride[i] < 0 {
			return fmt.Errorf("%w: tensor of size %v, stride %v", ErrFormat, t.Shape, t.Stride)
		}
		if d == 0 {
			return nil
		}
		if d > 1 && t.Stride[i] > (math.MaxInt64-last)/(d-1) {
			return fmt.Errorf("%w: tensor of size %v, stride %v overflows", ErrFormat, t.Shape, t.Stride)
		}
		last += (d - 1) * t.Stride[i]
	}
	if last >= t.st.numel {
		return fmt.Errorf("%w: tensor of size %v, stride %v, offset %d reaches element %d of a %d-element storage",
			ErrFormat, t.Shape, t.Stride, t.Offset, last, t.st.numel)
	}
	return nil
}

// Float32 reads the tensor's values, row-major, as float32 (float16, bfloat16 and float64
// converted), whatever its strides.
func (t *Tensor) Float32() ([]float32, error) {
	switch t.DType {
	case "float32", "float16", "bfloat16", "float64":
	default:
		return nil, fmt.Errorf("%w: tensor of dtype %s (want a float)", ErrUnsupported, t.DType)
	}
	n := t.NumElements()
	if n == 0 {
		return []float32{}, nil
	}
	// The span of storage elements the view touches.
	lo, hi := t.Offset, t.Offset
	for i, d := range t.Shape {
		hi += (d - 1) * t.Stride[i]
	}
	raw, err := t.st.read(lo, hi+1-lo)
	if err != nil {
		return nil, err
	}
	vals := make([]float32, hi+1-lo)
	decode(vals, raw, t.DType)
	if t.contiguous() {
		return vals[:n], nil
	}
	out := make([]float32, n)
	idx := make([]int64, len(t.Shape))
	for k := range out {
		var p int64
		for i, x := range idx {
			p += x * t.Stride[i]
		}
		out[k] = vals[p]
		for i := len(idx) - 1; i >= 0; i-- {
			if idx[i]++; idx[i] < t.Shape[i] {
				break
			}
			idx[i] = 0
		}
	}
	return out, nil
}

func (t *Tensor) contiguous() bool {
	want := int64(1)
	for i := len(t.Shape) - 1; i >= 0; i-- {
		if t.Shape[i] != 1 && t.Stride[i] != want {
			return false
		}
		want *= t.Shape[i]
	}
	return true
}

func decode(dst []float32, src []byte, dtype string) {
	half.DecodeLE(dst, src, map[string]half.Kind{"float32": half.F32, "float16": half.F16, "bfloat16": half.BF16, "float64": half.F64}[dtype])
}

// read returns n elements from element off of the storage: straight from the file when the entry
// is stored uncompressed (as torch.save writes them), else through the decompressor.
func (s *storage) read(off, n int64) ([]byte, error) {
	if s.mem != nil {
		return s.mem[off*s.size : (off+n)*s.size], nil
	}
	buf := make([]byte, n*s.size)
	if s.entry.Method == zip.Store {
		start, err := s.entry.DataOffset()
		if err == nil {
			_, err = s.file.f.ReadAt(buf, start+off*s.size)
		}
		if err != nil {
			return nil, fmt.Errorf("%w: %s: storage %s: %v", ErrFormat, s.file.path, s.key, err)
		}
		return buf, nil
	}
	rc, err := s.entry.Open()
	if err == nil {
		defer rc.Close()
		if _, err = io.CopyN(io.Discard, rc, off*s.size); err == nil {
			_, err = io.ReadFull(rc, buf)
		}
	}
	if err != nil {
		return nil, fmt.Errorf("%w: %s: storage %s: %v", ErrFormat, s.file.path, s.key, err)
	}
	return buf, nil
}

// Path is the file's path.
func (f *File) Path() string { return f.path }

// Close closes the file.
func (f *File) Close() error { return f.f.Close() }

// StateDict finds the name → tensor mapping of a checkpoint: the root itself when it is one
// (pytorch_model.bin), else the first of the root's keys that holds one (fair-esm's "model",
// or "state_dict"). Entries that are not tensors are left out.
func (f *File) StateDict() (map[string]*Tensor, error) {
	if sd := tensorDict(f.Root); len(sd) > 0 {
		return sd, nil
	}
	if d, ok := f.Root.(*Dict); ok {
		for _, k := range []string{"model", "state_dict", "module"} {
			if v, ok := d.Get(k); ok {
				if sd := tensorDict(v); len(sd) > 0 {
					return sd, nil
				}
			}
		}
	}
	return nil, fmt.Errorf("%w: %s: no state dict (tensors by name) at the root or under model/state_dict", ErrFormat, f.path)
}

func tensorDict(v any) map[string]*Tensor {
	d, ok := v.(*Dict)
	if !ok {
		return nil
	}
	out := map[string]*Tensor{}
	for i, k := range d.Keys {
		name, ok1 := k.(string)
		t, ok2 := d.Values[i].(*Tensor)
		if ok1 && ok2 {
			out[name] = t
		}
	}
	return out
}

// Lookup follows a path of keys or attribute names through dicts and objects: a *Dict's key, an
// *Object's state entry (argparse.Namespace's __dict__), or an omegaconf node's _content entry,
// unwrapping omegaconf value nodes (_val) at the end.
func Lookup(v any, path ...string) (any, bool) {
	for _, k := range path {
		var ok bool
		if v, ok = field(v, k); !ok {
			return nil, false
		}
	}
	return unwrap(v), true
}

// field is v's entry k; depth bounds the search (a pickle can make cyclic containers).
func field(v any, k string) (any, bool) { return fieldDepth(v, k, 8) }

func fieldDepth(v any, k string, depth int) (any, bool) {
	if depth == 0 {
		return nil, false
	}
	switch x := v.(type) {
	case *Dict:
		if r, ok := x.Get(k); ok {
			return r, true
		}
		if c, ok := x.Get("_content"); ok { // omegaconf container state
			return fieldDepth(c, k, depth-1)
		}
	case *Object:
		if r, ok := fieldDepth(x.State, k, depth-1); ok {
			return r, true
		}
	case Tuple: // object state given as (dict, slots)
		for _, s := range x {
			if r, ok := fieldDepth(s, k, depth-1); ok {
				return r, true
			}
		}
	}
	return nil, false
}

func unwrap(v any) any {
	for range 8 {
		o, ok := v.(*Object)
		if !ok {
			return v
		}
		val, ok := field(o.State, "_val")
		if !ok {
			return v
		}
		v = val
	}
	return v
}

// Keys lists a *Dict's string keys in order (nil for anything else).
func Keys(v any) []string {
	d, ok := v.(*Dict)
	if !ok {
		return nil
	}
	var out []string
	for _, k := range d.Keys {
		if s, ok := k.(string); ok {
			out = append(out, s)
		}
	}
	return slices.Clip(out)
}
