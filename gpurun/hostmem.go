package gpurun

/*
#include <stdlib.h>

// se_host_malloc is malloc(n), NULL when the memory is not there: cgo's own C.malloc never
// returns NULL, it ends the process instead.
static void *se_host_malloc(size_t n) { return malloc(n ? n : 1); }
*/
import "C"

import (
	"context"
	"fmt"
	"math"
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
	mem      hostMem
	mu       sync.Mutex
	free     [][2]unsafe.Pointer
	out      map[unsafe.Pointer]int // ids pointer -> element capacity, for buffers handed out
	closed   bool
}

// NewHostAllocator pools buffer pairs of capacity elements each (normally the batch token budget).
// With pinned, buffers are page-locked by cudaHostAlloc (the CUDA runtime is loaded on demand;
// an error if it is missing) and the first buffer is checked to really be pinned.
func NewHostAllocator(capacity int, pinned bool) (*HostAllocator, error) {
	if capacity <= 0 {
		return nil, fmt.Errorf("%w: host allocator capacity %d must be > 0", ErrOption, capacity)
	}
	a := &HostAllocator{capacity: capacity, mem: hostMem{pinned: pinned}, out: map[unsafe.Pointer]int{}}
	if pinned {
		if err := loadCudart(); err != nil {
			return nil, err
		}
		ids, mask, err := a.Alloc(capacity)
		if err != nil {
			a.Close()
			return nil, err
		}
		ok, err := isPinned(unsafe.Pointer(unsafe.SliceData(ids)))
		a.Free(ids, mask)
		if err != nil || !ok {
			a.Close()
			return nil, fmt.Errorf("%w: cudaHostAlloc memory is not reported as pinned (%v)", ErrDevice, err)
		}
	}
	return a, nil
}

// Pinned says whether buffers are page-locked.
func (a *HostAllocator) Pinned() bool { return a.mem.pinned }

// Capacity is the pooled buffers' size in elements.
func (a *HostAllocator) Capacity() int { return a.capacity }

// Alloc returns two int64 slices of n elements backed by C memory. Their contents are unspecified.
// A pooled pair is reused when one is free; otherwise memory is allocated, and when the host
// (malloc, or cudaHostAlloc for a pinned allocator) has none the error wraps ErrAlloc and
// nothing is held. A pinned allocation waits for a CUDA graph capture in progress (Warmup) to end.
func (a *HostAllocator) Alloc(n int) (ids, mask []int64, err error) {
	if n < 0 {
		return nil, nil, fmt.Errorf("%w: %d elements", ErrAlloc, n)
	}
	c := max(n, a.capacity)
	a.mu.Lock()
	if c == a.capacity && len(a.free) > 0 {
		pair := a.free[len(a.free)-1]
		a.free = a.free[:len(a.free)-1]
		a.out[pair[0]] = c
		a.mu.Unlock()
		return pairSlices(pair, c, n)
	}
	a.mu.Unlock()
	if c > math.MaxInt/8 {
		return nil, nil, fmt.Errorf("%w: %d int64 elements", ErrAlloc, c)
	}
	var pair [2]unsafe.Pointer
	if pair[0], err = a.mem.alloc(context.Background(), c*8); err != nil {
		return nil, nil, err
	}
	if pair[1], err = a.mem.alloc(context.Background(), c*8); err != nil {
		a.mem.free(pair[0])
		return nil, nil, err
	}
	a.mu.Lock()
	a.out[pair[0]] = c
	a.mu.Unlock()
	return pairSlices(pair, c, n)
}

// pairSlices is a buffer pair of capacity c as two slices of n elements.
func pairSlices(pair [2]unsafe.Pointer, c, n int) (ids, mask []int64, err error) {
	return unsafe.Slice((*int64)(pair[0]), c)[:n:n], unsafe.Slice((*int64)(pair[1]), c)[:n:n], nil
}

// Free returns a pair obtained from Alloc. Slices that did not come from this allocator are ignored.
// Freeing pinned memory waits for a CUDA graph capture in progress to end, as Alloc does.
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
	a.mem.free(p)
	a.mem.free(q)
}

// Close frees the pooled buffers (waiting, for pinned ones, as Free does).
func (a *HostAllocator) Close() {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.closed = true
	for _, pair := range a.free {
		a.mem.free(pair[0])
		a.mem.free(pair[1])
	}
	a.free = nil
}

// floatBuf is an output buffer in C memory.
type floatBuf struct {
	mem hostMem
	p   unsafe.Pointer
	buf []float32
}

// newFloatBuf allocates n floats (see hostMem.alloc).
func newFloatBuf(ctx context.Context, mem hostMem, n int) (*floatBuf, error) {
	if n > math.MaxInt/4 {
		return nil, fmt.Errorf("%w: %d float32 elements", ErrAlloc, n)
	}
	p, err := mem.alloc(ctx, n*4)
	if err != nil {
		return nil, err
	}
	return &floatBuf{mem: mem, p: p, buf: unsafe.Slice((*float32)(p), n)}, nil
}

func (f *floatBuf) free() { f.mem.free(f.p) }

// cMalloc is malloc's bytes, or an error wrapping ErrAlloc.
func cMalloc(bytes int) (unsafe.Pointer, error) {
	p := C.se_host_malloc(C.size_t(bytes))
	if p == nil {
		return nil, fmt.Errorf("%w: malloc(%d bytes) failed", ErrAlloc, bytes)
	}
	return p, nil
}
