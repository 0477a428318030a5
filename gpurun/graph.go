package gpurun

/*
#include <stdlib.h>
#include "se_cuda.h"
#include "se_ort.h"
*/
import "C"

import (
	"context"
	"fmt"
	"time"
	"unsafe"
)

// CUDA graph modes (WithCUDAGraphs).
const (
	// GraphsAuto captures CUDA graphs where the model's shapes are static for a given batch
	// shape: CUDA runners of "mha" exports (tools/export_esm2.py --fused mha). Packed exports
	// have a data-dependent token count and traced exports run shape logic on the CPU.
	GraphsAuto = "auto"
	GraphsOn   = "on"  // capture on CUDA; an error for packed exports or on the CPU
	GraphsOff  = "off" // plain ORT runs
)

// ESM special tokens of the padding rows a CUDA graph batch is filled up with.
const (
	clsID, padID, eosID = 0, 1, 2
)

// padRows fills ids and mask (rows of cols tokens) with <cls> <eos> <pad>... rows.
func padRows(ids, mask []int64, cols int) {
	for i := range ids {
		switch i % cols {
		case 0:
			ids[i], mask[i] = clsID, 1
		case 1:
			ids[i], mask[i] = eosID, 1
		default:
			ids[i], mask[i] = padID, 0
		}
	}
}

// Warmup runs each shape graphPlainRuns times without a graph id (so that ORT's arena holds
// everything the shape allocates: nothing may be allocated while a graph is captured), then
// graphCaptureRuns times with each buffer set's id: ORT's CUDA EP counts two regular runs of a
// graph id before the run that captures it; the last replays.
const (
	graphPlainRuns   = 2
	graphCaptureRuns = 4
)

// graphOverlapSets is the number of buffer sets (graphs per shape) of a session with copy overlap.
const graphOverlapSets = 2

// newCUDAGraphPool is r's pool of CUDA-graph sessions (see graphsched.go).
func newCUDAGraphPool(r *Runner) (*graphPool, error) {
	sets := 1
	if r.opts.graphOverlap {
		sets = graphOverlapSets
	}
	n := r.opts.graphSessions
	if n == 0 {
		n = r.opts.concurrent
	}
	return newGraphPool(n, sets, r.opts.graphOverlap, r.opts.graphTimeline, func(int) (graphDevice, error) {
		return openCUDAGraphSession(r, sets)
	})
}

// cudaGraphSession is the device side of one ORT session with enable_cuda_graph (ORT runs it on
// a stream of its own), opened, run and closed on its graphSession's goroutine. Each warmed-up
// bucket length has, per buffer set, device buffers at fixed addresses (bound through IoBinding)
// and its own gpu_graph_id. Inputs are copied in on a stream of the session's and outputs out on
// a second one (with copy overlap; else on the first), ordered against the runs on the host:
// with overlap by the sets' CUDA events, else by synchronising the stream before and after each
// run (ORT's Run returns once its stream is done).
type cudaGraphSession struct {
	r       *Runner
	sets    int
	overlap bool
	s       *session
	noGraph []*C.OrtRunOptions // per set, gpu_graph_id -1: warm-up runs and batches of shapes not captured
	events  []*C.se_events     // per set; nil without copy overlap and timeline
	shapes  map[int]graphShape // by cols; changed by capture only, while every token is held
	nextID  int                // the next shape's first gpu_graph_id
}

type graphShape struct {
	c    *C.se_gshape
	rows int
}

// openCUDAGraphSession opens a session of sets buffer sets, holding the capture lock shared.
func openCUDAGraphSession(r *Runner, sets int) (graphDevice, error) {
	if err := loadCudart(); err != nil {
		return nil, err
	}
	_ = captureMu.rlock(context.Background()) // cannot fail: Background never ends
	defer captureMu.runlock()
	d := &cudaGraphSession{r: r, sets: sets, overlap: r.opts.graphOverlap, shapes: map[int]graphShape{}}
	if err := d.open(); err != nil {
		d.free()
		return nil, err
	}
	return d, nil
}

func (d *cudaGraphSession) open() error {
	r := d.r
	dev := C.int(r.opts.device.Index)
	var in, out unsafe.Pointer
	if rc := C.se_stream_create(dev, &in); rc != 0 {
		return fmt.Errorf("%w: creating a CUDA stream on %s: %s", ErrDevice, r.opts.device, C.GoString(C.se_err(rc)))
	}
	if d.overlap {
		if rc := C.se_stream_create(dev, &out); rc != 0 {
			C.se_stream_destroy(in)
			return fmt.Errorf("%w: creating a CUDA stream on %s: %s", ErrDevice, r.opts.device, C.GoString(C.se_err(rc)))
		}
	}
	// The session runs on ORT's own stream: with user_compute_stream set as well, ORT 1.29's
	// capture fails (CUDA error 900 from cudaStreamBeginCapture; docs/perf.md, 2026-11-25).
	cfg := r.sessionConfig(map[string]string{"enable_cuda_graph": "1", "do_copy_in_default_stream": "1"})
	cfg.stream, cfg.outStream = in, out // adopted by the session, also on error
	cfg.note = " with CUDA graphs"
	var err error
	if d.s, err = openSession(cfg); err != nil {
		return err
	}
	timing := r.opts.graphTimeline != nil
	for range d.sets {
		ro, err := newRunOptions("-1")
		if err != nil {
			return fmt.Errorf("%w: %v", ErrSession, err)
		}
		d.noGraph = append(d.noGraph, ro)
		if !d.overlap && !timing {
			d.events = append(d.events, nil)
			continue
		}
		var ev *C.se_events
		if rc := C.se_events_new(dev, boolInt(timing), &ev); rc != 0 {
			return fmt.Errorf("%w: creating CUDA events on %s (WithGraphCopyOverlap(false) does without): %s",
				ErrDevice, r.opts.device, C.GoString(C.se_err(rc)))
		}
		d.events = append(d.events, ev)
	}
	return nil
}

func boolInt(b bool) C.int {
	if b {
		return 1
	}
	return 0
}

// close frees the session and its buffers (nothing may be in flight).
func (d *cudaGraphSession) close() {
	_ = captureMu.rlock(context.Background())
	defer captureMu.runlock()
	d.free()
}

// free is close with the capture lock held.
func (d *cudaGraphSession) free() {
	for _, s := range d.shapes {
		C.se_gshape_free(s.c)
	}
	d.shapes = nil
	for _, ro := range d.noGraph {
		C.se_ro_free(ro)
	}
	d.noGraph = nil
	for _, ev := range d.events {
		C.se_events_free(ev) // NULL is fine
	}
	d.events = nil
	if d.s != nil {
		d.s.close()
		d.s = nil
	}
}

func (d *cudaGraphSession) captured(rows, cols int) bool {
	s, ok := d.shapes[cols]
	return ok && rows <= s.rows
}

// capture binds buffers for rows×cols (unless a shape of cols with at least rows exists) and runs
// it on padding rows: graphPlainRuns plain runs, then graphCaptureRuns runs with each set's graph
// id, so that ORT captures the set's graph. It waits for the capture lock until ctx ends; from
// then on it runs to its end.
func (d *cudaGraphSession) capture(ctx context.Context, rows, cols int) error {
	old, ok := d.shapes[cols]
	if ok && old.rows >= rows {
		return nil
	}
	if err := captureMu.lock(ctx); err != nil {
		return err
	}
	defer captureMu.unlock()
	if ok {
		C.se_gshape_free(old.c)
		delete(d.shapes, cols)
	}
	ids, mask := make([]int64, rows*cols), make([]int64, rows*cols)
	padRows(ids, mask, cols)
	var sh *C.se_gshape
	id := d.nextID // graph ids only need to be distinct per session; a replaced shape's are not reused
	d.nextID += d.sets
	err := cErr(C.se_gshape_new(d.s.c, C.int64_t(rows), C.int64_t(cols), C.int64_t(d.r.man.EmbeddingDim), C.int(id), C.int(d.sets),
		(*C.int64_t)(unsafe.Pointer(&ids[0])), (*C.int64_t)(unsafe.Pointer(&mask[0])), &sh))
	for i := 0; err == nil && i < graphPlainRuns; i++ {
		_, _, err = d.runSync(sh, 0, Input{}, nil, false, nil)
	}
	for set := 0; err == nil && set < d.sets; set++ {
		for i := 0; err == nil && i < graphCaptureRuns; i++ {
			_, _, err = d.runSync(sh, set, Input{}, nil, true, nil)
		}
	}
	if err != nil {
		C.se_gshape_free(sh)
		return fmt.Errorf("%w: capturing a CUDA graph of batch %d×%d on %s: %v", ErrRun, rows, cols, d.r.opts.device, err)
	}
	d.shapes[cols] = graphShape{c: sh, rows: rows}
	return nil
}

// runSync copies in's rows in (none: padding only), pads the rest, runs set's buffers (with its
// graph, or plain), and copies the outputs to out (nil: not), each step waiting for the copies
// before it goes on: the synchronous path. ev (nil: none) times the copies. It returns the
// times around ORT's Run.
func (d *cudaGraphSession) runSync(sh *C.se_gshape, set int, in Input, out []float32, graph bool,
	ev *C.se_events) (start, end time.Time, err error) {
	var ids, mask *C.int64_t
	if in.Rows > 0 {
		ids, mask = (*C.int64_t)(unsafe.Pointer(&in.IDs[0])), (*C.int64_t)(unsafe.Pointer(&in.Mask[0]))
	}
	if err = cErr(C.se_gshape_copy_in(sh, C.int(set), ids, mask, C.int64_t(in.Rows), ev)); err != nil {
		return start, end, err
	}
	// The session runs on ORT's stream: the inputs must be in place before it starts.
	if err = cErr(C.se_sess_sync(d.s.c)); err != nil {
		return start, end, err
	}
	start = time.Now()
	err = cErr(C.se_gshape_run(sh, C.int(set), d.noGraph[set], C.int(boolInt(graph))))
	end = time.Now()
	if err != nil || out == nil {
		return start, end, err
	}
	if err = cErr(C.se_gshape_copy_out(sh, C.int(set), (*C.float)(unsafe.Pointer(&out[0])), C.int64_t(in.Rows), ev)); err != nil {
		return start, end, err
	}
	return start, end, cErr(C.se_sess_sync(d.s.c))
}

// copyIn enqueues b's inputs into its set's buffers of b's shape and records the set's in-event.
func (d *cudaGraphSession) copyIn(b *graphBatch) error {
	sh := d.shapes[b.in.Cols].c
	ids, mask := (*C.int64_t)(unsafe.Pointer(&b.in.IDs[0])), (*C.int64_t)(unsafe.Pointer(&b.in.Mask[0]))
	return cErr(C.se_gshape_copy_in(sh, C.int(b.set), ids, mask, C.int64_t(b.in.Rows), d.events[b.set]))
}

func (d *cudaGraphSession) waitIn(set int) error  { return d.wait(set, 1, "copy in") }
func (d *cudaGraphSession) waitOut(set int) error { return d.wait(set, 0, "copy out") }

func (d *cudaGraphSession) wait(set int, in C.int, what string) error {
	if rc := C.se_events_wait(d.events[set], in); rc != 0 {
		C.se_clear_err()
		return fmt.Errorf("waiting for the %s: CUDA error %d (%s)", what, int(rc), C.GoString(C.se_err(rc)))
	}
	return nil
}

// run replays b's shape's graph of its set (the rest of its rows are padding), and otherwise
// runs b without a graph from host memory (with the set's noGraph, which the caller may
// terminate). With overlap it waits for the copy in first and enqueues the copy out after.
func (d *cudaGraphSession) run(b *graphBatch) error {
	if !b.replay {
		ins, outs := tokenTensors(b.in, b.out)
		b.runStart = time.Now()
		err := d.s.runWith(d.noGraph[b.set], ins[:], outs[:])
		b.runEnd = time.Now()
		return err
	}
	sh, ev := d.shapes[b.in.Cols].c, d.events[b.set]
	if !b.overlap {
		var err error
		b.runStart, b.runEnd, err = d.runSync(sh, b.set, b.in, b.out, true, ev)
		return err
	}
	if err := d.waitIn(b.set); err != nil {
		return err
	}
	b.runStart = time.Now()
	err := cErr(C.se_gshape_run(sh, C.int(b.set), d.noGraph[b.set], 1))
	b.runEnd = time.Now()
	if err != nil {
		return err
	}
	out := (*C.float)(unsafe.Pointer(&b.out[0]))
	if err := cErr(C.se_gshape_copy_out(sh, C.int(b.set), out, C.int64_t(b.in.Rows), ev)); err != nil {
		return err
	}
	b.outIssued = true
	return nil
}

func (d *cudaGraphSession) terminate(set int, on bool) {
	if on {
		C.se_ro_terminate(d.noGraph[set])
	} else {
		C.se_ro_unterminate(d.noGraph[set])
	}
}

func (d *cudaGraphSession) times(set int) (in, out time.Duration) {
	ev := d.events[set]
	if ev == nil {
		return 0, 0
	}
	ms := func(x C.int) time.Duration {
		if v := float64(C.se_events_ms(ev, x)); v > 0 {
			return time.Duration(v * float64(time.Millisecond))
		}
		return 0
	}
	return ms(1), ms(0)
}
