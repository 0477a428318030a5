package batcher

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/seqembed/seqembed/internal/testutil"
)

// wait bounds every wait for something that must happen; tests never
// assert an upper bound on elapsed time, this only keeps a bug from hanging.
//
// Tests that must see a goroutine blocked (an Add waiting for room, a loop
// waiting on its consumer) run in a synctest bubble: synctest.Wait returns
// once every other goroutine of the bubble is blocked, so "still blocked" is
// observed, never assumed after a sleep; time there is synctest's clock.
const wait = 10 * time.Second

func newBatcher(t *testing.T, maxLen int, opts ...Option) *Batcher {
	t.Helper()
	b, err := New(maxLen, opts...)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	return b
}

// residues returns n valid residues, deterministic per n.
func residues(n int) []byte {
	r := rand.New(rand.NewPCG(uint64(n), 7))
	s := make([]byte, n)
	for i := range s {
		s[i] = Residues[r.IntN(20)]
	}
	return s
}

func item(id string, n int) Item { return Item{ID: id, Residues: residues(n)} }

func mustAdd(t *testing.T, b *Batcher, its ...Item) {
	t.Helper()
	for _, it := range its {
		if err := b.Add(context.Background(), it); err != nil {
			t.Fatalf("Add(%s): %v", it.ID, err)
		}
	}
}

// next receives one batch, failing if none comes or Out is closed.
func next(t *testing.T, b *Batcher) *Batch {
	t.Helper()
	select {
	case batch, ok := <-b.Out():
		if !ok {
			t.Fatal("Out closed, want a batch")
		}
		return batch
	case <-time.After(wait):
		t.Fatal("no batch")
	}
	return nil
}

// drainAll drains h and returns every batch up to the close of Out.
func drainAll(t *testing.T, b *Batcher, h *Handle) []*Batch {
	t.Helper()
	h.Drain()
	var got []*Batch
	for {
		select {
		case batch, ok := <-b.Out():
			if !ok {
				waitDone(t, h)
				return got
			}
			got = append(got, batch)
		case <-time.After(wait):
			t.Fatal("Out not closed after Drain")
		}
	}
}

func waitDone(t *testing.T, h *Handle) {
	t.Helper()
	select {
	case <-h.Done():
	case <-time.After(wait):
		t.Fatal("loop did not exit")
	}
}

// checkBatch checks the invariants every batch must satisfy, including the
// exact token and mask content against an independent encoding.
func checkBatch(t *testing.T, b *Batcher, batch *Batch) {
	t.Helper()
	if batch.Rows != len(batch.Items) || len(batch.InputIDs) != batch.Rows*batch.Cols || len(batch.Mask) != batch.Rows*batch.Cols {
		t.Fatalf("batch %d: Rows %d, Items %d, Cols %d, ids %d, mask %d", batch.Seq, batch.Rows, len(batch.Items), batch.Cols, len(batch.InputIDs), len(batch.Mask))
	}
	tokens := 0
	for r, it := range batch.Items {
		k := len(it.Residues) + 2
		tokens += k
		if k > batch.Cols {
			t.Fatalf("item %s (%d tokens) in a %d-column batch", it.ID, k, batch.Cols)
		}
		want := make([]int64, batch.Cols)
		wantMask := make([]int64, batch.Cols)
		for j := range want {
			switch {
			case j == 0:
				want[j] = ClsID
			case j <= len(it.Residues):
				want[j] = hfIDs[it.Residues[j-1]]
			case j == k-1:
				want[j] = EosID
			default:
				want[j] = PadID
			}
			if j < k {
				wantMask[j] = 1
			}
		}
		row := batch.InputIDs[r*batch.Cols : (r+1)*batch.Cols]
		mrow := batch.Mask[r*batch.Cols : (r+1)*batch.Cols]
		if !slices.Equal(row, want) || !slices.Equal(mrow, wantMask) {
			t.Fatalf("batch %d row %d (%s):\n ids  %v\n want %v\n mask %v\n want %v", batch.Seq, r, it.ID, row, want, mrow, wantMask)
		}
		if r > 0 && it.Arrived.Before(batch.Items[r-1].Arrived) {
			t.Fatalf("batch %d: items not oldest first", batch.Seq)
		}
	}
	if batch.Tokens != tokens {
		t.Fatalf("Tokens = %d, want %d", batch.Tokens, tokens)
	}
	if !batch.Oldest.Equal(batch.Items[0].Arrived) {
		t.Fatalf("Oldest = %v, want %v", batch.Oldest, batch.Items[0].Arrived)
	}
}

func TestDefaultBuckets(t *testing.T) {
	b := newBatcher(t, DefaultMaxLen)
	got := b.Buckets()
	if len(got) != 16 {
		t.Fatalf("%d buckets, want 16: %v", len(got), got)
	}
	for i, s := range got {
		cols := 64 * (i + 1)
		rows := min(256, 16384/cols)
		if s != (BucketShape{Cols: cols, Rows: rows}) {
			t.Errorf("bucket %d = %+v, want {%d %d}", i, s, cols, rows)
		}
	}
	if b.MaxLen() != DefaultMaxLen {
		t.Errorf("MaxLen() = %d", b.MaxLen())
	}
	if got := newBatcher(t, 1023).Buckets(); got[len(got)-1].Cols != 1088 {
		t.Errorf("maxLen 1023: last bucket %d, want 1088", got[len(got)-1].Cols)
	}
}

func TestBucketForLength(t *testing.T) {
	for _, tc := range []struct{ residues, cols int }{
		{1, 64}, {61, 64}, {62, 64}, {63, 128}, {126, 128}, {127, 192}, {1000, 1024}, {1022, 1024},
	} {
		b := newBatcher(t, DefaultMaxLen, WithMaxWait(time.Hour))
		h := b.Start(context.Background())
		mustAdd(t, b, item("x", tc.residues))
		batches := drainAll(t, b, h)
		if len(batches) != 1 || batches[0].Cols != tc.cols {
			t.Fatalf("%d residues: got %d batches, Cols %d; want 1 batch of %d", tc.residues, len(batches), batches[0].Cols, tc.cols)
		}
		checkBatch(t, b, batches[0])
		batches[0].Release()
	}
}

func TestExplicitBuckets(t *testing.T) {
	b := newBatcher(t, 100, WithBuckets([]int{16, 40, 102}), WithMaxWait(time.Hour))
	h := b.Start(context.Background())
	mustAdd(t, b, item("a", 14), item("b", 15), item("c", 38), item("d", 100))
	cols := map[string]int{}
	for _, batch := range drainAll(t, b, h) {
		checkBatch(t, b, batch)
		for _, it := range batch.Items {
			cols[it.ID] = batch.Cols
		}
	}
	want := map[string]int{"a": 16, "b": 40, "c": 40, "d": 102}
	if fmt.Sprint(cols) != fmt.Sprint(want) {
		t.Fatalf("buckets %v, want %v", cols, want)
	}
}

func TestTokenBudgetAndRows(t *testing.T) {
	const budget, maxRows = 1000, 12
	b := newBatcher(t, 300, WithMaxBatchTokens(budget), WithMaxBatchRows(maxRows), WithMaxWait(time.Hour), WithQueueSize(0))
	h := b.Start(context.Background())
	r := rand.New(rand.NewPCG(1, 2))
	const n = 500
	var got []*Batch
	var wg sync.WaitGroup
	wg.Go(func() {
		for batch := range b.Out() {
			got = append(got, batch)
		}
	})
	for i := range n {
		mustAdd(t, b, item(fmt.Sprint(i), 1+r.IntN(300)))
	}
	h.Drain()
	wg.Wait()
	seen := map[string]bool{}
	for _, batch := range got {
		checkBatch(t, b, batch)
		if batch.Rows*batch.Cols > budget || batch.Rows > maxRows {
			t.Fatalf("batch %d: %d x %d breaks budget %d / %d rows", batch.Seq, batch.Rows, batch.Cols, budget, maxRows)
		}
		for _, it := range batch.Items {
			if seen[it.ID] {
				t.Fatalf("item %s emitted twice", it.ID)
			}
			seen[it.ID] = true
		}
		if batch.Reason == ReasonFull {
			if want := min(maxRows, budget/batch.Cols); batch.Rows != want {
				t.Fatalf("full batch with %d rows, want %d", batch.Rows, want)
			}
		}
		batch.Release()
	}
	if len(seen) != n {
		t.Fatalf("%d items emitted, want %d", len(seen), n)
	}
}

func TestBucketLongerThanBudgetHoldsOneRow(t *testing.T) {
	b := newBatcher(t, 200, WithMaxBatchTokens(100), WithMaxWait(time.Hour))
	if last := b.Buckets()[3]; last != (BucketShape{Cols: 256, Rows: 1}) {
		t.Fatalf("last bucket %+v, want {256 1}", last)
	}
	b.Start(context.Background())
	mustAdd(t, b, item("long", 200))
	batch := next(t, b)
	if batch.Reason != ReasonFull || batch.Rows != 1 || batch.Cols != 256 {
		t.Fatalf("got %s batch %dx%d, want full 1x256", batch.Reason, batch.Rows, batch.Cols)
	}
	checkBatch(t, b, batch)
}

func TestFlushOnFull(t *testing.T) {
	b := newBatcher(t, DefaultMaxLen, WithMaxBatchRows(4), WithMaxWait(time.Hour))
	h := b.Start(context.Background())
	defer h.Stop()
	for i := range 10 {
		mustAdd(t, b, item(fmt.Sprint(i), 40))
	}
	for want := 1; want <= 2; want++ {
		batch := next(t, b)
		checkBatch(t, b, batch)
		if batch.Reason != ReasonFull || batch.Rows != 4 || batch.Seq != uint64(want) {
			t.Fatalf("got %s batch %d with %d rows, want full batch %d with 4", batch.Reason, batch.Seq, batch.Rows, want)
		}
		for r, it := range batch.Items {
			if it.ID != fmt.Sprint((want-1)*4+r) {
				t.Fatalf("batch %d row %d is %s: not in arrival order", want, r, it.ID)
			}
		}
	}
	rest := drainAll(t, b, h)
	if len(rest) != 1 || rest[0].Reason != ReasonDrain || rest[0].Rows != 2 || rest[0].Seq != 3 {
		t.Fatalf("after drain got %d batches, want one drain batch 3 with 2 rows", len(rest))
	}
}

func TestFlushOnLinger(t *testing.T) {
	const maxWait = 20 * time.Millisecond
	b := newBatcher(t, DefaultMaxLen, WithMaxWait(maxWait))
	h := b.Start(context.Background())
	defer h.Stop()
	mustAdd(t, b, item("a", 10), item("b", 20), item("c", 100))
	for rows := 0; rows < 3; {
		batch := next(t, b)
		checkBatch(t, b, batch)
		if batch.Reason != ReasonLinger {
			t.Fatalf("Reason = %q, want linger", batch.Reason)
		}
		if waited := time.Since(batch.Oldest); waited < maxWait {
			t.Fatalf("emitted after %v, before MaxWait %v", waited, maxWait)
		}
		rows += batch.Rows
	}
	// The timer re-arms for items that arrive after a flush.
	mustAdd(t, b, item("d", 10))
	if batch := next(t, b); batch.Reason != ReasonLinger || batch.Items[0].ID != "d" {
		t.Fatalf("got %s batch with %s, want linger batch with d", batch.Reason, batch.Items[0].ID)
	}
}

func TestLingerUsesOldestArrived(t *testing.T) {
	b := newBatcher(t, DefaultMaxLen, WithMaxWait(time.Hour))
	h := b.Start(context.Background())
	defer h.Stop()
	fresh := item("fresh", 10)
	old := item("old", 10)
	old.Arrived = time.Now().Add(-2 * time.Hour) // e.g. a redelivered message: already due
	mustAdd(t, b, fresh, old)
	batch := next(t, b)
	checkBatch(t, b, batch)
	if batch.Reason != ReasonLinger || batch.Rows != 2 || batch.Items[0].ID != "old" || !batch.Oldest.Equal(old.Arrived) {
		t.Fatalf("got %s batch of %d starting with %s, want linger [old fresh]", batch.Reason, batch.Rows, batch.Items[0].ID)
	}
}

func TestBucketOrdersByArrived(t *testing.T) {
	b := newBatcher(t, DefaultMaxLen, WithMaxWait(time.Hour))
	now := time.Now()
	for i, id := range []string{"c", "a", "b"} {
		it := item(id, 10)
		it.Arrived = now.Add(time.Duration([]int{3, 1, 2}[i]) * time.Second)
		mustAdd(t, b, it)
	}
	batches := drainAll(t, b, b.Start(context.Background()))
	checkBatch(t, b, batches[0])
	var ids []string
	for _, it := range batches[0].Items {
		ids = append(ids, it.ID)
	}
	if len(batches) != 1 || !slices.Equal(ids, []string{"a", "b", "c"}) {
		t.Fatalf("got %d batches, first %v; want one [a b c]", len(batches), ids)
	}
}

func TestDrainFlushesEverything(t *testing.T) {
	b := newBatcher(t, DefaultMaxLen, WithMaxWait(time.Hour))
	h := b.Start(context.Background())
	lengths := []int{5, 62, 63, 300, 1022, 7, 500}
	for i, n := range lengths {
		mustAdd(t, b, item(fmt.Sprint(i), n))
	}
	batches := drainAll(t, b, h)
	total := 0
	for i, batch := range batches {
		checkBatch(t, b, batch)
		if batch.Reason != ReasonDrain {
			t.Errorf("batch %d Reason %q, want drain", batch.Seq, batch.Reason)
		}
		if batch.Seq != uint64(i+1) {
			t.Errorf("batch %d has Seq %d", i, batch.Seq)
		}
		if i > 0 && batch.Oldest.Before(batches[i-1].Oldest) {
			t.Errorf("drain did not emit the oldest bucket first")
		}
		total += batch.Rows
	}
	if total != len(lengths) {
		t.Fatalf("drained %d items, want %d", total, len(lengths))
	}
	if p := h.Pending(); len(p) != 0 {
		t.Fatalf("Pending after a full drain = %d items", len(p))
	}
	if err := b.Add(context.Background(), item("late", 5)); !errors.Is(err, ErrClosed) {
		t.Fatalf("Add after Drain = %v, want ErrClosed", err)
	}
}

func TestDrainIncludesQueuedItems(t *testing.T) {
	// Items still in the input queue when Drain is called are emitted too.
	b := newBatcher(t, DefaultMaxLen, WithMaxWait(time.Hour), WithMaxBatchRows(3))
	for i := range 10 {
		mustAdd(t, b, item(fmt.Sprint(i), 30)) // queued before Start
	}
	h := b.Start(context.Background())
	h.Drain()
	rows := 0
	var reasons []string
	for batch := range b.Out() {
		checkBatch(t, b, batch)
		rows += batch.Rows
		reasons = append(reasons, batch.Reason)
		batch.Release()
	}
	if rows != 10 || !slices.Equal(reasons, []string{"full", "full", "full", "drain"}) {
		t.Fatalf("drained %d rows with reasons %v, want 10 with [full full full drain]", rows, reasons)
	}
}

func TestStopReturnsPending(t *testing.T) {
	b := newBatcher(t, DefaultMaxLen, WithMaxWait(time.Hour))
	for i := range 3 {
		mustAdd(t, b, item(fmt.Sprintf("q%d", i), 10)) // still queued at Stop
	}
	h := b.Start(context.Background())
	if p := h.Pending(); p != nil {
		t.Fatalf("Pending before Done = %v", p)
	}
	for i := range 5 {
		mustAdd(t, b, item(fmt.Sprintf("b%d", i), 10+100*i))
	}
	h.Stop()
	waitDone(t, h)
	if _, ok := <-b.Out(); ok {
		t.Fatal("Stop emitted a batch")
	}
	var ids []string
	for i, it := range h.Pending() {
		ids = append(ids, it.ID)
		if i > 0 && it.Arrived.Before(h.Pending()[i-1].Arrived) {
			t.Fatal("Pending not oldest first")
		}
	}
	if want := []string{"q0", "q1", "q2", "b0", "b1", "b2", "b3", "b4"}; !slices.Equal(ids, want) {
		t.Fatalf("Pending = %v, want %v", ids, want)
	}
	if err := b.Add(context.Background(), item("late", 5)); !errors.Is(err, ErrClosed) {
		t.Fatalf("Add after Stop = %v, want ErrClosed", err)
	}
	h.Stop() // idempotent
	h.Drain()
}

func TestStopWhileBlockedOnOut(t *testing.T) {
	alloc := newCountingAlloc()
	b := newBatcher(t, DefaultMaxLen, WithMaxBatchRows(1), WithOutputSize(0), WithAllocator(alloc))
	h := b.Start(context.Background())
	mustAdd(t, b, item("a", 10), item("b", 10))
	// Nobody reads Out: the loop builds batch "a" and blocks sending it.
	testutil.EventuallyTrue(t, wait, "batch a built", func() bool { return alloc.outstanding() == 1 })
	h.Stop()
	waitDone(t, h)
	var ids []string
	for _, it := range h.Pending() {
		ids = append(ids, it.ID)
	}
	if !slices.Equal(ids, []string{"a", "b"}) {
		t.Fatalf("Pending = %v, want [a b]", ids)
	}
	if n := alloc.outstanding(); n != 0 {
		t.Fatalf("%d buffers not freed after an abandoned send", n)
	}
}

func TestContextCancelActsLikeStop(t *testing.T) {
	b := newBatcher(t, DefaultMaxLen, WithMaxWait(time.Hour))
	ctx, cancel := context.WithCancel(context.Background())
	h := b.Start(ctx)
	mustAdd(t, b, item("a", 10), item("b", 200))
	cancel()
	waitDone(t, h)
	if _, ok := <-b.Out(); ok {
		t.Fatal("cancel emitted a batch")
	}
	if len(h.Pending()) != 2 {
		t.Fatalf("Pending = %d items, want 2", len(h.Pending()))
	}
	if err := b.Add(context.Background(), item("late", 5)); !errors.Is(err, ErrClosed) {
		t.Fatalf("Add after cancel = %v, want ErrClosed", err)
	}
}

func TestAddBlocksWhenQueueFull(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := newBatcher(t, DefaultMaxLen, WithQueueSize(1))
		mustAdd(t, b, item("a", 10)) // fills the queue; no loop yet
		start := time.Now()
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
		defer cancel()
		err := b.Add(ctx, item("b", 10))
		if !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), `"b"`) {
			t.Fatalf("Add on a full queue = %v, want wrapped DeadlineExceeded naming the item", err)
		}
		if waited := time.Since(start); waited != 20*time.Millisecond {
			t.Fatalf("Add returned after %v, want at its 20ms deadline", waited)
		}
	})
}

func TestBackpressureFromSlowConsumer(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		// One row per batch, no output buffer, queue of 1: with nobody reading
		// Out, the loop blocks sending batch 1, item 2 fills the queue and the
		// Add of item 3 has to wait.
		b := newBatcher(t, DefaultMaxLen, WithMaxBatchRows(1), WithOutputSize(0), WithQueueSize(1))
		h := b.Start(context.Background())
		mustAdd(t, b, item("1", 10), item("2", 10))
		addCtx, cancelAdd := context.WithCancel(context.Background())
		res := make(chan error, 4)
		go func() {
			for _, id := range []string{"3", "4"} {
				if err := b.Add(addCtx, item(id, 10)); err != nil {
					res <- err
					return
				}
			}
			res <- nil
		}()
		synctest.Wait() // the loop and the producer are both blocked now
		select {
		case err := <-res:
			t.Fatalf("Add returned %v while the pipeline is full", err)
		default:
		}
		cancelAdd()
		if err := <-res; !errors.Is(err, context.Canceled) {
			t.Fatalf("blocked Add = %v, want wrapped context.Canceled", err)
		}
		// Reading Out releases the pressure.
		for want := 1; want <= 2; want++ {
			if batch := next(t, b); batch.Items[0].ID != fmt.Sprint(want) {
				t.Fatalf("batch %d holds %s", want, batch.Items[0].ID)
			}
		}
		h.Stop()
		waitDone(t, h)
	})
}

func TestBlockedAddReturnsErrClosed(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := newBatcher(t, DefaultMaxLen, WithQueueSize(0), WithOutputSize(0), WithMaxBatchRows(1))
		h := b.Start(context.Background())
		if h2 := b.Start(context.Background()); h2 != h {
			t.Fatal("second Start returned another Handle")
		}
		mustAdd(t, b, item("a", 10)) // the loop takes it and blocks sending its batch
		res := make(chan error, 1)
		go func() { res <- b.Add(context.Background(), item("b", 10)) }()
		synctest.Wait()
		if len(res) != 0 {
			t.Fatalf("Add of b returned %v with the loop blocked on its consumer", <-res)
		}
		h.Stop()
		if err := <-res; !errors.Is(err, ErrClosed) {
			t.Fatalf("Add blocked across Stop = %v, want ErrClosed", err)
		}
		waitDone(t, h)
		if p := h.Pending(); len(p) != 1 || p[0].ID != "a" {
			t.Fatalf("Pending = %v, want [a]", p)
		}
	})
}

func TestAddRejects(t *testing.T) {
	b := newBatcher(t, 100)
	if err := b.Add(context.Background(), Item{ID: "e"}); !errors.Is(err, ErrEmpty) {
		t.Errorf("empty: %v, want ErrEmpty", err)
	}
	if err := b.Add(context.Background(), item("long", 101)); !errors.Is(err, ErrTooLong) {
		t.Errorf("101 residues: %v, want ErrTooLong", err)
	}
	if err := b.Add(context.Background(), item("ok", 100)); err != nil {
		t.Errorf("100 residues: %v", err)
	}
}

func TestPaddingContentExact(t *testing.T) {
	// A garbage-filled allocator proves every element is written.
	alloc := newCountingAlloc()
	alloc.garbage = 77
	b := newBatcher(t, 6, WithBucketStep(8), WithMaxWait(time.Hour), WithAllocator(alloc))
	h := b.Start(context.Background())
	now := time.Now()
	mustAdd(t, b,
		Item{ID: "a", Residues: []byte("MKT"), Arrived: now},
		Item{ID: "b", Residues: []byte("AYIAK"), Arrived: now.Add(time.Millisecond)})
	batches := drainAll(t, b, h)
	if len(batches) != 1 {
		t.Fatalf("%d batches, want 1", len(batches))
	}
	batch := batches[0]
	wantIDs := []int64{
		0, 20, 15, 11, 2, 1, 1, 1,
		0, 5, 19, 12, 5, 15, 2, 1,
	}
	wantMask := []int64{
		1, 1, 1, 1, 1, 0, 0, 0,
		1, 1, 1, 1, 1, 1, 1, 0,
	}
	if batch.Rows != 2 || batch.Cols != 8 || !slices.Equal(batch.InputIDs, wantIDs) || !slices.Equal(batch.Mask, wantMask) {
		t.Fatalf("batch %dx%d\n ids  %v\n mask %v", batch.Rows, batch.Cols, batch.InputIDs, batch.Mask)
	}
	if batch.Tokens != 12 || batch.PaddingEfficiency() != 12.0/16 {
		t.Fatalf("Tokens %d, efficiency %v; want 12, 0.75", batch.Tokens, batch.PaddingEfficiency())
	}
	batch.Release()
}

func TestReleaseReturnsBuffers(t *testing.T) {
	alloc := newCountingAlloc()
	b := newBatcher(t, DefaultMaxLen, WithMaxBatchRows(2), WithMaxWait(time.Hour), WithAllocator(alloc))
	h := b.Start(context.Background())
	for i := range 7 {
		mustAdd(t, b, item(fmt.Sprint(i), 20+i*100))
	}
	batches := drainAll(t, b, h)
	if alloc.allocs() != len(batches) || alloc.outstanding() != len(batches) {
		t.Fatalf("%d batches, %d allocs, %d outstanding", len(batches), alloc.allocs(), alloc.outstanding())
	}
	for _, batch := range batches {
		items := batch.Items
		batch.Release()
		batch.Release() // idempotent
		if batch.InputIDs != nil || batch.Mask != nil {
			t.Fatal("Release left the buffers on the batch")
		}
		if len(batch.Items) != len(items) {
			t.Fatal("Release dropped the items")
		}
	}
	if n := alloc.outstanding(); n != 0 {
		t.Fatalf("%d buffers outstanding after Release", n)
	}
	if alloc.doubleFree {
		t.Fatal("a buffer was freed twice")
	}
}

func TestConcurrentProducers(t *testing.T) {
	const producers, each = 8, 300
	alloc := newCountingAlloc()
	b := newBatcher(t, 400, WithMaxWait(2*time.Millisecond), WithQueueSize(16), WithAllocator(alloc))
	h := b.Start(context.Background())
	var wg sync.WaitGroup
	for p := range producers {
		wg.Go(func() {
			r := rand.New(rand.NewPCG(uint64(p), 1))
			for i := range each {
				if err := b.Add(context.Background(), item(fmt.Sprintf("%d/%d", p, i), 1+r.IntN(400))); err != nil {
					t.Errorf("Add: %v", err)
					return
				}
			}
		})
	}
	go func() {
		wg.Wait()
		h.Drain()
	}()
	seen := map[string]int{}
	for batch := range b.Out() { // consumed on the test goroutine, so checkBatch may Fatal
		checkBatch(t, b, batch)
		for _, it := range batch.Items {
			seen[it.ID]++
		}
		batch.Release()
	}
	waitDone(t, h)
	if len(seen) != producers*each {
		t.Fatalf("%d distinct items emitted, want %d", len(seen), producers*each)
	}
	for id, n := range seen {
		if n != 1 {
			t.Fatalf("item %s emitted %d times", id, n)
		}
	}
	if alloc.outstanding() != 0 {
		t.Fatalf("%d buffers outstanding", alloc.outstanding())
	}
}

func TestStopRacingProducers(t *testing.T) {
	// Every accepted item comes out exactly once: in a batch or in Pending.
	b := newBatcher(t, 400, WithMaxWait(time.Millisecond), WithQueueSize(8))
	h := b.Start(context.Background())
	var mu sync.Mutex
	accepted := map[string]bool{}
	var wg sync.WaitGroup
	for p := range 4 {
		wg.Go(func() {
			for i := 0; ; i++ {
				id := fmt.Sprintf("%d/%d", p, i)
				if err := b.Add(context.Background(), item(id, 1+i%400)); err != nil {
					if !errors.Is(err, ErrClosed) {
						t.Errorf("Add: %v", err)
					}
					return
				}
				mu.Lock()
				accepted[id] = true
				mu.Unlock()
			}
		})
	}
	seen := map[string]int{}
	got := 0
	for batch := range b.Out() {
		for _, it := range batch.Items {
			seen[it.ID]++
		}
		batch.Release()
		if got++; got == 20 {
			h.Stop()
		}
	}
	wg.Wait()
	waitDone(t, h)
	for _, it := range h.Pending() {
		seen[it.ID]++
	}
	if len(seen) != len(accepted) {
		t.Fatalf("%d items out, %d accepted", len(seen), len(accepted))
	}
	for id := range accepted {
		if seen[id] != 1 {
			t.Fatalf("item %s came out %d times", id, seen[id])
		}
	}
}

func TestOptionValidation(t *testing.T) {
	for _, tc := range []struct {
		name   string
		maxLen int
		opt    Option
		want   string
	}{
		{"maxLen", 0, nil, "maxLen(0)"},
		{"step", 10, WithBucketStep(0), "WithBucketStep(0)"},
		{"buckets empty", 10, WithBuckets(nil), "WithBuckets([])"},
		{"buckets order", 10, WithBuckets([]int{64, 32}), "strictly ascending"},
		{"buckets tiny", 10, WithBuckets([]int{2, 64}), "≥ 3"},
		{"buckets short", 100, WithBuckets([]int{64, 101}), "last length 101 < maxLen+2 = 102"},
		{"tokens", 10, WithMaxBatchTokens(0), "WithMaxBatchTokens(0)"},
		{"rows", 10, WithMaxBatchRows(-1), "WithMaxBatchRows(-1)"},
		{"wait", 10, WithMaxWait(-time.Second), "WithMaxWait(-1s)"},
		{"queue", 10, WithQueueSize(-1), "WithQueueSize(-1)"},
		{"output", 10, WithOutputSize(-2), "WithOutputSize(-2)"},
		{"allocator", 10, WithAllocator(nil), "WithAllocator"},
		{"tokenizer", 10, WithTokenizer(nil), "WithTokenizer"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b, err := New(tc.maxLen, tc.opt)
			if !errors.Is(err, ErrOption) || b != nil {
				t.Fatalf("New = %v, %v; want ErrOption", b, err)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %q does not mention %q", err, tc.want)
			}
		})
	}
	if _, err := New(10, WithQueueSize(0), WithOutputSize(0), WithMaxWait(0), nil); err != nil {
		t.Fatalf("zero sizes and wait are valid: %v", err)
	}
}

func TestZeroMaxWaitEmitsPromptly(t *testing.T) {
	b := newBatcher(t, DefaultMaxLen, WithMaxWait(0))
	h := b.Start(context.Background())
	defer h.Stop()
	mustAdd(t, b, item("a", 10))
	if batch := next(t, b); batch.Reason != ReasonLinger || batch.Rows != 1 {
		t.Fatalf("got %s batch with %d rows", batch.Reason, batch.Rows)
	}
}

// TestAllocFailure: a batch whose buffers the Allocator cannot supply is
// emitted in its turn with Err (wrapping ErrAlloc and the Allocator's
// error), its items and no buffers; batching goes on, the next batch asks
// the Allocator again, and a drain flushes failed remainders the same way.
func TestAllocFailure(t *testing.T) {
	alloc := newCountingAlloc()
	noMem := errors.New("no pinned memory left")
	alloc.setFail(noMem)
	b := newBatcher(t, DefaultMaxLen, WithMaxBatchRows(2), WithMaxWait(time.Hour), WithAllocator(alloc))
	h := b.Start(context.Background())
	mustAdd(t, b, item("a", 10), item("b", 20))
	failed := next(t, b)
	var ids []string
	for _, it := range failed.Items {
		ids = append(ids, it.ID)
	}
	if !errors.Is(failed.Err, ErrAlloc) || !errors.Is(failed.Err, noMem) || failed.InputIDs != nil || failed.Mask != nil {
		t.Fatalf("batch after a failed Alloc: Err %v, %d ids, %d mask; want ErrAlloc wrapping the allocator's error, no buffers",
			failed.Err, len(failed.InputIDs), len(failed.Mask))
	}
	if failed.Seq != 1 || failed.Rows != 2 || failed.Cols != 64 || failed.Reason != ReasonFull || failed.Tokens != 34 ||
		!slices.Equal(ids, []string{"a", "b"}) || !failed.Oldest.Equal(failed.Items[0].Arrived) {
		t.Fatalf("failed batch %d: %d×%d %s, %d tokens, items %v", failed.Seq, failed.Rows, failed.Cols, failed.Reason, failed.Tokens, ids)
	}
	failed.Release() // nothing to give back
	failed.Release()

	alloc.setFail(nil)
	mustAdd(t, b, item("c", 10), item("d", 10))
	ok := next(t, b)
	checkBatch(t, b, ok)
	if ok.Err != nil || ok.Seq != 2 || ok.Items[0].ID != "c" {
		t.Fatalf("batch after the allocator recovered: Seq %d, Err %v, first item %s", ok.Seq, ok.Err, ok.Items[0].ID)
	}
	ok.Release()

	alloc.setFail(noMem)
	mustAdd(t, b, item("e", 10))
	rest := drainAll(t, b, h)
	if len(rest) != 1 || !errors.Is(rest[0].Err, ErrAlloc) || rest[0].Reason != ReasonDrain || rest[0].Items[0].ID != "e" {
		t.Fatalf("drain with a failing allocator: %d batches, want one drain batch of e with ErrAlloc", len(rest))
	}
	if p := h.Pending(); len(p) != 0 {
		t.Fatalf("Pending = %d items after a drain: a failed batch's items are the consumer's", len(p))
	}
	if alloc.outstanding() != 0 || alloc.allocs() != 1 || alloc.doubleFree {
		t.Fatalf("%d outstanding, %d allocations (want 0, 1), double free %v", alloc.outstanding(), alloc.allocs(), alloc.doubleFree)
	}
}

// shortAlloc returns one element too few and counts what it is given back.
type shortAlloc struct {
	mu    sync.Mutex
	freed int
}

func (a *shortAlloc) Alloc(n int) (ids, mask []int64, err error) {
	return make([]int64, n-1), make([]int64, n-1), nil
}

func (a *shortAlloc) Free(ids, mask []int64) {
	a.mu.Lock()
	a.freed++
	a.mu.Unlock()
}

// TestAllocWrongLength: slices of the wrong length are an allocation
// failure too (never an out-of-range write), and go back to the allocator.
func TestAllocWrongLength(t *testing.T) {
	alloc := &shortAlloc{}
	b := newBatcher(t, DefaultMaxLen, WithMaxWait(time.Hour), WithAllocator(alloc))
	h := b.Start(context.Background())
	mustAdd(t, b, item("a", 10))
	batches := drainAll(t, b, h)
	if len(batches) != 1 || !errors.Is(batches[0].Err, ErrAlloc) || !strings.Contains(batches[0].Err.Error(), "63 ids") {
		t.Fatalf("short buffers: %d batches, Err %v; want one with ErrAlloc naming the length", len(batches), batches[0].Err)
	}
	alloc.mu.Lock()
	defer alloc.mu.Unlock()
	if alloc.freed != 1 {
		t.Fatalf("short buffers freed %d times, want 1", alloc.freed)
	}
}

// TestStopWhileBlockedOnFailedBatch: a failed batch the consumer never takes
// goes to Pending like any other.
func TestStopWhileBlockedOnFailedBatch(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		alloc := newCountingAlloc()
		alloc.setFail(errors.New("no memory"))
		b := newBatcher(t, DefaultMaxLen, WithMaxBatchRows(1), WithOutputSize(0), WithAllocator(alloc))
		h := b.Start(context.Background())
		mustAdd(t, b, item("a", 10))
		synctest.Wait() // the loop is blocked sending a's failed batch
		h.Stop()
		waitDone(t, h)
		if p := h.Pending(); len(p) != 1 || p[0].ID != "a" {
			t.Fatalf("Pending = %v, want [a]", p)
		}
	})
}

func TestGoAllocatorReuse(t *testing.T) {
	a := NewGoAllocator()
	alloc := func(n int) (ids, mask []int64) {
		t.Helper()
		ids, mask, err := a.Alloc(n)
		if err != nil {
			t.Fatalf("Alloc(%d): %v", n, err)
		}
		return ids, mask
	}
	ids, mask := alloc(100)
	if len(ids) != 100 || len(mask) != 100 {
		t.Fatalf("Alloc(100) gave %d, %d", len(ids), len(mask))
	}
	a.Free(ids, mask)
	ids2, mask2 := alloc(90) // same size class
	if len(ids2) != 90 || len(mask2) != 90 || &ids2[0] != &ids[0] || &mask2[0] != &mask[0] {
		t.Fatal("Alloc after Free did not reuse the buffers")
	}
	ids3, _ := alloc(90)
	if &ids3[0] == &ids[0] {
		t.Fatal("a buffer in use was handed out twice")
	}
	a.Free(make([]int64, 100), make([]int64, 100)) // foreign: ignored
	if x, _ := alloc(100); cap(x) != 128 {
		t.Fatalf("foreign buffer reused: cap %d", cap(x))
	}
	if x, y := alloc(0); x != nil || y != nil {
		t.Fatal("Alloc(0) returned buffers")
	}
}

// countingAlloc is a GoAllocator that counts and checks Alloc/Free pairs,
// and fails every Alloc while setFail has set an error.
type countingAlloc struct {
	inner      *GoAllocator
	garbage    int64 // if non-zero, fill fresh buffers with it
	mu         sync.Mutex
	live       map[*int64]bool
	total      int
	doubleFree bool
	fail       error
}

func newCountingAlloc() *countingAlloc {
	return &countingAlloc{inner: NewGoAllocator(), live: map[*int64]bool{}}
}

func (a *countingAlloc) setFail(err error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.fail = err
}

func (a *countingAlloc) Alloc(n int) (ids, mask []int64, err error) {
	a.mu.Lock()
	fail := a.fail
	a.mu.Unlock()
	if fail != nil {
		return nil, nil, fail
	}
	if ids, mask, err = a.inner.Alloc(n); err != nil {
		return nil, nil, err
	}
	if a.garbage != 0 {
		for i := range ids {
			ids[i], mask[i] = a.garbage, a.garbage
		}
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	a.live[&ids[0]] = true
	a.total++
	return ids, mask, nil
}

func (a *countingAlloc) Free(ids, mask []int64) {
	a.mu.Lock()
	if !a.live[&ids[0]] {
		a.doubleFree = true
	}
	delete(a.live, &ids[0])
	a.mu.Unlock()
	a.inner.Free(ids, mask)
}

func (a *countingAlloc) outstanding() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return len(a.live)
}

func (a *countingAlloc) allocs() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.total
}
