package batcher

import (
	"math/bits"
	"sync"
	"sync/atomic"
	"time"
)

// Item is one validated record waiting for a batch.
type Item struct {
	ID string
	// Residues must have passed Tokenizer.Validate and be at most maxLen
	// long (the caller truncates). The batcher owns the bytes from Add until
	// the Batch holding the item is released, or until the item is handed
	// back by Handle.Pending; the caller must not modify them meanwhile.
	Residues  []byte
	StreamSeq uint64
	Truncated bool
	// The record's identity and provenance, passed through unchanged to the output row (the
	// batcher uses none of them): its description, its length before truncation, the hex
	// SHA-256 of its whole sequence, whether the publisher stripped a stop codon, and its
	// position in its input (-1 when unknown).
	Description  string
	InputLength  int
	SeqSHA256    string
	StopStripped bool
	InputIndex   int64
	// Ref is opaque to the batcher (the caller puts its message handle
	// here) and passed through unchanged.
	Ref any
	// Arrived is set to time.Now() by Add if zero. A bucket is emitted once
	// its oldest Arrived is MaxWait old.
	Arrived time.Time
}

// Batch is one padded, tokenised batch. InputIDs and Mask are Rows*Cols
// row-major; row i belongs to Items[i] and Rows == len(Items).
//
// A Batch whose Err is set has no buffers: the Allocator failed (see Err).
//
// A Batch belongs to the goroutine that received it from Out, which must
// call Release when done with the buffers. A Batch must not be copied.
type Batch struct {
	Seq        uint64 // batch number, increasing from 1
	Items      []Item // oldest first
	Rows, Cols int    // Cols = bucket length in tokens (includes <cls>/<eos>)
	InputIDs   []int64
	Mask       []int64   // 1 for real tokens (incl. <cls>/<eos>), 0 for padding
	Tokens     int       // real tokens: sum of len(Residues)+2
	Oldest     time.Time // earliest Arrived among Items
	Reason     string    // "full" | "linger" | "drain"
	// Err is nil, or the reason the batch has no buffers: the Allocator
	// could not supply them (the error wraps ErrAlloc and the Allocator's
	// error). Such a batch is emitted like any other, with every field but
	// InputIDs and Mask (nil) set, so that the consumer gets its Items back
	// and decides their fate (nak them for redelivery, say); it must not be
	// run. Release is a no-op on it.
	Err error

	alloc    Allocator
	released atomic.Bool
}

// Reasons a batch was emitted.
const (
	ReasonFull   = "full"   // the bucket reached its row capacity
	ReasonLinger = "linger" // the bucket's oldest item waited MaxWait
	ReasonDrain  = "drain"  // Handle.Drain flushed the bucket
)

// Reasons lists every reason a batch is emitted for: the label set of a metric by reason
// (telemetry takes it from here rather than keeping its own copy).
var Reasons = []string{ReasonFull, ReasonLinger, ReasonDrain}

// PaddingEfficiency returns Tokens / (Rows*Cols): 1 means no padding.
func (b *Batch) PaddingEfficiency() float64 {
	if b.Rows == 0 || b.Cols == 0 {
		return 0
	}
	return float64(b.Tokens) / float64(b.Rows*b.Cols)
}

// Release gives InputIDs and Mask back to the allocator they came from and
// sets them to nil. Items stay valid (so the consumer may ack after
// releasing), but the Residues bytes go back to their owner. Release is
// idempotent and safe to call from any goroutine.
func (b *Batch) Release() {
	if b.released.Swap(true) || b.alloc == nil {
		return
	}
	b.alloc.Free(b.InputIDs, b.Mask)
	b.InputIDs, b.Mask = nil, nil
}

// Allocator supplies the token buffers of batches, so that the GPU runtime
// can hand out pinned C memory. Alloc returns two slices of exactly n
// elements, with any contents (the batcher overwrites all of them), or an
// error when it has no memory for them (then no slices: there is nothing
// to Free); the batch is then emitted with Err set (see Batch.Err). Free
// gives the slices back once the batch is done. Alloc is called from the
// batcher's goroutine and Free from whichever goroutine releases the batch,
// so an Allocator must be safe for concurrent use. Alloc is on the
// batcher's hot path: an Allocator should reuse buffers, not allocate anew.
type Allocator interface {
	Alloc(n int) (ids, mask []int64, err error)
	Free(ids, mask []int64)
}

// goAllocMaxFree is how many buffer pairs a GoAllocator keeps per size
// class; more than the batches that are normally in flight.
const goAllocMaxFree = 8

// GoAllocator is the default Allocator: Go-heap buffers on a free list.
// Capacities are rounded up to a power of two so that batches of nearby
// sizes (partial batches after a linger) reuse each other's buffers; at most
// 8 pairs per size class are kept, the rest are left to the GC. Its methods
// are safe for concurrent use.
type GoAllocator struct {
	mu   sync.Mutex
	free [bits.UintSize][]bufPair // indexed by log2 of the capacity
}

type bufPair struct{ ids, mask []int64 }

// NewGoAllocator returns an empty GoAllocator.
func NewGoAllocator() *GoAllocator { return &GoAllocator{} }

// Alloc returns two slices of length n, reused from the free list when one
// of the right size class is there. Contents are unspecified. It never
// returns an error (the Go runtime ends the process when the heap cannot
// grow); n ≤ 0 gives nil slices.
func (a *GoAllocator) Alloc(n int) (ids, mask []int64, err error) {
	if n <= 0 {
		return nil, nil, nil
	}
	class := bits.Len(uint(n - 1))
	a.mu.Lock()
	if list := a.free[class]; len(list) > 0 {
		p := list[len(list)-1]
		list[len(list)-1] = bufPair{}
		a.free[class] = list[:len(list)-1]
		a.mu.Unlock()
		return p.ids[:n], p.mask[:n], nil
	}
	a.mu.Unlock()
	size := 1 << class
	return make([]int64, n, size), make([]int64, n, size), nil
}

// Free puts a pair from Alloc back on the free list. Slices that did not
// come from a GoAllocator (capacity not a power of two, or unequal) are left
// to the GC.
func (a *GoAllocator) Free(ids, mask []int64) {
	c := cap(ids)
	if c == 0 || c&(c-1) != 0 || cap(mask) != c {
		return
	}
	class := bits.TrailingZeros(uint(c))
	a.mu.Lock()
	if len(a.free[class]) < goAllocMaxFree {
		a.free[class] = append(a.free[class], bufPair{ids[:c], mask[:c]})
	}
	a.mu.Unlock()
}
