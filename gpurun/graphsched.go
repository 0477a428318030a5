package gpurun

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// The scheduling half of the CUDA-graph path, in pure Go: which session and buffer set a batch
// uses, when a set may be reused, the session goroutines' request loop, cancellation and the
// per-batch timeline. The device half (graph.go: ORT sessions, device buffers, copies, CUDA
// events) is behind graphDevice, so that make test drives all of this on the CPU with a fake
// device whose copies finish at random times (graphsched_test.go).
//
// What ORT 1.29 allows, and so why the copies overlap the way they do
//
//   - A session with enable_cuda_graph runs every kernel, capture and replay on one stream of its
//     own: the CUDA EP creates it when enable_cuda_graph or use_ep_level_unified_stream is set and
//     no user_compute_stream is given ("current cuda graph implementation only works with single
//     stream", CUDAExecutionProvider's constructor, onnxruntime/core/providers/cuda/
//     cuda_execution_provider.cc). The C API has no call that returns that stream for a session:
//     KernelContext_GetGPUComputeStream (onnxruntime_c_api.h) exists only inside a custom op's
//     kernel; SessionGetEpDeviceForInputs / CreateSyncStreamForEpDevice / RunOptionsSetSyncStream
//     (API 23/24) create a new OrtSyncStream for EPs appended as OrtEpDevices (not the CUDA EP
//     appended with SessionOptionsAppendExecutionProvider_CUDA_V2, as here), and say nothing of
//     graph replay, which launches on the stream the graph manager was given at capture
//     (CUDAGraphManager::Replay: cudaGraphLaunch(graph_exec, stream_), cuda_graph.cc);
//     SynchronizeBoundInputs / SynchronizeBoundOutputs end in the EP's Sync(), a
//     cudaDeviceSynchronize. Setting user_compute_stream as well failed ORT 1.29's capture with
//     CUDA error 900 (docs/perf.md, 2026-11-25), and recording ORT's runs into a graph of our
//     own is microsoft/onnxruntime#32081, open. So no CUDA event can be recorded on, or waited
//     for by, ORT's stream: cudaStreamWaitEvent ordering against it is not available.
//   - Run with a graph returns once the replay is done: CUDAGraphManager::Replay ends in
//     cudaStreamSynchronize(stream_), skipped only when the run config entry
//     disable_synchronize_execution_providers=1 is set (a replay ignored it, issue #20392, until
//     microsoft/onnxruntime#28686, merged 2026-05). seqembed never sets it: with no event on
//     ORT's stream, Run's return is the only sign that a replay is over.
//   - ORT keeps captured graphs per thread (CUDAExecutionProvider::PerThreadContext) and serves
//     one run at a time per graph-capturing session, and capture runs in
//     cudaStreamCaptureModeGlobal (CUDAGraphManager::CaptureBegin), where other threads' unsafe
//     CUDA calls break it: hence one goroutine locked to its thread per session, and captureMu.
//
// So the ordering is done on the host, and the overlap comes from doing the copies on other
// threads and streams than the replay's. With copy overlap (WithGraphCopyOverlap, the default)
// every session has two buffer sets per captured shape, each bound through its own IoBinding and
// captured as its own graph (its own gpu_graph_id: a graph's buffer addresses are fixed), so a
// session holds two batches at once. The Embed caller enqueues its batch's copy in (pinned host
// to the set's device inputs, padding rows device to device) on the session's copy-in stream and
// records a CUDA event, while the session's thread may still be replaying the other set's batch;
// the session's thread waits for that event (normally long done), replays, enqueues the copy out
// on the copy-out stream with an event, and goes straight on to the next batch; the caller waits
// for the copy out's event and returns. A set is handed out again only once its previous batch's
// copies are complete (slotRing). The alternative of one graph per shape fed device to device
// from staging buffers was not taken: with no event ordering on ORT's stream, that device copy
// would have to be finished, synchronously, before every replay and after it, which is the wait
// this removes. The cost is twice the captures (a longer warm-up) and two sets of small I/O
// buffers; the graphs' intermediate memory comes from the session's arena and is shared, as the
// session never runs two graphs at once.
//
// A session's thread only runs back to back when a second batch is waiting for it, so the
// overlap needs more batches in flight than sessions (WithGraphSessions); with as many as
// sessions, the sessions' streams overlap each other as they did before.

// setState is where one buffer set of a session is in a batch's life.
type setState uint8

const (
	setFree      setState = iota
	setFilling            // handed to a batch: its caller copies it in (or is about to queue it)
	setQueued             // waiting for the session's thread
	setCancelled          // its caller took it back from the queue before the session's thread took it
	setRunning            // on the session's thread: the graph reads the inputs, writes the outputs
	setDraining           // run over: the caller waits for the copies still in flight, then releases
)

var setStateNames = [...]string{"free", "filling", "queued", "cancelled", "running", "draining"}

func (s setState) String() string {
	if int(s) < len(setStateNames) {
		return setStateNames[s]
	}
	return fmt.Sprintf("setState(%d)", s)
}

// slotRing is the buffer sets of one session: acquire hands a free set to a batch, round robin
// (so that the set just released is the last to be reused), and the set stays the batch's until
// release. Release is refused while the session's thread owns the set (queued or running): the
// caller releases only after its run is over and it has waited for the set's copies in and out,
// which is what makes a set safe to reuse. Not safe for concurrent use (graphPool.mu guards it).
type slotRing struct {
	state []setState
	next  int
	busy  int
}

func newSlotRing(n int) *slotRing { return &slotRing{state: make([]setState, n)} }

// acquire marks the next free set filling and returns it; false when all are taken.
func (r *slotRing) acquire() (int, bool) {
	n := len(r.state)
	for i := range n {
		k := (r.next + i) % n
		if r.state[k] == setFree {
			r.state[k], r.next = setFilling, (k+1)%n
			r.busy++
			return k, true
		}
	}
	return 0, false
}

// move changes set from state from to state to; an error (and no change) if it is elsewhere.
func (r *slotRing) move(set int, from, to setState) error {
	if set < 0 || set >= len(r.state) {
		return fmt.Errorf("buffer set %d of %d", set, len(r.state))
	}
	if r.state[set] != from {
		return fmt.Errorf("buffer set %d is %s, not %s", set, r.state[set], from)
	}
	r.state[set] = to
	return nil
}

// queue: the caller has enqueued its copy in (if any) and hands the batch to the session's thread.
func (r *slotRing) queue(set int) error { return r.move(set, setFilling, setQueued) }

// cancel marks a queued set cancelled (its caller takes the batch out of the session's queue);
// false when the session's thread has taken it already.
func (r *slotRing) cancel(set int) bool { return r.move(set, setQueued, setCancelled) == nil }

// start: the session's thread takes the batch.
func (r *slotRing) start(set int) error { return r.move(set, setQueued, setRunning) }

// finish: the session's run of the set's batch is over (its copy out may be in flight).
func (r *slotRing) finish(set int) error { return r.move(set, setRunning, setDraining) }

// release frees the set; its caller has waited for every copy of the batch.
func (r *slotRing) release(set int) error {
	if set < 0 || set >= len(r.state) {
		return fmt.Errorf("buffer set %d of %d", set, len(r.state))
	}
	switch r.state[set] {
	case setFilling, setCancelled, setDraining:
		r.state[set] = setFree
		r.busy--
		return nil
	}
	return fmt.Errorf("buffer set %d is %s: it cannot be released", set, r.state[set])
}

// leastLoaded is the index of the session with the fewest sets in use among those with one free
// (the lowest index on a tie), or -1 when none has.
func leastLoaded(busy []int, sets int) int {
	best := -1
	for i, b := range busy {
		if b < sets && (best < 0 || b < busy[best]) {
			best = i
		}
	}
	return best
}

// GraphBatch is one batch's timeline on a CUDA-graph runner, handed to WithGraphTimeline's
// function once its outputs are in host memory. Times are the host's, except CopyIn and CopyOut.
type GraphBatch struct {
	Session, Set int  // the session that ran it and its buffer set (always 0 without copy overlap)
	Rows, Cols   int  // the batch's real rows and its length (a replay pads rows up to the graph's)
	Replayed     bool // it replayed a captured graph; false: a plain run of a shape without one
	Overlap      bool // its copies ran on the copy streams while the session's thread ran others

	// Queued: handed to the session's thread (with overlap: after its copy in was enqueued).
	// RunStart, RunEnd: ORT's Run on the session's thread, which returns once the replay is done
	// on the GPU; with overlap the thread first waits for the copy in's event, which lies
	// between Queued and RunStart, as does waiting for the batch before it. Done: the outputs
	// are in host memory (the caller's wait for the copy out, or the synchronous copies, lies
	// between RunEnd and Done).
	Queued, RunStart, RunEnd, Done time.Time
	// Gap: the session's thread between its previous run's end and this one's start (0 for its
	// first batch): the time the session's stream sat idle.
	Gap time.Duration
	// CopyIn, CopyOut: device time of the copies, from CUDA events on the copy streams (the copy
	// in includes the padding rows' device-to-device copies); 0 for a plain run.
	CopyIn, CopyOut time.Duration
}

// GraphStats are a CUDA-graph runner's cumulative counts and times over the batches that ran
// without an error (see GraphBatch for each time).
type GraphStats struct {
	Batches, Replayed int64
	Queue             time.Duration // Σ RunStart − Queued
	Run               time.Duration // Σ RunEnd − RunStart
	Finish            time.Duration // Σ Done − RunEnd
	Gap               time.Duration // Σ Gap
	CopyIn, CopyOut   time.Duration // Σ device copy times: with WithGraphTimeline only
}

// graphCounters accumulate GraphStats; safe for concurrent use.
type graphCounters struct {
	batches, replayed                        atomic.Int64
	queue, run, finish, gap, copyIn, copyOut atomic.Int64 // nanoseconds
}

func (c *graphCounters) add(b *GraphBatch) {
	c.batches.Add(1)
	if b.Replayed {
		c.replayed.Add(1)
	}
	c.queue.Add(int64(b.RunStart.Sub(b.Queued)))
	c.run.Add(int64(b.RunEnd.Sub(b.RunStart)))
	c.finish.Add(int64(b.Done.Sub(b.RunEnd)))
	c.gap.Add(int64(b.Gap))
	c.copyIn.Add(int64(b.CopyIn))
	c.copyOut.Add(int64(b.CopyOut))
}

func (c *graphCounters) snapshot() GraphStats {
	return GraphStats{Batches: c.batches.Load(), Replayed: c.replayed.Load(),
		Queue: time.Duration(c.queue.Load()), Run: time.Duration(c.run.Load()),
		Finish: time.Duration(c.finish.Load()), Gap: time.Duration(c.gap.Load()),
		CopyIn: time.Duration(c.copyIn.Load()), CopyOut: time.Duration(c.copyOut.Load())}
}

// GraphRunBusy is how long at least one of the batches' runs was in progress (the union of their
// [RunStart, RunEnd] intervals, across sessions): with the wall time of a window, an upper bound
// on the share of it the GPU had a replay to run, measured without NVML's sampling.
func GraphRunBusy(batches []GraphBatch) time.Duration {
	iv := make([][2]time.Time, 0, len(batches))
	for _, b := range batches {
		if b.RunEnd.After(b.RunStart) {
			iv = append(iv, [2]time.Time{b.RunStart, b.RunEnd})
		}
	}
	slices.SortFunc(iv, func(a, b [2]time.Time) int { return a[0].Compare(b[0]) })
	var busy time.Duration
	var end time.Time
	for _, x := range iv {
		switch {
		case x[0].After(end):
			busy += x[1].Sub(x[0])
			end = x[1]
		case x[1].After(end):
			busy += x[1].Sub(end)
			end = x[1]
		}
	}
	return busy
}

// graphBatch is one Embed call's batch on its way through a session.
type graphBatch struct {
	ctx     context.Context
	set     int
	in      Input
	out     []float32
	replay  bool // a captured graph's shape: the set's device buffers are used
	overlap bool // its caller enqueued the copy in; the session's thread waits for it, replays
	// and enqueues the copy out (graphDevice.run), which the caller waits for

	reply chan error // the session's thread's result

	// Set by the session's thread (read by the caller after the reply).
	outIssued        bool // the copy out is in flight
	runStart, runEnd time.Time
	gap              time.Duration
}

// graphDevice is one session's device side (graph.go; a fake in the tests). The pool calls
// captured, copyIn, waitIn, waitOut, terminate and times from the batch's caller goroutine while
// it owns the batch's set, run and capture from the session's goroutine, and close last, from
// the session's goroutine, with nothing in flight. Every method that enqueues device work
// leaves nothing of it in flight when it fails.
type graphDevice interface {
	// captured says whether rows×cols batches replay a graph (it has one of cols, of at least
	// rows). Stable while the caller holds a token of the pool (captures hold them all).
	captured(rows, cols int) bool
	// copyIn enqueues b's inputs into its set's device buffers and records the set's in-event.
	copyIn(b *graphBatch) error
	// waitIn blocks until the set's last copy in is done.
	waitIn(set int) error
	// run runs b on the session's thread, setting b.runStart and b.runEnd around ORT's Run. With
	// b.overlap it waits for the set's copy in, replays and enqueues the copy out (b.outIssued);
	// a replay without overlap copies in, replays and copies out synchronously; a batch that is
	// not a replay is a plain run from host memory, which terminate ends early.
	run(b *graphBatch) error
	// waitOut blocks until the set's last copy out is done.
	waitOut(set int) error
	// terminate sets (on) or clears the terminate flag of the set's plain runs.
	terminate(set int, on bool)
	// times are the device times of the set's last copies (0 when not timed).
	times(set int) (in, out time.Duration)
	// capture captures rows×cols graphs (all sets), waiting for the capture lock until ctx ends.
	capture(ctx context.Context, rows, cols int) error
	close()
}

// graphPool is a CUDA-graph runner's sessions. Embed takes a token (there are sessions × sets),
// then a free set of the least loaded session, and queues its batch on the session; a capture
// takes every token, so that no batch is in flight while it runs.
type graphPool struct {
	sessions []*graphSession
	sets     int  // buffer sets per session
	overlap  bool // replays' copies are enqueued by the callers, overlapping other batches' runs
	tokens   chan struct{}
	timeline func(GraphBatch) // nil: none
	stats    graphCounters

	mu   sync.Mutex // the sessions' rings and queues, busy
	busy []int      // scratch for leastLoaded
}

// graphSession is one session's goroutine, which owns its device side and runs its queued
// batches in order, locked to its OS thread: ORT keeps captured graphs in per-thread state, so
// every capture and replay must come from the same thread.
type graphSession struct {
	p     *graphPool
	index int
	ring  *slotRing     // p.mu
	queue []*graphBatch // p.mu: queued, in order
	wake  chan struct{} // a batch was queued (buffered: one pending wake-up at most)
	ctl   chan graphCapture
	done  chan struct{}
	dev   graphDevice // set by the goroutine before it reports ready
	last  time.Time   // the goroutine's: its last run's end
}

// graphCapture asks the session's goroutine to capture rows×cols; ctx bounds the wait for the
// capture lock.
type graphCapture struct {
	ctx        context.Context
	rows, cols int
	reply      chan error
}

// newGraphPool starts n sessions of sets buffer sets each, one after another, each opening its
// device with open(i) on its own goroutine.
func newGraphPool(n, sets int, overlap bool, timeline func(GraphBatch),
	open func(i int) (graphDevice, error)) (*graphPool, error) {
	p := &graphPool{sets: sets, overlap: overlap, timeline: timeline, tokens: make(chan struct{}, n*sets), busy: make([]int, n)}
	for i := range n {
		g := &graphSession{p: p, index: i, ring: newSlotRing(sets), wake: make(chan struct{}, 1),
			ctl: make(chan graphCapture), done: make(chan struct{})}
		ready := make(chan error, 1)
		go g.loop(ready, func() (graphDevice, error) { return open(i) })
		if err := <-ready; err != nil {
			<-g.done
			p.close()
			return nil, err
		}
		p.sessions = append(p.sessions, g)
	}
	for range n * sets {
		p.tokens <- struct{}{}
	}
	return p, nil
}

func (g *graphSession) loop(ready chan<- error, open func() (graphDevice, error)) {
	// Never unlocked: the thread, with ORT's per-thread graph state, ends with the goroutine.
	runtime.LockOSThread()
	defer close(g.done)
	dev, err := open()
	if err != nil {
		ready <- err
		return
	}
	defer dev.close()
	g.dev = dev
	ready <- nil
	for {
		select {
		case c, ok := <-g.ctl:
			if !ok {
				return
			}
			c.reply <- dev.capture(c.ctx, c.rows, c.cols)
		case <-g.wake:
			for b, err := g.next(); b != nil; b, err = g.next() {
				if err == nil {
					err = g.run(b)
				}
				b.reply <- err
			}
		}
	}
}

// next takes the first queued batch (nil when none), its set now running.
func (g *graphSession) next() (*graphBatch, error) {
	g.p.mu.Lock()
	defer g.p.mu.Unlock()
	if len(g.queue) == 0 {
		return nil, nil
	}
	b := g.queue[0]
	g.queue = slices.Delete(g.queue, 0, 1)
	return b, g.ring.start(b.set)
}

// run is one batch on the session's goroutine.
func (g *graphSession) run(b *graphBatch) error {
	err := g.dev.run(b)
	if !b.runStart.IsZero() {
		if !g.last.IsZero() {
			b.gap = b.runStart.Sub(g.last)
		}
		g.last = b.runEnd
	}
	g.p.mu.Lock()
	defer g.p.mu.Unlock()
	return errors.Join(err, g.ring.finish(b.set))
}

// take hands out a free set of the least loaded session; the caller holds a token, so there is one.
func (p *graphPool) take() (*graphSession, int, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for i, g := range p.sessions {
		p.busy[i] = g.ring.busy
	}
	if i := leastLoaded(p.busy, p.sets); i >= 0 {
		if set, ok := p.sessions[i].ring.acquire(); ok {
			return p.sessions[i], set, nil
		}
	}
	return nil, 0, errors.New("no free buffer set, with a token held")
}

// enqueue queues b on g and wakes g's goroutine.
func (p *graphPool) enqueue(g *graphSession, b *graphBatch) error {
	p.mu.Lock()
	err := g.ring.queue(b.set)
	if err == nil {
		g.queue = append(g.queue, b)
	}
	p.mu.Unlock()
	if err == nil {
		select {
		case g.wake <- struct{}{}:
		default: // a wake-up is pending: the goroutine will find b
		}
	}
	return err
}

// dequeue takes b back out of g's queue if g's goroutine has not taken it yet.
func (p *graphPool) dequeue(g *graphSession, b *graphBatch) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	i := slices.Index(g.queue, b)
	if i < 0 || !g.ring.cancel(b.set) {
		return false
	}
	g.queue = slices.Delete(g.queue, i, i+1)
	return true
}

func (p *graphPool) release(g *graphSession, set int) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	return g.ring.release(set)
}

// embed runs in on a set of a session, writing Rows × dim floats to out. It honours ctx while it
// waits for a token and for the capture lock, and while the batch waits in its session's queue
// (it is then taken out, not run); once the run has started, ctx's end terminates a plain run,
// and a graph replay (not interruptible) is waited for. It returns only once every copy from in
// and into out is done. out must be C memory (the runner's output buffers): with overlap the copy
// out lands there after the C call that enqueued it has returned.
func (p *graphPool) embed(ctx context.Context, in Input, out []float32) error {
	select {
	case <-p.tokens:
	case <-ctx.Done():
		return ctx.Err()
	}
	defer func() { p.tokens <- struct{}{} }()
	// Held for the whole batch, also on its session's goroutine's behalf (a reader must not take
	// the lock twice): the batch's CUDA work must not meet a capture.
	if err := captureMu.rlock(ctx); err != nil {
		return err
	}
	defer captureMu.runlock()
	g, set, err := p.take()
	if err != nil {
		return err
	}
	b := &graphBatch{ctx: ctx, set: set, in: in, out: out, replay: g.dev.captured(in.Rows, in.Cols), reply: make(chan error, 1)}
	b.overlap = p.overlap && b.replay
	copied := false
	if b.overlap {
		if err := g.dev.copyIn(b); err != nil {
			return errors.Join(err, p.release(g, set))
		}
		copied = true
	}
	queued := time.Now()
	if err = p.enqueue(g, b); err == nil {
		err = p.await(g, b)
	}
	// Nothing may be left in flight: the caller reuses in and out once Embed returns.
	switch {
	case b.outIssued:
		err = errors.Join(err, g.dev.waitOut(set)) // the session's goroutine waited for the copy in
	case copied:
		err = errors.Join(err, g.dev.waitIn(set))
	}
	x := GraphBatch{Session: g.index, Set: set, Rows: in.Rows, Cols: in.Cols, Replayed: b.replay, Overlap: b.overlap,
		Queued: queued, RunStart: b.runStart, RunEnd: b.runEnd, Done: time.Now(), Gap: b.gap}
	if err == nil && p.timeline != nil && b.replay {
		x.CopyIn, x.CopyOut = g.dev.times(set)
	}
	if rerr := p.release(g, set); rerr != nil || err != nil {
		return errors.Join(err, rerr)
	}
	p.stats.add(&x)
	if p.timeline != nil {
		p.timeline(x)
	}
	return nil
}

// await waits for the session's reply to b. Once ctx ends, a batch still queued is taken out of
// the queue (not run) and a plain run in progress is terminated; a replay is waited for.
func (p *graphPool) await(g *graphSession, b *graphBatch) error {
	select {
	case err := <-b.reply:
		return err
	case <-b.ctx.Done():
	}
	if p.dequeue(g, b) {
		return b.ctx.Err()
	}
	if !b.replay {
		g.dev.terminate(b.set, true)
		defer g.dev.terminate(b.set, false) // the set is still this batch's: no other run sees it
	}
	return <-b.reply
}

// capture captures rows×cols on every session, one after another, holding every token (Embed
// calls meanwhile wait). ctx is checked before each session's capture and bounds the waits for
// tokens and for the capture lock; a capture that has started runs to its end.
func (p *graphPool) capture(ctx context.Context, rows, cols int) error {
	held := 0
	defer func() {
		for range held {
			p.tokens <- struct{}{}
		}
	}()
	for held < cap(p.tokens) {
		select {
		case <-p.tokens:
			held++
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	for _, g := range p.sessions {
		if err := ctx.Err(); err != nil {
			return err
		}
		c := graphCapture{ctx: ctx, rows: rows, cols: cols, reply: make(chan error, 1)}
		g.ctl <- c // every token held: the goroutine has no batch
		if err := <-c.reply; err != nil {
			return err
		}
	}
	return nil
}

// close stops every session's goroutine, which closes its device. Nothing may be in flight.
func (p *graphPool) close() {
	for _, g := range p.sessions {
		close(g.ctl)
		<-g.done
	}
	p.sessions = nil
}
