package batcher

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"time"
)

// Batcher groups Items into length-bucketed, padded, tokenised Batches.
//
// Add may be called from any number of goroutines. A single goroutine,
// started by Start, owns all batching state; it is the only sender on Out.
// Exactly one consumer should read Out and Release every Batch.
type Batcher struct {
	maxLen  int
	shapes  []BucketShape // ascending Cols
	cols    []int         // shapes[i].Cols, for the bucket search
	maxWait time.Duration
	tok     *Tokenizer
	alloc   Allocator

	in  chan Item
	out chan *Batch

	// padRow and oneRow hold the longest bucket's worth of PadID and 1, the
	// sources the flush copies padding and mask runs from.
	padRow, oneRow []int64

	// inMu makes closing the input a barrier: Add holds it shared while it
	// checks closing and sends, closeInput takes it exclusively once closing
	// is closed, so after closeInput no Add can still put an item on in.
	inMu      sync.RWMutex
	closing   chan struct{}
	closeOnce sync.Once

	startOnce sync.Once
	handle    *Handle
}

// BucketShape is one bucket: its length in tokens and how many rows a
// batch of it may have, min(MaxBatchRows, max(1, MaxBatchTokens/Cols)).
type BucketShape struct {
	Cols, Rows int
}

// New returns a Batcher for sequences of at most maxLen residues (callers
// usually pass DefaultMaxLen, 1022). Invalid settings, maxLen < 1 included,
// give an error wrapping ErrOption. Nil options are ignored.
//
// Buckets are multiples of the step (WithBucketStep, default 64) from step
// up to the smallest multiple ≥ maxLen+2, or the list given WithBuckets; an
// item of L residues goes to the smallest bucket ≥ L+2.
func New(maxLen int, opts ...Option) (*Batcher, error) {
	if maxLen < 1 {
		return nil, optionError("maxLen", maxLen, "must be ≥ 1")
	}
	c := defaultConfig()
	for _, o := range opts {
		if o == nil {
			continue
		}
		if err := o(&c); err != nil {
			return nil, err
		}
	}
	cols := c.buckets
	if cols == nil {
		for n := c.step; ; n += c.step {
			cols = append(cols, n)
			if n >= maxLen+2 {
				break
			}
		}
	} else if last := cols[len(cols)-1]; last < maxLen+2 {
		return nil, optionError("WithBuckets", cols, fmt.Sprintf("last length %d < maxLen+2 = %d", last, maxLen+2))
	}
	if c.tok == nil {
		c.tok, _ = NewTokenizer("") // the default alphabet is always valid
	}
	if c.alloc == nil {
		c.alloc = NewGoAllocator()
	}
	b := &Batcher{
		maxLen:  maxLen,
		cols:    cols,
		maxWait: c.maxWait,
		tok:     c.tok,
		alloc:   c.alloc,
		in:      make(chan Item, c.queueSize),
		out:     make(chan *Batch, c.outputSize),
		closing: make(chan struct{}),
	}
	for _, n := range cols {
		rows := min(c.maxBatchRows, max(1, c.maxBatchTokens/n))
		b.shapes = append(b.shapes, BucketShape{Cols: n, Rows: rows})
	}
	longest := cols[len(cols)-1]
	b.padRow = slices.Repeat([]int64{PadID}, longest)
	b.oneRow = slices.Repeat([]int64{1}, longest)
	return b, nil
}

// MaxLen returns the maxLen given to New.
func (b *Batcher) MaxLen() int { return b.maxLen }

// Buckets returns a copy of the bucket shapes, shortest first, e.g. for
// warming up the model on every batch shape.
func (b *Batcher) Buckets() []BucketShape { return slices.Clone(b.shapes) }

// Tokenizer returns the Tokenizer batches are encoded with (safe to share).
func (b *Batcher) Tokenizer() *Tokenizer { return b.tok }

// Out returns the channel batches are emitted on. It is closed when the
// loop ends (Drain finished, Stop, or the Start context cancelled).
func (b *Batcher) Out() <-chan *Batch { return b.out }

// Add queues it for batching. it.Residues must be validated, 1..maxLen
// long (ErrEmpty, ErrTooLong otherwise) and is owned by the batcher from
// here on (see Item). A zero it.Arrived is set to time.Now().
//
// Add blocks while the input queue is full, until there is room, ctx is
// done (the error wraps ctx.Err()), or the batcher is closed (ErrClosed,
// also returned for every Add after Drain or Stop). Safe for concurrent use.
func (b *Batcher) Add(ctx context.Context, it Item) error {
	switch n := len(it.Residues); {
	case n == 0:
		return addError(it, ErrEmpty)
	case n > b.maxLen:
		return addError(it, fmt.Errorf("%w (%d > %d)", ErrTooLong, n, b.maxLen))
	}
	if it.Arrived.IsZero() {
		it.Arrived = time.Now()
	}
	b.inMu.RLock()
	defer b.inMu.RUnlock()
	select { // closing first: a select with several ready cases picks at random
	case <-b.closing:
		return addError(it, ErrClosed)
	default:
	}
	select {
	case b.in <- it:
		return nil
	case <-b.closing:
		return addError(it, ErrClosed)
	case <-ctx.Done():
		return addError(it, fmt.Errorf("waiting for room in the batcher queue: %w", ctx.Err()))
	}
}

// addError gives an Add failure the item's ID as context.
func addError(it Item, err error) error {
	return fmt.Errorf("add %q: %w", it.ID, err)
}

// closeInput makes every later Add fail with ErrClosed and returns once no
// Add can still send: from then on the content of in is final.
func (b *Batcher) closeInput() {
	b.closeOnce.Do(func() {
		close(b.closing)
		// Taking the lock waits for the Adds in flight, which closing wakes;
		// the lock guards no data, it is this barrier.
		b.inMu.Lock()
		//lint:ignore SA2001 the empty critical section is the barrier
		b.inMu.Unlock()
	})
}

// Start starts the goroutine that owns the batching state and returns its
// Handle. Cancelling ctx acts like Handle.Stop. Only the first call starts
// anything; later calls return the same Handle and ignore ctx.
func (b *Batcher) Start(ctx context.Context) *Handle {
	b.startOnce.Do(func() {
		b.handle = &Handle{
			b:     b,
			drain: make(chan struct{}),
			stop:  make(chan struct{}),
			done:  make(chan struct{}),
		}
		l := &loop{
			b:       b,
			ctx:     ctx,
			h:       b.handle,
			buckets: make([]bucket, len(b.shapes)),
			timer:   time.NewTimer(time.Hour),
		}
		l.timer.Stop()
		for i, s := range b.shapes {
			l.buckets[i].BucketShape = s
		}
		go l.run()
	})
	return b.handle
}

// Handle controls the loop started by Start. Its methods are safe for
// concurrent use and idempotent.
type Handle struct {
	b                   *Batcher
	drainOnce, stopOnce sync.Once
	drain, stop, done   chan struct{}
	pending             []Item // written by the loop before done is closed
}

// Drain stops accepting items (Add returns ErrClosed from now on) and tells
// the loop to emit everything it holds or has queued, the remainders of the
// buckets with Reason "drain", then close Out and exit. It does not wait:
// keep consuming Out, and wait on Done. A Stop or context cancel while the
// drain waits on the consumer ends it; what is left goes to Pending.
func (h *Handle) Drain() {
	h.b.closeInput()
	h.drainOnce.Do(func() { close(h.drain) })
}

// Stop stops accepting items and tells the loop to exit without emitting
// anything more, including a batch it is blocked sending; it then closes
// Out. Items never emitted are returned by Pending. Stop does not wait:
// wait on Done.
func (h *Handle) Stop() {
	h.b.closeInput()
	h.stopOnce.Do(func() { close(h.stop) })
}

// Done is closed once the loop has exited and Out is closed.
func (h *Handle) Done() <-chan struct{} { return h.done }

// Pending returns, once Done is closed, the accepted items that were never
// emitted (after Stop or a context cancel; empty after a complete Drain),
// oldest first, so the caller can nak them. The caller owns them again.
// Before Done it returns nil.
func (h *Handle) Pending() []Item {
	select {
	case <-h.done:
		return h.pending
	default:
		return nil
	}
}

// loop is the batching state, owned by the goroutine running run.
type loop struct {
	b       *Batcher
	ctx     context.Context
	h       *Handle
	buckets []bucket
	order   []int // scratch for flushBuckets

	timer *time.Timer
	armed time.Time // deadline the timer is set for, zero when stopped
	stale bool      // a bucket lost its front item: recompute the deadline

	seq     uint64 // Seq of the last batch emitted
	pending []Item // items of a batch whose send was abandoned
}

// bucket holds the items waiting for one batch shape, sorted by Arrived.
type bucket struct {
	BucketShape
	items []Item
}

func (l *loop) run() {
	defer l.finish()
	for {
		select {
		case it := <-l.b.in:
			if !l.add(it) {
				return
			}
		case <-l.timer.C:
			l.armed, l.stale = time.Time{}, true // re-arm even if nothing was due
			if !l.linger() {
				return
			}
		case <-l.h.drain:
			l.drain()
			return
		case <-l.h.stop:
			return
		case <-l.ctx.Done():
			return
		}
		if l.stale {
			l.rearm()
		}
	}
}

// add puts it in its bucket, keeping the bucket sorted by Arrived, emits
// the bucket if it is full and arms the timer if it has a new earliest
// deadline. It returns false if the loop must exit.
func (l *loop) add(it Item) bool {
	i, _ := slices.BinarySearch(l.b.cols, len(it.Residues)+2)
	bk := &l.buckets[i]
	bk.items = append(bk.items, it)
	j := len(bk.items) - 1
	for ; j > 0 && it.Arrived.Before(bk.items[j-1].Arrived); j-- {
		bk.items[j] = bk.items[j-1]
	}
	bk.items[j] = it
	if len(bk.items) >= bk.Rows { // buckets hold < Rows between adds
		return l.emit(bk, bk.Rows, ReasonFull) // emit marks the deadline stale
	}
	if j == 0 {
		if d := it.Arrived.Add(l.b.maxWait); l.armed.IsZero() || d.Before(l.armed) {
			l.arm(d)
		}
	}
	return true
}

// lingerRetry is how soon a linger flush is tried again while Out is full.
const lingerRetry = time.Millisecond

// linger runs when the earliest deadline passes. Linger exists to bound latency when input is
// slow, not to cut batches short under load: it first takes in every item already queued, and
// while Out is full (the runners are busy) it flushes nothing and looks again shortly, so the
// buckets keep filling. Otherwise it emits one batch, from the overdue bucket with the oldest
// item; the timer brings it back at once for the next overdue bucket. With an unbuffered Out it
// flushes every time. It returns false if the loop must exit.
func (l *loop) linger() bool {
	for range cap(l.b.in) {
		select {
		case it := <-l.b.in:
			if !l.add(it) {
				return false
			}
			continue
		default:
		}
		break
	}
	if c := cap(l.b.out); c > 0 && len(l.b.out) >= c {
		l.arm(time.Now().Add(lingerRetry))
		l.stale = false
		return true
	}
	now := time.Now()
	var oldest *bucket
	for i := range l.buckets {
		bk := &l.buckets[i]
		if len(bk.items) > 0 && !now.Before(bk.items[0].Arrived.Add(l.b.maxWait)) &&
			(oldest == nil || bk.items[0].Arrived.Before(oldest.items[0].Arrived)) {
			oldest = bk
		}
	}
	if oldest == nil {
		return true
	}
	return l.emit(oldest, min(len(oldest.items), oldest.Rows), ReasonLinger)
}

// drain moves everything still queued into the buckets, then empties every
// bucket.
func (l *loop) drain() {
	l.b.closeInput()
	for {
		select {
		case it := <-l.b.in:
			if !l.add(it) {
				return
			}
		default:
			l.flushBuckets(ReasonDrain, func(*bucket) bool { return true })
			return
		}
	}
}

// flushBuckets empties the non-empty buckets for which pick is true, the
// one with the oldest item first; remainders smaller than a full batch get
// reason. It returns false if the loop must exit.
func (l *loop) flushBuckets(reason string, pick func(*bucket) bool) bool {
	l.order = l.order[:0]
	for i := range l.buckets {
		if bk := &l.buckets[i]; len(bk.items) > 0 && pick(bk) {
			l.order = append(l.order, i)
		}
	}
	slices.SortFunc(l.order, func(a, b int) int {
		return l.buckets[a].items[0].Arrived.Compare(l.buckets[b].items[0].Arrived)
	})
	for _, i := range l.order {
		bk := &l.buckets[i]
		for len(bk.items) > 0 {
			n, r := bk.Rows, ReasonFull
			if len(bk.items) < n {
				n, r = len(bk.items), reason
			}
			if !l.emit(bk, n, r) {
				return false
			}
		}
	}
	return true
}

// emit sends the n oldest items of bk as one batch (with Err set if its
// buffers could not be allocated), waiting for the consumer unless Stop or
// the context ends the wait; then the batch is released, its items kept for
// Pending, and emit returns false.
func (l *loop) emit(bk *bucket, n int, reason string) bool {
	batch := l.build(bk, n, reason)
	select {
	case l.b.out <- batch:
		l.seq++
		return true
	case <-l.h.stop:
	case <-l.ctx.Done():
	}
	l.pending = append(l.pending, batch.Items...)
	batch.Release()
	return false
}

// build takes the n oldest items out of bk and tokenises them straight into
// buffers from the allocator: each row is <cls> residues <eos> then PadID,
// its mask 1 then 0, every element written once. If the allocator fails,
// the batch carries the error in Err instead of buffers.
func (l *loop) build(bk *bucket, n int, reason string) *Batch {
	cols := bk.Cols
	items := slices.Clone(bk.items[:n])
	rest := copy(bk.items, bk.items[n:])
	clear(bk.items[rest:]) // drop references held by the spare capacity
	bk.items = bk.items[:rest]
	l.stale = true

	tokens := 0
	for r := range items {
		tokens += len(items[r].Residues) + 2
	}
	batch := &Batch{
		Seq:    l.seq + 1,
		Items:  items,
		Rows:   n,
		Cols:   cols,
		Tokens: tokens,
		Oldest: items[0].Arrived,
		Reason: reason,
	}
	ids, mask, err := l.b.alloc.Alloc(n * cols)
	if err == nil && (len(ids) != n*cols || len(mask) != n*cols) {
		l.b.alloc.Free(ids, mask)
		err = fmt.Errorf("the allocator returned %d ids and %d mask elements for %d", len(ids), len(mask), n*cols)
	}
	if err != nil {
		batch.Err = fmt.Errorf("%w: batch %d (%d×%d): %w", ErrAlloc, batch.Seq, n, cols, err)
		return batch
	}
	for r := range items {
		k := len(items[r].Residues) + 2
		row, m := ids[r*cols:(r+1)*cols], mask[r*cols:(r+1)*cols]
		l.b.tok.Encode(row, items[r].Residues)
		copy(row[k:], l.b.padRow)
		copy(m[:k], l.b.oneRow)
		clear(m[k:])
	}
	batch.InputIDs, batch.Mask, batch.alloc = ids, mask, l.b.alloc
	return batch
}

// arm sets the timer to fire at deadline d.
func (l *loop) arm(d time.Time) {
	l.armed = d
	l.timer.Reset(time.Until(d))
}

// rearm points the timer at the earliest deadline over all buckets, or
// stops it when every bucket is empty.
func (l *loop) rearm() {
	l.stale = false
	var earliest time.Time
	for i := range l.buckets {
		if items := l.buckets[i].items; len(items) > 0 && (earliest.IsZero() || items[0].Arrived.Before(earliest)) {
			earliest = items[0].Arrived
		}
	}
	switch {
	case earliest.IsZero():
		l.timer.Stop()
		l.armed = time.Time{}
	case !earliest.Add(l.b.maxWait).Equal(l.armed):
		l.arm(earliest.Add(l.b.maxWait))
	}
}

// finish runs when the loop exits: it closes the input, hands every item
// not emitted to Pending (oldest first), closes Out and then Done.
func (l *loop) finish() {
	l.timer.Stop()
	l.b.closeInput()
	pending := l.pending
	for i := range l.buckets {
		pending = append(pending, l.buckets[i].items...)
		l.buckets[i].items = nil
	}
	for more := true; more; {
		select {
		case it := <-l.b.in:
			pending = append(pending, it)
		default:
			more = false
		}
	}
	slices.SortStableFunc(pending, func(a, b Item) int { return a.Arrived.Compare(b.Arrived) })
	l.h.pending = pending
	close(l.b.out)
	close(l.h.done)
}
