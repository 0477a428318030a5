package gpurun

/*
#include <stdlib.h>
*/
import "C"

import (
	"fmt"
	"sync"
	"unsafe"
)

// HostAllocator hands out token buffers (input ids and attention mask) in C memory, so that ONNX
// Runtime never holds Go memory. Buffers of up to Capacity elements are pooled and reused; a larger
// request gets a one-off pair that Free releases. It satisfies the batcher's Allocator interface.
// Safe for concurrent use. Close frees every pooled buffer; buffers still out at Close are freed
// when they come back.
type HostAllocator struct {
	capacity int
	mu       sync.Mutex
	free     [][2]unsafe.Pointer
	out      map[unsafe.Pointer]int // ids pointer -> element capacity, for buffers handed out
	closed   bool
}

// NewHostAllocator pools buffer pairs of capacity elements each (normally the batch token budget).
func NewHostAllocator(capacity int) (*HostAllocator, error) {
	if capacity <= 0 {
		return nil, fmt.Errorf("%w: host allocator capacity %d must be > 0", ErrOption, capacity)
	}
	return &HostAllocator{capacity: capacity, out: map[unsafe.Pointer]int{}}, nil
}

// Capacity is the pooled buffers' size in elements.
func (a *HostAllocator) Capacity() int { return a.capacity }

// Alloc returns two int64 slices of n elements backed by C memory. Their contents are unspecified.
func (a *HostAllocator) Alloc(n int) (ids, mask []int64) {
	c := max(n, a.capacity)
	a.mu.Lock()
	var pair [2]unsafe.Pointer
	if c == a.capacity && len(a.free) > 0 {
		pair = a.free[len(a.free)-1]
		a.free = a.free[:len(a.free)-1]
	} else {
		pair = [2]unsafe.Pointer{cMalloc(c * 8), cMalloc(c * 8)}
	}
	a.out[pair[0]] = c
	a.mu.Unlock()
	return unsafe.Slice((*int64)(pair[0]), c)[:n:n], unsafe.Slice((*int64)(pair[1]), c)[:n:n]
}

// Free returns a pair obtained from Alloc. Slices that did not come from this allocator are ignored.
func (a *HostAllocator) Free(ids, mask []int64) {
	if cap(ids) == 0 || cap(mask) == 0 {
		return
	}
	p, q := unsafe.Pointer(unsafe.SliceData(ids)), unsafe.Pointer(unsafe.SliceData(mask))
	a.mu.Lock()
	defer a.mu.Unlock()
	c, ok := a.out[p]
	if !ok {
		return
	}
	delete(a.out, p)
	if c == a.capacity && !a.closed {
		a.free = append(a.free, [2]unsafe.Pointer{p, q})
		return
	}
	C.free(p)
	C.free(q)
}

// Close frees the pooled buffers.
func (a *HostAllocator) Close() {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.closed = true
	for _, pair := range a.free {
		C.free(pair[0])
		C.free(pair[1])
	}
	a.free = nil
}

func cMalloc(bytes int) unsafe.Pointer {
	p := C.malloc(C.size_t(bytes))
	if p == nil {
		panic(fmt.Sprintf("gpurun: out of host memory allocating %d bytes", bytes))
	}
	return p
}

// floatBuf is an output buffer in C memory.
type floatBuf struct {
	p   unsafe.Pointer
	buf []float32
}

func newFloatBuf(n int) *floatBuf {
	p := cMalloc(n * 4)
	return &floatBuf{p: p, buf: unsafe.Slice((*float32)(p), n)}
}

func (f *floatBuf) free() { C.free(f.p) }
