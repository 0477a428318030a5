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
	"runtime"
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
// graphCaptureRuns times with it: ORT's CUDA EP counts two regular runs of a graph id before
// the run that captures it; the last replays.
const (
	graphPlainRuns   = 2
	graphCaptureRuns = 4
)

// graphPool is a CUDA-graph runner's sessions: each serves one batch at a time (ORT does not
// support concurrent runs of a graph-capturing session), so Embed takes a free one.
type graphPool struct {
	sessions []*graphSession
	free     chan *graphSession
}

// graphSession is one ORT session with enable_cuda_graph (ORT runs it on a stream of its own),
// owned by one goroutine locked to its OS thread: ORT keeps captured graphs in per-thread state,
// so every capture and replay must come from the same thread. Each warmed-up bucket length has
// device buffers at fixed addresses (bound through IoBinding) and its own gpu_graph_id; inputs
// and outputs are copied on a second stream of the session's, synchronised before and after
// each run (ORT's Run returns once its stream is done).
type graphSession struct {
	r     *Runner
	reqs  chan graphReq
	reply chan error
	done  chan struct{}

	// Set by open on the loop goroutine, freed by it; noGraph is also terminated by embed's caller.
	s       *session
	noGraph *C.OrtRunOptions // gpu_graph_id -1: warm-up runs and batches of shapes not captured

	// Owned by the loop goroutine.
	shapes map[int]graphShape // by cols
	nextID int                // the next shape's gpu_graph_id
}

type graphShape struct {
	c    *C.se_gshape
	rows int
}

// graphReq asks the session's goroutine to capture rows×cols (capture) or to embed in into out;
// ctx bounds its waits (see Runner.Embed and Runner.Warmup).
type graphReq struct {
	ctx        context.Context
	capture    bool
	rows, cols int
	in         Input
	out        []float32
}

func newGraphPool(r *Runner, n int) (*graphPool, error) {
	p := &graphPool{free: make(chan *graphSession, n)}
	for range n {
		g := &graphSession{r: r, reqs: make(chan graphReq), reply: make(chan error, 1),
			done: make(chan struct{}), shapes: map[int]graphShape{}}
		ready := make(chan error, 1)
		go g.loop(ready)
		if err := <-ready; err != nil {
			<-g.done
			p.close()
			return nil, err
		}
		p.sessions = append(p.sessions, g)
		p.free <- g
	}
	return p, nil
}

// embed runs in on a free session, writing Rows × dim floats to out. It honours ctx while it
// waits for a session and for the session's goroutine; once the run has started, ctx's end
// terminates a run without a graph, and a graph replay (not interruptible) is waited for. It
// returns only once the session is done with in and out.
func (p *graphPool) embed(ctx context.Context, in Input, out []float32) error {
	var g *graphSession
	select {
	case g = <-p.free:
	case <-ctx.Done():
		return ctx.Err()
	}
	defer func() { p.free <- g }()
	select {
	case g.reqs <- graphReq{ctx: ctx, in: in, out: out}:
	case <-ctx.Done():
		return ctx.Err()
	}
	select {
	case err := <-g.reply:
		return err
	case <-ctx.Done():
	}
	C.se_ro_terminate(g.noGraph)
	err := <-g.reply
	C.se_ro_unterminate(g.noGraph) // the session is still this call's: no other run sees the flag
	return err
}

// capture captures rows×cols on every session, one after another, holding all of them (Embed
// calls meanwhile wait for a session). ctx is checked before each session's capture and bounds
// the waits for sessions and for the capture lock; a capture that has started runs to its end.
func (p *graphPool) capture(ctx context.Context, rows, cols int) error {
	held := make([]*graphSession, 0, len(p.sessions))
	defer func() {
		for _, g := range held {
			p.free <- g
		}
	}()
	for len(held) < len(p.sessions) {
		select {
		case g := <-p.free:
			held = append(held, g)
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	for _, g := range held {
		if err := ctx.Err(); err != nil {
			return err
		}
		g.reqs <- graphReq{ctx: ctx, capture: true, rows: rows, cols: cols} // held: its loop is waiting
		if err := <-g.reply; err != nil {
			return err
		}
	}
	return nil
}

// close stops every session's goroutine, which frees its buffers and session.
func (p *graphPool) close() {
	for _, g := range p.sessions {
		close(g.reqs)
		<-g.done
	}
	p.sessions = nil
}

func (g *graphSession) loop(ready chan<- error) {
	// Never unlocked: the thread, with ORT's per-thread graph state, ends with the goroutine.
	runtime.LockOSThread()
	defer close(g.done)
	defer g.free()
	if err := g.open(); err != nil {
		ready <- err
		return
	}
	ready <- nil
	for req := range g.reqs {
		if req.capture {
			g.reply <- g.capture(req.ctx, req.rows, req.cols)
		} else {
			g.reply <- g.embed(req.ctx, req.in, req.out)
		}
	}
}

func (g *graphSession) open() error {
	r := g.r
	if err := loadCudart(); err != nil {
		return err
	}
	var stream unsafe.Pointer
	if rc := C.se_stream_create(C.int(r.opts.device.Index), &stream); rc != 0 {
		return fmt.Errorf("%w: creating a CUDA stream on %s: %s", ErrDevice, r.opts.device, C.GoString(C.se_err(rc)))
	}
	// The session runs on ORT's own stream: with user_compute_stream set as well, ORT 1.29's
	// capture fails (CUDA error 900 from cudaStreamBeginCapture; docs/perf.md, 2026-11-25).
	cfg := r.sessionConfig(map[string]string{"enable_cuda_graph": "1", "do_copy_in_default_stream": "1"})
	cfg.stream = stream // adopted by the session, also on error
	cfg.note = " with CUDA graphs"
	_ = captureMu.rlock(context.Background()) // cannot fail: Background never ends
	defer captureMu.runlock()
	var err error
	if g.s, err = openSession(cfg); err != nil {
		return err
	}
	if g.noGraph, err = newRunOptions("-1"); err != nil {
		return fmt.Errorf("%w: %v", ErrSession, err)
	}
	return nil
}

func (g *graphSession) free() {
	_ = captureMu.rlock(context.Background())
	defer captureMu.runlock()
	for _, s := range g.shapes {
		C.se_gshape_free(s.c)
	}
	g.shapes = nil
	if g.noGraph != nil {
		C.se_ro_free(g.noGraph)
		g.noGraph = nil
	}
	if g.s != nil {
		g.s.close()
		g.s = nil
	}
}

// capture binds buffers for rows×cols (unless a shape of cols with at least rows exists) and runs
// it graphCaptureRuns times on padding rows, so that ORT captures its graph. It waits for the
// capture lock until ctx ends; from then on it runs to its end.
func (g *graphSession) capture(ctx context.Context, rows, cols int) error {
	old, ok := g.shapes[cols]
	if ok && old.rows >= rows {
		return nil
	}
	if err := captureMu.lock(ctx); err != nil {
		return err
	}
	defer captureMu.unlock()
	if ok {
		C.se_gshape_free(old.c)
		delete(g.shapes, cols)
	}
	ids, mask := make([]int64, rows*cols), make([]int64, rows*cols)
	padRows(ids, mask, cols)
	var sh *C.se_gshape
	id := g.nextID // graph ids only need to be distinct per session; a replaced shape's is not reused
	g.nextID++
	err := cErr(C.se_gshape_new(g.s.c, C.int64_t(rows), C.int64_t(cols), C.int64_t(g.r.man.EmbeddingDim), C.int(id),
		(*C.int64_t)(unsafe.Pointer(&ids[0])), (*C.int64_t)(unsafe.Pointer(&mask[0])), &sh))
	for i := 0; err == nil && i < graphPlainRuns+graphCaptureRuns; i++ {
		err = cErr(C.se_gshape_run(sh, g.noGraph, nil, nil, 0, nil, C.int(min(1, i/graphPlainRuns))))
	}
	if err != nil {
		C.se_gshape_free(sh)
		return fmt.Errorf("%w: capturing a CUDA graph of batch %d×%d on %s: %v", ErrRun, rows, cols, g.r.opts.device, err)
	}
	g.shapes[cols] = graphShape{c: sh, rows: rows}
	return nil
}

// embed replays the captured graph of in.Cols when it has at least in.Rows rows (the rest are
// padding), and otherwise runs in without a graph (with noGraph, which the caller may terminate).
func (g *graphSession) embed(ctx context.Context, in Input, out []float32) error {
	if err := captureMu.rlock(ctx); err != nil {
		return err
	}
	defer captureMu.runlock()
	if s, ok := g.shapes[in.Cols]; ok && in.Rows <= s.rows {
		ids, mask := (*C.int64_t)(unsafe.Pointer(&in.IDs[0])), (*C.int64_t)(unsafe.Pointer(&in.Mask[0]))
		return cErr(C.se_gshape_run(s.c, g.noGraph, ids, mask, C.int64_t(in.Rows), (*C.float)(unsafe.Pointer(&out[0])), 1))
	}
	ins, outs := tokenTensors(in, out)
	return g.s.runWith(g.noGraph, ins[:], outs[:])
}
