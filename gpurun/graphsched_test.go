package gpurun

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/seqembed/seqembed/internal/testutil"
)

// TestSlotRing: sets are handed out round robin, each to one batch until it is released, and a
// set cannot be released (reused) while the session's thread owns it.
func TestSlotRing(t *testing.T) {
	r := newSlotRing(2)
	a, ok := r.acquire()
	if !ok || a != 0 {
		t.Fatalf("first acquire = %d, %v", a, ok)
	}
	b, ok := r.acquire()
	if !ok || b != 1 {
		t.Fatalf("second acquire = %d, %v", b, ok)
	}
	if _, ok := r.acquire(); ok || r.busy != 2 {
		t.Fatalf("a third set from a ring of two (busy %d)", r.busy)
	}
	for _, err := range []error{r.queue(a), r.start(a)} {
		if err != nil {
			t.Fatal(err)
		}
	}
	if err := r.release(a); err == nil {
		t.Error("released a running set")
	}
	if r.cancel(a) {
		t.Error("cancelled a running set")
	}
	if err := r.finish(a); err != nil {
		t.Fatal(err)
	}
	if err := r.finish(a); err == nil {
		t.Error("finished a set twice")
	}
	// b: queued, then cancelled by its caller, released.
	if err := r.queue(b); err != nil {
		t.Fatal(err)
	}
	if err := r.release(b); err == nil {
		t.Error("released a queued set")
	}
	if !r.cancel(b) {
		t.Fatal("could not cancel a queued set")
	}
	if err := r.start(b); err == nil {
		t.Error("started a cancelled set")
	}
	if err := r.release(b); err != nil {
		t.Fatal(err)
	}
	// Round robin: b (1) was released first, but the next set after a (0) is 1 anyway; once a is
	// released too, the ring goes on from where it left off rather than reusing the last one.
	if k, ok := r.acquire(); !ok || k != 1 {
		t.Fatalf("acquire after releasing 1 = %d, %v", k, ok)
	}
	if err := r.release(a); err != nil {
		t.Fatal(err)
	}
	if err := r.release(a); err == nil {
		t.Error("released a free set")
	}
	if k, ok := r.acquire(); !ok || k != 0 {
		t.Fatalf("acquire = %d, %v; want 0", k, ok)
	}
	for _, err := range []error{r.move(5, setFree, setFilling), r.release(-1)} {
		if err == nil {
			t.Error("a set out of range was accepted")
		}
	}
	if s := setState(42).String(); s != "setState(42)" {
		t.Errorf("String of an unknown state = %q", s)
	}
}

// TestSlotRingEvents drives a ring the way the pool does, with fake completion signals for the
// copies in and out arriving in random order: a set is handed out again only after the batch
// before it in that set has seen both of its copies done, and never two batches at once.
func TestSlotRingEvents(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	const sets = 3
	r := newSlotRing(sets)
	type batch struct {
		set             int
		inDone, outDone bool // fake event signals
		stage           int  // 0 queued, 1 running, 2 finished
	}
	var live []*batch
	owner := map[int]*batch{}
	for step := 0; step < 5000; step++ {
		switch op := rng.IntN(5); {
		case op == 0: // a new batch
			k, ok := r.acquire()
			if !ok {
				if len(live) != sets {
					t.Fatalf("step %d: no set with %d of %d in use", step, len(live), sets)
				}
				continue
			}
			if owner[k] != nil {
				t.Fatalf("step %d: set %d handed out while batch %+v holds it", step, k, *owner[k])
			}
			b := &batch{set: k}
			owner[k] = b
			live = append(live, b)
			if err := r.queue(k); err != nil {
				t.Fatal(err)
			}
		case len(live) == 0:
		default:
			b := live[rng.IntN(len(live))]
			switch {
			case op == 1 && !b.inDone:
				b.inDone = true // the copy in's event fires
			case op == 2 && b.stage == 0 && b.inDone:
				if err := r.start(b.set); err != nil {
					t.Fatal(err)
				}
				b.stage = 1
			case op == 3 && b.stage == 1:
				if err := r.finish(b.set); err != nil {
					t.Fatal(err)
				}
				b.stage = 2
			case op == 4 && b.stage == 2 && !b.outDone:
				b.outDone = true // the copy out's event fires; the caller releases
				if err := r.release(b.set); err != nil {
					t.Fatal(err)
				}
				owner[b.set] = nil
				live = slices.DeleteFunc(live, func(x *batch) bool { return x == b })
			}
		}
		if r.busy != len(live) {
			t.Fatalf("step %d: ring says %d sets busy, %d batches live", step, r.busy, len(live))
		}
	}
}

func TestLeastLoaded(t *testing.T) {
	for _, c := range []struct {
		busy []int
		sets int
		want int
	}{
		{[]int{0, 0}, 2, 0},
		{[]int{1, 0}, 2, 1},
		{[]int{1, 1}, 2, 0},
		{[]int{2, 1}, 2, 1},
		{[]int{2, 2}, 2, -1},
		{[]int{1, 1, 0}, 1, 2},
		{nil, 2, -1},
	} {
		if got := leastLoaded(c.busy, c.sets); got != c.want {
			t.Errorf("leastLoaded(%v, %d) = %d, want %d", c.busy, c.sets, got, c.want)
		}
	}
}

func TestGraphRunBusy(t *testing.T) {
	t0 := time.Unix(1000, 0)
	at := func(ms int) time.Time { return t0.Add(time.Duration(ms) * time.Millisecond) }
	batches := []GraphBatch{
		{RunStart: at(10), RunEnd: at(20)},
		{RunStart: at(0), RunEnd: at(5)},
		{RunStart: at(15), RunEnd: at(30)}, // overlaps the first: 10..30
		{RunStart: at(12), RunEnd: at(14)}, // inside it
		{RunStart: at(40), RunEnd: at(41)},
		{}, // a batch without a run
	}
	if got, want := GraphRunBusy(batches), 26*time.Millisecond; got != want {
		t.Errorf("GraphRunBusy = %v, want %v", got, want)
	}
	if got := GraphRunBusy(nil); got != 0 {
		t.Errorf("GraphRunBusy(nil) = %v", got)
	}
}

// fakeDevice is a graphDevice whose device buffers are Go slices and whose copies in and out run
// on goroutines that finish after a random delay, closing a channel (the set's fake CUDA event).
// It checks what the real device relies on: a set's buffers are not written by a copy in while an
// earlier batch still uses them, a replay finds its inputs complete and padded and its outputs no
// longer being copied out, and captures and close find nothing in flight. The copies read and
// write the callers' memory, so the race detector sees any that outlives its Embed call.
type fakeDevice struct {
	dim, sets int
	spins     int // a plain run's length, in 20 µs steps, unless terminated
	delay     func() time.Duration
	gate      func(b *graphBatch) // called at the start of run; may block
	onCapture func()

	mu       sync.Mutex
	shapes   map[int]int // cols -> rows
	set      []*fakeSet
	active   int // copies and runs in flight
	problems []string
	term     []atomic.Bool
	runs     atomic.Int64
}

type fakeSet struct {
	ids, mask       []int64
	out             []float32
	inDone, outDone chan struct{}
	inBusy, outBusy bool
	running         bool
	cols            int
}

func newFakeDevice(dim, sets int, seed uint64) *fakeDevice {
	var mu sync.Mutex
	rng := rand.New(rand.NewPCG(seed, seed+1))
	d := &fakeDevice{dim: dim, sets: sets, spins: 5, shapes: map[int]int{}, term: make([]atomic.Bool, sets),
		delay: func() time.Duration {
			mu.Lock()
			defer mu.Unlock()
			return time.Duration(rng.IntN(300)) * time.Microsecond
		}}
	for range sets {
		done := make(chan struct{})
		close(done)
		d.set = append(d.set, &fakeSet{inDone: done, outDone: done})
	}
	return d
}

func (d *fakeDevice) problem(format string, args ...any) {
	d.problems = append(d.problems, fmt.Sprintf(format, args...))
}

// fakeEmbed is the model the fake device runs: every output of a row depends on all its tokens.
func fakeEmbed(ids, mask []int64, dim int, out []float32) {
	var h int64
	for j := range ids {
		h = h*31 + ids[j]*2 + mask[j]
	}
	for k := range dim {
		out[k] = float32(h%100003) + float32(k)/8
	}
}

func (d *fakeDevice) captured(rows, cols int) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	r, ok := d.shapes[cols]
	return ok && rows <= r
}

func (d *fakeDevice) copyIn(b *graphBatch) error {
	d.mu.Lock()
	s := d.set[b.set]
	if s.inBusy || s.outBusy || s.running {
		d.problem("copy in into set %d in use (in %v, out %v, running %v)", b.set, s.inBusy, s.outBusy, s.running)
	}
	rows := d.shapes[b.in.Cols]
	s.inBusy, s.cols = true, b.in.Cols
	done := make(chan struct{})
	s.inDone = done
	d.active++
	d.mu.Unlock()
	n, all := b.in.Rows*b.in.Cols, rows*b.in.Cols
	ids, mask, delay := b.in.IDs[:n], b.in.Mask[:n], d.delay()
	go func() {
		time.Sleep(delay)
		d.mu.Lock()
		copy(s.ids, ids)
		copy(s.mask, mask)
		padRows(s.ids[n:all], s.mask[n:all], b.in.Cols) // n is a multiple of cols
		s.inBusy = false
		d.active--
		d.mu.Unlock()
		close(done)
	}()
	return nil
}

func (d *fakeDevice) wait(set int, in bool) error {
	d.mu.Lock()
	ch := d.set[set].outDone
	if in {
		ch = d.set[set].inDone
	}
	d.mu.Unlock()
	<-ch
	return nil
}

func (d *fakeDevice) waitIn(set int) error  { return d.wait(set, true) }
func (d *fakeDevice) waitOut(set int) error { return d.wait(set, false) }

func (d *fakeDevice) run(b *graphBatch) error {
	d.runs.Add(1)
	if d.gate != nil {
		d.gate(b)
	}
	if !b.replay { // a plain run, terminable
		b.runStart = time.Now()
		defer func() { b.runEnd = time.Now() }()
		for range d.spins {
			if d.term[b.set].Load() {
				return errors.New("fake run terminated")
			}
			time.Sleep(20 * time.Microsecond)
		}
		for r := range b.in.Rows {
			fakeEmbed(b.in.IDs[r*b.in.Cols:(r+1)*b.in.Cols], b.in.Mask[r*b.in.Cols:(r+1)*b.in.Cols], d.dim, b.out[r*d.dim:(r+1)*d.dim])
		}
		return nil
	}
	if !b.overlap { // synchronous: copy in, replay, copy out
		if err := d.copyIn(b); err != nil {
			return err
		}
		_ = d.waitIn(b.set)
	} else if err := d.waitIn(b.set); err != nil {
		return err
	}
	d.mu.Lock()
	s := d.set[b.set]
	rows, cols := d.shapes[b.in.Cols], b.in.Cols
	if s.inBusy || s.outBusy || s.running || s.cols != cols {
		d.problem("replay of set %d: copy in busy %v, copy out busy %v, running %v, cols %d (batch %d)", b.set, s.inBusy, s.outBusy, s.running, s.cols, cols)
	}
	s.running = true
	d.active++
	d.mu.Unlock()
	b.runStart = time.Now()
	time.Sleep(d.delay())
	for r := range rows {
		ids, mask := s.ids[r*cols:(r+1)*cols], s.mask[r*cols:(r+1)*cols]
		if r >= b.in.Rows && (ids[0] != clsID || ids[1] != eosID || mask[1] != 1 || (cols > 2 && mask[2] != 0)) {
			d.problem("replay of set %d: row %d of %d is not padding", b.set, r, b.in.Rows)
		}
		fakeEmbed(ids, mask, d.dim, s.out[r*d.dim:(r+1)*d.dim])
	}
	b.runEnd = time.Now()
	d.mu.Lock()
	s.running = false
	d.active--
	s.outBusy = true
	done := make(chan struct{})
	s.outDone = done
	d.active++
	d.mu.Unlock()
	n, out, delay := b.in.Rows*d.dim, b.out, d.delay()
	copyOut := func() {
		d.mu.Lock()
		copy(out, s.out[:n])
		s.outBusy = false
		d.active--
		d.mu.Unlock()
		close(done)
	}
	if !b.overlap {
		copyOut()
		return nil
	}
	go func() {
		time.Sleep(delay)
		copyOut()
	}()
	b.outIssued = true
	return nil
}

func (d *fakeDevice) terminate(set int, on bool) { d.term[set].Store(on) }

func (d *fakeDevice) times(int) (in, out time.Duration) {
	return time.Microsecond, 2 * time.Microsecond
}

func (d *fakeDevice) capture(ctx context.Context, rows, cols int) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if d.onCapture != nil {
		d.onCapture()
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.active > 0 {
		d.problem("capture of %d×%d with %d copies or runs in flight", rows, cols, d.active)
	}
	if r, ok := d.shapes[cols]; ok && r >= rows {
		return nil
	}
	d.shapes[cols] = rows
	for _, s := range d.set {
		if need := rows * cols; len(s.ids) < need {
			s.ids, s.mask = make([]int64, need), make([]int64, need)
		}
		if need := rows * d.dim; len(s.out) < need {
			s.out = make([]float32, need)
		}
	}
	return nil
}

func (d *fakeDevice) close() {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.active > 0 {
		d.problem("close with %d copies or runs in flight", d.active)
	}
}

// fakePool is a pool of n sessions on fake devices.
func fakePool(t *testing.T, n, sets int, overlap bool, timeline func(GraphBatch), tune func(*fakeDevice)) (*graphPool, []*fakeDevice) {
	t.Helper()
	var devs []*fakeDevice
	p, err := newGraphPool(n, sets, overlap, timeline, func(i int) (graphDevice, error) {
		d := newFakeDevice(4, sets, uint64(i+1))
		if tune != nil {
			tune(d)
		}
		devs = append(devs, d)
		return d, nil
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		p.close()
		for i, d := range devs {
			for _, m := range d.problems {
				t.Errorf("session %d: %s", i, m)
			}
		}
	})
	return p, devs
}

// fakeBatch is a rows×cols batch of tokens derived from seed.
func fakeBatch(rows, cols int, seed int) Input {
	ids, mask := make([]int64, rows*cols), make([]int64, rows*cols)
	for i := range ids {
		r, j := i/cols, i%cols
		n := 2 + (seed+r*7)%(cols-1)
		switch {
		case j == 0:
			ids[i], mask[i] = clsID, 1
		case j < n:
			ids[i], mask[i] = int64(4+(seed*13+i)%20), 1
		default:
			ids[i], mask[i] = padID, 0
		}
	}
	return Input{IDs: ids, Mask: mask, Rows: rows, Cols: cols}
}

// TestGraphPool runs batches from many goroutines through pools of fake sessions, with copy
// overlap (one and two sessions of two buffer sets) and without: every batch gets its own
// embeddings, captured shapes replay (padded), others run plainly, nothing a batch enqueued is
// in flight once its Embed returns (its inputs and outputs are scribbled over at once), and the
// stats and timeline count every batch.
func TestGraphPool(t *testing.T) {
	for _, c := range []struct {
		name           string
		sessions, sets int
		overlap        bool
	}{
		{"overlap, 1 session", 1, 2, true},
		{"overlap, 2 sessions", 2, 2, true},
		{"sync, 2 sessions", 2, 1, false},
	} {
		t.Run(c.name, func(t *testing.T) {
			var mu sync.Mutex
			var timeline []GraphBatch
			p, devs := fakePool(t, c.sessions, c.sets, c.overlap, func(b GraphBatch) {
				mu.Lock()
				timeline = append(timeline, b)
				mu.Unlock()
			}, nil)
			for _, s := range [][2]int{{8, 64}, {4, 128}, {2, 128}} { // the last: already covered
				if err := p.capture(context.Background(), s[0], s[1]); err != nil {
					t.Fatal(err)
				}
			}
			const workers, each, dim = 9, 30, 4
			var replayed atomic.Int64
			var wg sync.WaitGroup
			for w := range workers {
				wg.Go(func() {
					for i := range each {
						seed := w*1000 + i
						cols := []int{64, 128, 192}[seed%3] // 192: no graph
						rows := 1 + seed%9                  // 9 rows of 64: more than the graph's 8
						in := fakeBatch(rows, cols, seed)
						out := make([]float32, rows*dim)
						want := make([]float32, rows*dim)
						for r := range rows {
							fakeEmbed(in.IDs[r*cols:(r+1)*cols], in.Mask[r*cols:(r+1)*cols], dim, want[r*dim:(r+1)*dim])
						}
						if err := p.embed(context.Background(), in, out); err != nil {
							t.Error(err)
							return
						}
						if !slices.Equal(out, want) {
							t.Errorf("batch %d (%d×%d): wrong embeddings", seed, rows, cols)
						}
						if (cols == 64 && rows <= 8) || (cols == 128 && rows <= 4) {
							replayed.Add(1)
						}
						// The batch is over: anything still copying would race with this.
						clear(in.IDs)
						clear(out)
					}
				})
			}
			wg.Wait()
			st := p.stats.snapshot()
			if st.Batches != workers*each || st.Replayed != replayed.Load() {
				t.Errorf("stats: %d batches, %d replayed; want %d, %d", st.Batches, st.Replayed, workers*each, replayed.Load())
			}
			if len(timeline) != workers*each {
				t.Fatalf("%d timeline entries, want %d", len(timeline), workers*each)
			}
			var runs int64
			for _, d := range devs {
				runs += d.runs.Load()
			}
			if runs != workers*each {
				t.Errorf("%d runs on the devices, want %d", runs, workers*each)
			}
			var first, last time.Time
			for i, b := range timeline {
				if b.Overlap != (c.overlap && b.Replayed) || b.Set >= c.sets || b.Session >= c.sessions {
					t.Fatalf("timeline %d: %+v", i, b)
				}
				if b.Queued.After(b.RunStart) || b.RunStart.After(b.RunEnd) || b.RunEnd.After(b.Done) {
					t.Fatalf("timeline %d out of order: %+v", i, b)
				}
				if b.Replayed != (b.CopyIn > 0) {
					t.Fatalf("timeline %d: copy times %v for replayed=%v", i, b.CopyIn, b.Replayed)
				}
				if first.IsZero() || b.Queued.Before(first) {
					first = b.Queued
				}
				if b.Done.After(last) {
					last = b.Done
				}
			}
			if busy := GraphRunBusy(timeline); busy <= 0 || busy > last.Sub(first) {
				t.Errorf("runs busy %v of %v", busy, last.Sub(first))
			}
			if st.Run <= 0 || st.Gap <= 0 || st.CopyIn != time.Duration(replayed.Load())*time.Microsecond {
				t.Errorf("stats %+v", st)
			}
		})
	}
}

// TestGraphPoolCancel: a batch queued behind another is taken out of the queue when its context
// ends, without waiting for the one ahead; its set and token are free again at once; a plain run
// in progress is terminated, and its flag cleared after; a call waiting for a token gives up.
func TestGraphPoolCancel(t *testing.T) {
	hold := make(chan struct{})
	entered := make(chan int, 8)
	p, devs := fakePool(t, 1, 2, true, nil, func(d *fakeDevice) {
		d.gate = func(b *graphBatch) {
			if b.in.IDs[1] == 99 { // the batch to hold
				entered <- 0
				<-hold
			}
		}
	})
	if err := p.capture(context.Background(), 4, 64); err != nil {
		t.Fatal(err)
	}
	held := fakeBatch(2, 64, 1)
	held.IDs[1] = 99
	heldDone := make(chan error, 1)
	go func() { heldDone <- p.embed(context.Background(), held, make([]float32, 2*4)) }()
	<-entered

	ctx, cancel := context.WithCancel(context.Background())
	queuedDone := make(chan error, 1)
	go func() { queuedDone <- p.embed(ctx, fakeBatch(3, 64, 2), make([]float32, 3*4)) }()
	testutil.Eventually(t, time.Minute, func() (bool, string) { // wait until it is queued
		p.mu.Lock()
		n := len(p.sessions[0].queue)
		p.mu.Unlock()
		return n == 1, fmt.Sprintf("%d batches queued on session 0, want 1", n)
	})
	// Both sets taken: a third call waits for a token, and gives up with its context.
	tctx, tcancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer tcancel()
	if err := p.embed(tctx, fakeBatch(1, 64, 3), make([]float32, 4)); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("waiting for a token: err = %v", err)
	}
	cancel()
	select {
	case err := <-queuedDone:
		if !errors.Is(err, context.Canceled) {
			t.Errorf("cancelled queued batch: err = %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("a cancelled queued batch waited for the batch ahead of it")
	}
	// Its set is free again: a batch goes in (and is queued behind the held one).
	in := fakeBatch(3, 64, 4)
	want, out := make([]float32, 3*4), make([]float32, 3*4)
	for r := range 3 {
		fakeEmbed(in.IDs[r*64:(r+1)*64], in.Mask[r*64:(r+1)*64], 4, want[r*4:(r+1)*4])
	}
	nextDone := make(chan error, 1)
	go func() { nextDone <- p.embed(context.Background(), in, out) }()
	close(hold)
	if err := <-heldDone; err != nil {
		t.Fatal(err)
	}
	if err := <-nextDone; err != nil || !slices.Equal(out, want) {
		t.Fatalf("batch after the cancelled one: %v, right embeddings %v", err, slices.Equal(out, want))
	}
	if got := devs[0].runs.Load(); got != 2 {
		t.Errorf("%d runs: the cancelled batch ran", got)
	}

	// A plain run (no graph of 128) is terminated once its context ends.
	ctx, cancel = context.WithCancel(context.Background())
	devs[0].spins = 1e6 // 20 s unless terminated
	devs[0].gate = func(b *graphBatch) {
		if !b.replay {
			cancel()
		}
	}
	err := p.embed(ctx, fakeBatch(2, 128, 5), make([]float32, 2*4))
	if err == nil || err.Error() != "fake run terminated" {
		t.Errorf("terminated plain run: err = %v", err)
	}
	for k := range devs[0].term {
		if devs[0].term[k].Load() {
			t.Errorf("set %d: terminate flag left on", k)
		}
	}
}

// TestGraphPoolCaptureWaits: a capture waits for the batches in flight (it takes every token), and
// batches wait for it.
func TestGraphPoolCaptureWaits(t *testing.T) {
	hold := make(chan struct{})
	entered := make(chan struct{}, 1)
	var capturing atomic.Bool
	p, devs := fakePool(t, 2, 2, true, nil, func(d *fakeDevice) {
		d.gate = func(b *graphBatch) {
			if capturing.Load() {
				d.mu.Lock()
				d.problem("a batch ran during a capture")
				d.mu.Unlock()
			}
			if b.in.IDs[1] == 99 {
				entered <- struct{}{}
				<-hold
			}
		}
		d.onCapture = func() { capturing.Store(true); time.Sleep(time.Millisecond); capturing.Store(false) }
	})
	if err := p.capture(context.Background(), 4, 64); err != nil {
		t.Fatal(err)
	}
	in := fakeBatch(2, 64, 1)
	in.IDs[1] = 99
	go func() {
		if err := p.embed(context.Background(), in, make([]float32, 8)); err != nil {
			t.Error(err)
		}
	}()
	<-entered
	captured := make(chan error, 1)
	go func() { captured <- p.capture(context.Background(), 8, 64) }()
	select {
	case err := <-captured:
		t.Fatalf("capture ran with a batch in flight: %v", err)
	case <-time.After(20 * time.Millisecond):
	}
	// A capture that gives up waiting for the tokens returns them.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Millisecond)
	defer cancel()
	if err := p.capture(ctx, 8, 128); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("capture with an ended context: err = %v", err)
	}
	close(hold)
	if err := <-captured; err != nil {
		t.Fatal(err)
	}
	if !devs[0].captured(8, 64) || !devs[1].captured(8, 64) || devs[0].captured(8, 128) {
		t.Error("captures did not reach the sessions as asked")
	}
	if err := p.embed(context.Background(), fakeBatch(8, 64, 2), make([]float32, 32)); err != nil {
		t.Fatal(err)
	}
}

// TestGraphPoolOpenError: a session that fails to open closes the ones opened before it.
func TestGraphPoolOpenError(t *testing.T) {
	var closed atomic.Int64
	_, err := newGraphPool(3, 2, true, nil, func(i int) (graphDevice, error) {
		if i == 2 {
			return nil, errors.New("no device")
		}
		return &closingDevice{fakeDevice: newFakeDevice(4, 2, 1), closed: &closed}, nil
	})
	if err == nil || err.Error() != "no device" || closed.Load() != 2 {
		t.Fatalf("err = %v, %d sessions closed; want no device, 2", err, closed.Load())
	}
}

type closingDevice struct {
	*fakeDevice
	closed *atomic.Int64
}

func (d *closingDevice) close() { d.closed.Add(1) }
