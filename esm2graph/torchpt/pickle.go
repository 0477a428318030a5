package torchpt

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"math"
	"math/big"
	"strconv"
	"strings"
)

// The values an unpickled object is made of. Nothing is ever executed: a class or function the
// reader does not know is kept as a Global, and calling or instantiating it gives an *Object that
// records what the pickle asked for.
type (
	// Tuple is a Python tuple.
	Tuple []any
	// List is a Python list (a pointer: pickles append to lists after creating them).
	List struct{ Items []any }
	// Set is a Python set or frozenset.
	Set struct{ Items []any }
	// Dict is a Python dict (or collections.OrderedDict), in insertion order.
	Dict struct {
		Keys, Values []any
	}
	// Global is a class or function reference (module, name).
	Global struct{ Module, Name string }
	// Object is an instance of a class the reader does not model: what was called (Class), its
	// arguments, and the state BUILD gave it (argparse.Namespace, omegaconf configs: a *Dict).
	Object struct {
		Class Global
		Args  []any
		State any
	}
	// Bytes is a Python bytes or bytearray value.
	Bytes []byte
)

// Get is d[key] for a string key.
func (d *Dict) Get(key string) (any, bool) {
	for i, k := range d.Keys {
		if s, ok := k.(string); ok && s == key {
			return d.Values[i], true
		}
	}
	return nil, false
}

func (d *Dict) set(k, v any) {
	for i, old := range d.Keys {
		if keyEqual(old, k) {
			d.Values[i] = v
			return
		}
	}
	d.Keys = append(d.Keys, k)
	d.Values = append(d.Values, v)
}

func keyEqual(a, b any) bool {
	switch a := a.(type) {
	case string, int64, bool, float64, nil:
		return a == b
	}
	return false
}

// unpickler is a pickle virtual machine for protocols 0–5 (the opcodes torch.save and pickle
// write for data; EXT* and out-of-band buffers are refused). persistent resolves BINPERSID ids;
// reduce may build known types (tensors, OrderedDict) from a call.
type unpickler struct {
	data       []byte
	pos        int
	stack      []any
	marks      []int
	memo       map[int64]any
	persistent func(pid any) (any, error)
	reduce     func(g Global, args Tuple) (any, bool, error)
}

func (u *unpickler) errf(format string, args ...any) error {
	return fmt.Errorf("%w: pickle at byte %d: %s", ErrFormat, u.pos, fmt.Sprintf(format, args...))
}

func (u *unpickler) read(n int) ([]byte, error) {
	if n < 0 || n > len(u.data)-u.pos {
		return nil, u.errf("wants %d bytes, %d left (truncated?)", n, len(u.data)-u.pos)
	}
	b := u.data[u.pos : u.pos+n]
	u.pos += n
	return b, nil
}

func (u *unpickler) line() (string, error) {
	i := bytes.IndexByte(u.data[u.pos:], '\n')
	if i < 0 {
		return "", u.errf("unterminated line")
	}
	s := string(u.data[u.pos : u.pos+i])
	u.pos += i + 1
	return s, nil
}

func (u *unpickler) uint(n int) (uint64, error) {
	b, err := u.read(n)
	if err != nil {
		return 0, err
	}
	var v uint64
	for i := n - 1; i >= 0; i-- {
		v = v<<8 | uint64(b[i])
	}
	return v, nil
}

func (u *unpickler) push(v any) { u.stack = append(u.stack, v) }

func (u *unpickler) pop() (any, error) {
	if len(u.stack) == 0 || (len(u.marks) > 0 && len(u.stack) <= u.marks[len(u.marks)-1]) {
		return nil, u.errf("stack underflow")
	}
	v := u.stack[len(u.stack)-1]
	u.stack = u.stack[:len(u.stack)-1]
	return v, nil
}

func (u *unpickler) top() (any, error) {
	if len(u.stack) == 0 || (len(u.marks) > 0 && len(u.stack) <= u.marks[len(u.marks)-1]) {
		return nil, u.errf("stack underflow")
	}
	return u.stack[len(u.stack)-1], nil
}

// popMark pops everything above the last MARK.
func (u *unpickler) popMark() ([]any, error) {
	if len(u.marks) == 0 {
		return nil, u.errf("no MARK")
	}
	m := u.marks[len(u.marks)-1]
	u.marks = u.marks[:len(u.marks)-1]
	items := append([]any(nil), u.stack[m:]...)
	u.stack = u.stack[:m]
	return items, nil
}

func (u *unpickler) memoize(idx int64) error {
	v, err := u.top()
	if err != nil {
		return err
	}
	u.memo[idx] = v
	return nil
}

func (u *unpickler) get(idx int64) error {
	v, ok := u.memo[idx]
	if !ok {
		return u.errf("memo %d not set", idx)
	}
	u.push(v)
	return nil
}

// call is callable(*args), for REDUCE, NEWOBJ, INST and OBJ.
func (u *unpickler) call(callable any, args Tuple) (any, error) {
	g, ok := callable.(Global)
	if !ok {
		return nil, u.errf("call of a %T, not a class or function", callable)
	}
	if u.reduce != nil {
		v, ok, err := u.reduce(g, args)
		if err != nil {
			return nil, err
		}
		if ok {
			return v, nil
		}
	}
	switch g {
	case Global{"collections", "OrderedDict"}, Global{"builtins", "dict"}, Global{"__builtin__", "dict"}:
		if len(args) == 0 {
			return &Dict{}, nil
		}
	case Global{"builtins", "set"}, Global{"builtins", "frozenset"}:
		if len(args) == 0 {
			return &Set{}, nil
		}
	case Global{"copyreg", "_reconstructor"}, Global{"copy_reg", "_reconstructor"}:
		if len(args) >= 1 {
			if cls, ok := args[0].(Global); ok {
				return &Object{Class: cls}, nil
			}
		}
	}
	return &Object{Class: g, Args: args}, nil
}

func (u *unpickler) setItems(target any, kv []any) error {
	d, ok := target.(*Dict)
	if !ok {
		// SETITEM(S) on an object: instance dict items (rare); keep them as its state.
		o, isObj := target.(*Object)
		if !isObj {
			return u.errf("SETITEMS on a %T", target)
		}
		st, _ := o.State.(*Dict)
		if st == nil {
			st = &Dict{}
			o.State = st
		}
		d = st
	}
	if len(kv)%2 != 0 {
		return u.errf("SETITEMS with an odd number of values")
	}
	for i := 0; i < len(kv); i += 2 {
		d.set(kv[i], kv[i+1])
	}
	return nil
}

func (u *unpickler) appendItems(target any, items []any) error {
	switch t := target.(type) {
	case *List:
		t.Items = append(t.Items, items...)
	case *Set:
		t.Items = append(t.Items, items...)
	case *Object: // a list subclass
		t.Args = append(t.Args, items...)
	default:
		return u.errf("APPEND to a %T", target)
	}
	return nil
}

// run executes the pickle until STOP and returns the result.
func (u *unpickler) run() (any, error) {
	for {
		if u.pos >= len(u.data) {
			return nil, u.errf("no STOP opcode (truncated?)")
		}
		op := u.data[u.pos]
		u.pos++
		var err error
		switch op {
		case 0x80: // PROTO
			_, err = u.read(1)
		case 0x95: // FRAME
			_, err = u.read(8)
		case '.': // STOP
			v, err := u.pop()
			if err != nil {
				return nil, err
			}
			return v, nil
		case '(': // MARK
			u.marks = append(u.marks, len(u.stack))
		case '0': // POP
			_, err = u.pop()
		case '1': // POP_MARK
			_, err = u.popMark()
		case '2': // DUP
			var v any
			if v, err = u.top(); err == nil {
				u.push(v)
			}
		case 'N':
			u.push(nil)
		case 0x88:
			u.push(true)
		case 0x89:
			u.push(false)
		case 'J': // BININT
			var v uint64
			if v, err = u.uint(4); err == nil {
				u.push(int64(int32(uint32(v))))
			}
		case 'K': // BININT1
			var v uint64
			if v, err = u.uint(1); err == nil {
				u.push(int64(v))
			}
		case 'M': // BININT2
			var v uint64
			if v, err = u.uint(2); err == nil {
				u.push(int64(v))
			}
		case 0x8a, 0x8b: // LONG1, LONG4
			n := uint64(0)
			if op == 0x8a {
				n, err = u.uint(1)
			} else {
				n, err = u.uint(4)
			}
			var b []byte
			if err == nil {
				b, err = u.read(int(min(n, math.MaxInt32)))
			}
			if err == nil {
				u.push(decodeLong(b))
			}
		case 'I', 'L': // INT, LONG (text)
			var s string
			if s, err = u.line(); err == nil {
				err = u.pushIntText(strings.TrimSuffix(s, "L"))
			}
		case 'G': // BINFLOAT (big-endian)
			var b []byte
			if b, err = u.read(8); err == nil {
				u.push(math.Float64frombits(binary.BigEndian.Uint64(b)))
			}
		case 'F': // FLOAT (text)
			var s string
			if s, err = u.line(); err == nil {
				var f float64
				if f, err = strconv.ParseFloat(s, 64); err != nil {
					err = u.errf("FLOAT %q", s)
				} else {
					u.push(f)
				}
			}
		case 'X', 0x8c, 0x8d, 'T', 'U', 'B', 'C', 0x8e, 0x96: // (SHORT_)BIN(UNICODE|STRING|BYTES)(8), BYTEARRAY8
			size := map[byte]int{'X': 4, 0x8c: 1, 0x8d: 8, 'T': 4, 'U': 1, 'B': 4, 'C': 1, 0x8e: 8, 0x96: 8}[op]
			var n uint64
			var b []byte
			if n, err = u.uint(size); err == nil {
				if n > uint64(len(u.data)) {
					err = u.errf("string of %d bytes in a %d-byte pickle", n, len(u.data))
				} else {
					b, err = u.read(int(n))
				}
			}
			if err == nil {
				switch op {
				case 'B', 'C', 0x8e, 0x96:
					u.push(Bytes(append([]byte(nil), b...)))
				default:
					u.push(string(b))
				}
			}
		case ']':
			u.push(&List{})
		case 'l': // LIST
			var items []any
			if items, err = u.popMark(); err == nil {
				u.push(&List{Items: items})
			}
		case 'a': // APPEND
			var v, l any
			if v, err = u.pop(); err == nil {
				if l, err = u.top(); err == nil {
					err = u.appendItems(l, []any{v})
				}
			}
		case 'e': // APPENDS
			var items []any
			if items, err = u.popMark(); err == nil {
				var l any
				if l, err = u.top(); err == nil {
					err = u.appendItems(l, items)
				}
			}
		case ')':
			u.push(Tuple{})
		case 't': // TUPLE
			var items []any
			if items, err = u.popMark(); err == nil {
				u.push(Tuple(items))
			}
		case 0x85, 0x86, 0x87: // TUPLE1..3
			n := int(op - 0x84)
			if len(u.stack) < n || (len(u.marks) > 0 && len(u.stack)-n < u.marks[len(u.marks)-1]) {
				err = u.errf("stack underflow")
				break
			}
			t := append(Tuple(nil), u.stack[len(u.stack)-n:]...)
			u.stack = u.stack[:len(u.stack)-n]
			u.push(t)
		case '}':
			u.push(&Dict{})
		case 'd': // DICT
			var items []any
			if items, err = u.popMark(); err == nil {
				d := &Dict{}
				if err = u.setItems(d, items); err == nil {
					u.push(d)
				}
			}
		case 's': // SETITEM
			var k, v, d any
			if v, err = u.pop(); err == nil {
				if k, err = u.pop(); err == nil {
					if d, err = u.top(); err == nil {
						err = u.setItems(d, []any{k, v})
					}
				}
			}
		case 'u': // SETITEMS
			var items []any
			if items, err = u.popMark(); err == nil {
				var d any
				if d, err = u.top(); err == nil {
					err = u.setItems(d, items)
				}
			}
		case 0x8f: // EMPTY_SET
			u.push(&Set{})
		case 0x90: // ADDITEMS
			var items []any
			if items, err = u.popMark(); err == nil {
				var s any
				if s, err = u.top(); err == nil {
					err = u.appendItems(s, items)
				}
			}
		case 0x91: // FROZENSET
			var items []any
			if items, err = u.popMark(); err == nil {
				u.push(&Set{Items: items})
			}
		case 'c': // GLOBAL
			var mod, name string
			if mod, err = u.line(); err == nil {
				if name, err = u.line(); err == nil {
					u.push(Global{mod, name})
				}
			}
		case 0x93: // STACK_GLOBAL
			var mod, name any
			if name, err = u.pop(); err == nil {
				if mod, err = u.pop(); err == nil {
					m, ok1 := mod.(string)
					n, ok2 := name.(string)
					if !ok1 || !ok2 {
						err = u.errf("STACK_GLOBAL of %T, %T", mod, name)
					} else {
						u.push(Global{m, n})
					}
				}
			}
		case 'R': // REDUCE
			var args, fn any
			if args, err = u.pop(); err == nil {
				if fn, err = u.pop(); err == nil {
					t, ok := args.(Tuple)
					if !ok {
						err = u.errf("REDUCE with %T arguments", args)
						break
					}
					var v any
					if v, err = u.call(fn, t); err == nil {
						u.push(v)
					}
				}
			}
		case 0x81: // NEWOBJ
			var args, cls any
			if args, err = u.pop(); err == nil {
				if cls, err = u.pop(); err == nil {
					t, _ := args.(Tuple)
					var v any
					if v, err = u.call(cls, t); err == nil {
						u.push(v)
					}
				}
			}
		case 0x92: // NEWOBJ_EX
			var kw, args, cls any
			if kw, err = u.pop(); err == nil {
				if args, err = u.pop(); err == nil {
					if cls, err = u.pop(); err == nil {
						t, _ := args.(Tuple)
						var v any
						if v, err = u.call(cls, t); err == nil {
							if o, ok := v.(*Object); ok && kw != nil {
								o.Args = append(o.Args, kw)
							}
							u.push(v)
						}
					}
				}
			}
		case 'i': // INST
			var mod, name string
			if mod, err = u.line(); err == nil {
				if name, err = u.line(); err == nil {
					var items []any
					if items, err = u.popMark(); err == nil {
						var v any
						if v, err = u.call(Global{mod, name}, Tuple(items)); err == nil {
							u.push(v)
						}
					}
				}
			}
		case 'o': // OBJ
			var items []any
			if items, err = u.popMark(); err == nil {
				if len(items) == 0 {
					err = u.errf("OBJ without a class")
					break
				}
				var v any
				if v, err = u.call(items[0], Tuple(items[1:])); err == nil {
					u.push(v)
				}
			}
		case 'b': // BUILD
			var state, obj any
			if state, err = u.pop(); err == nil {
				if obj, err = u.top(); err == nil {
					if o, ok := obj.(*Object); ok {
						o.State = state
					} // dicts (OrderedDict's _metadata), tensors: state dropped
				}
			}
		case 'p': // PUT
			var s string
			if s, err = u.line(); err == nil {
				var i int64
				if i, err = strconv.ParseInt(s, 10, 64); err != nil {
					err = u.errf("PUT %q", s)
				} else {
					err = u.memoize(i)
				}
			}
		case 'q', 'r': // BINPUT, LONG_BINPUT
			var i uint64
			if i, err = u.uint(map[byte]int{'q': 1, 'r': 4}[op]); err == nil {
				err = u.memoize(int64(i))
			}
		case 0x94: // MEMOIZE
			err = u.memoize(int64(len(u.memo)))
		case 'g': // GET
			var s string
			if s, err = u.line(); err == nil {
				var i int64
				if i, err = strconv.ParseInt(s, 10, 64); err != nil {
					err = u.errf("GET %q", s)
				} else {
					err = u.get(i)
				}
			}
		case 'h', 'j': // BINGET, LONG_BINGET
			var i uint64
			if i, err = u.uint(map[byte]int{'h': 1, 'j': 4}[op]); err == nil {
				err = u.get(int64(i))
			}
		case 'Q', 'P': // BINPERSID, PERSID
			var pid any
			if op == 'Q' {
				pid, err = u.pop()
			} else {
				pid, err = u.line()
			}
			if err == nil {
				if u.persistent == nil {
					err = u.errf("persistent id without a loader")
					break
				}
				var v any
				if v, err = u.persistent(pid); err == nil {
					u.push(v)
				}
			}
		default:
			return nil, u.errf("unsupported opcode %#02x", op)
		}
		if err != nil {
			return nil, err
		}
	}
}

func (u *unpickler) pushIntText(s string) error {
	switch s {
	case "00":
		u.push(false)
		return nil
	case "01":
		u.push(true)
		return nil
	}
	if v, err := strconv.ParseInt(s, 10, 64); err == nil {
		u.push(v)
		return nil
	}
	b, ok := new(big.Int).SetString(s, 10)
	if !ok {
		return u.errf("INT %q", s)
	}
	u.push(b)
	return nil
}

// decodeLong is a little-endian two's-complement integer: int64 when it fits, else *big.Int.
func decodeLong(b []byte) any {
	if len(b) == 0 {
		return int64(0)
	}
	if len(b) <= 8 {
		var v int64
		for i := len(b) - 1; i >= 0; i-- {
			v = v<<8 | int64(b[i])
		}
		shift := uint(64 - 8*len(b))
		return v << shift >> shift
	}
	be := make([]byte, len(b))
	for i := range b {
		be[len(b)-1-i] = b[i]
	}
	v := new(big.Int).SetBytes(be)
	if b[len(b)-1]&0x80 != 0 {
		v.Sub(v, new(big.Int).Lsh(big.NewInt(1), uint(8*len(b))))
	}
	return v
}
