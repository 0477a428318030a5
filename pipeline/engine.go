package pipeline

import (
	"context"
	"fmt"
	"strings"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"github.com/seqembed/seqembed/batcher"
	"github.com/seqembed/seqembed/consumer"
	"github.com/seqembed/seqembed/gpurun"
)

// Engine is the model side of a pipeline: one gpurun.Runner per device of Config.Device, a pool
// of Inflight run slots per device, the tokeniser and the (pinned, on CUDA) host allocator that
// batch buffers come from. New builds one for the worker; the raw benchmark builds one on its own
// and drives it without NATS, so both run the model exactly the same way.
type Engine struct {
	cfg     Config
	runners []*gpurun.Runner // one per device; runners[0]'s manifest is the model's
	slots   chan *gpurun.Runner
	runs    []atomic.Int64 // batches run per device
	alloc   *gpurun.HostAllocator
	tok     *batcher.Tokenizer
	busy    *gpurun.BusyMeter
	embed   EmbedFunc // the device pool, wrapped by cfg.Hooks.WrapEmbed
	warmup  time.Duration
	outputs outputPlan // the model's outputs as arrowout columns
	multi   bool       // the model has outputs besides its embedding: runs go through EmbedAll
	chunk   *chunkPlan // --overlength chunk: the windows and how outputs merge (nil otherwise)
}

// NewEngine validates cfg and loads the model on every device of cfg.Device; log (nil: none)
// hears a warning for a random-weight model. Close releases it.
func NewEngine(cfg Config, log *zap.Logger) (*Engine, error) {
	if log == nil {
		log = zap.NewNop()
	}
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	devs, err := gpurun.ParseDevices(cfg.Device)
	if err != nil {
		return nil, fmt.Errorf("%w: --device: %w", ErrConfig, err)
	}
	if err := cudaPreflight(devs, cudaNeeds{driver: "/proc/driver/nvidia/version", ortLib: gpurun.LibraryPath()}); err != nil {
		return nil, err
	}
	perDevice := cfg.InflightPerDevice()
	e := &Engine{cfg: cfg, slots: make(chan *gpurun.Runner, perDevice*len(devs)),
		runs: make([]atomic.Int64, len(devs)), busy: gpurun.NewBusyMeter()}
	for _, dev := range devs {
		opts, err := cfg.runnerOptions(dev)
		if err != nil {
			e.Close()
			return nil, err
		}
		r, err := gpurun.New(cfg.ModelDir, opts...)
		if err != nil {
			e.Close()
			if hinted := sessionHint(dev, err); hinted != err {
				return nil, hinted
			}
			return nil, fmt.Errorf("%w: model %s on %s: %w", ErrSetup, cfg.ModelDir, dev, err)
		}
		e.runners = append(e.runners, r)
	}
	// perDevice slots per device, interleaved: a batch runs on whichever device frees one first.
	for range perDevice {
		for _, r := range e.runners {
			e.slots <- r
		}
	}
	man := e.runners[0].Manifest()
	if strings.HasPrefix(man.Source, "preset:") {
		log.Warn("random-weight model: its embeddings are not biologically meaningful (use real weights: --model hf:facebook/esm2_t33_650M_UR50D, README: Use a real model)",
			zap.String("model", man.Name), zap.String("source", man.Source))
	}
	if e.outputs, err = planOutputs(man); err != nil {
		e.Close()
		return nil, err
	}
	e.multi = !man.SingleOutput()
	if overlength, _ := consumer.ParseOverlength(cfg.Overlength); overlength == consumer.Chunk { // Validate checked it
		if e.chunk, err = planChunks(cfg, man); err != nil {
			e.Close()
			return nil, err
		}
	}
	if e.tok, err = batcher.NewTokenizer(man.Residues); err != nil {
		e.Close()
		return nil, fmt.Errorf("%w: model %s alphabet: %w", ErrSetup, man.Name, err)
	}
	if e.alloc, err = gpurun.NewHostAllocator(cfg.MaxBatchTokens, e.CUDA()); err != nil {
		e.Close()
		return nil, fmt.Errorf("%w: host buffers: %w", ErrSetup, err)
	}
	e.embed = e.onFreeDevice
	if cfg.Hooks.WrapEmbed != nil {
		e.embed = cfg.Hooks.WrapEmbed(e.embed)
	}
	return e, nil
}

// Manifest is the model's manifest (model.json).
func (e *Engine) Manifest() *gpurun.Manifest { return e.runners[0].Manifest() }

// Tokenizer is the model's tokeniser.
func (e *Engine) Tokenizer() *batcher.Tokenizer { return e.tok }

// CUDA reports whether the engine runs on GPUs.
func (e *Engine) CUDA() bool { return e.runners[0].Device().Kind == "cuda" }

// CUDAGraphs reports whether the runners replay CUDA graphs.
func (e *Engine) CUDAGraphs() bool { return e.runners[0].CUDAGraphs() }

// Devices are the engine's devices, in --device order.
func (e *Engine) Devices() []gpurun.Device {
	out := make([]gpurun.Device, len(e.runners))
	for i, r := range e.runners {
		out[i] = r.Device()
	}
	return out
}

// Slots is the number of batches the engine runs at once (InflightPerDevice per device).
func (e *Engine) Slots() int { return cap(e.slots) }

// Busy is the meter of time with at least one run in flight.
func (e *Engine) Busy() *gpurun.BusyMeter { return e.busy }

// GraphStats sums the CUDA-graph runners' counters (gpurun.Runner.GraphStats; zero without graphs).
func (e *Engine) GraphStats() gpurun.GraphStats {
	var t gpurun.GraphStats
	for _, r := range e.runners {
		g := r.GraphStats()
		t.Batches, t.Replayed = t.Batches+g.Batches, t.Replayed+g.Replayed
		t.Queue, t.Run, t.Finish, t.Gap = t.Queue+g.Queue, t.Run+g.Run, t.Finish+g.Finish, t.Gap+g.Gap
		t.CopyIn, t.CopyOut = t.CopyIn+g.CopyIn, t.CopyOut+g.CopyOut
	}
	return t
}

// Runs is the number of batches run on each device so far, in Devices order.
func (e *Engine) Runs() []int64 {
	out := make([]int64, len(e.runs))
	for i := range e.runs {
		out[i] = e.runs[i].Load()
	}
	return out
}

// WarmupTook is how long Warmup took (0 before it, and on the CPU).
func (e *Engine) WarmupTook() time.Duration { return e.warmup }

// NewBatcher is a batcher with the engine's tokeniser and allocator and cfg's budget, rows, linger
// and bucket step; extra options come last and win (the raw benchmark lingers for an hour).
func (e *Engine) NewBatcher(extra ...batcher.Option) (*batcher.Batcher, error) {
	c := e.cfg
	opts := append([]batcher.Option{batcher.WithTokenizer(e.tok), batcher.WithAllocator(e.alloc),
		batcher.WithMaxBatchTokens(c.MaxBatchTokens), batcher.WithMaxBatchRows(c.MaxBatchRows),
		batcher.WithMaxWait(c.MaxWait), batcher.WithOutputSize(e.Slots()), batcher.WithBucketStep(c.BucketStep)}, extra...)
	b, err := batcher.New(e.Manifest().MaxLength, opts...)
	if err != nil {
		return nil, fmt.Errorf("%w: batcher: %w", ErrConfig, err)
	}
	return b, nil
}

// Warmup runs every bucket shape of bat at its full row count once on every device (CUDA-graph
// runners capture each shape's graph instead), so no real batch pays for kernel selection or
// arena growth. On the CPU it does nothing.
func (e *Engine) Warmup(ctx context.Context, bat *batcher.Batcher, log *zap.Logger) error {
	if !e.CUDA() {
		return nil
	}
	var shapes [][2]int
	for _, b := range bat.Buckets() {
		shapes = append(shapes, [2]int{b.Rows, b.Cols})
	}
	for _, r := range e.runners {
		d, err := r.Warmup(ctx, shapes, e.alloc)
		if err != nil {
			hint := ""
			if r.CUDAGraphs() {
				hint = " (--cuda-graphs off runs the model without CUDA graphs)"
			}
			return fmt.Errorf("%w: warm-up on %s: %w%s", ErrSetup, r.Device(), err, hint)
		}
		e.warmup += d
	}
	log.Info("warm-up done", zap.Int("shapes", len(shapes)), zap.Int("devices", len(e.runners)),
		zap.Bool("cuda_graphs", e.CUDAGraphs()), zap.Duration("took", e.warmup))
	return nil
}

// Embed runs one batch on the first device with a free slot (waiting for one, or for ctx),
// appending its embeddings to dst; the time it runs counts on Busy. A model's extra outputs are
// left out (the pipeline's runs keep them: run).
func (e *Engine) Embed(ctx context.Context, in gpurun.Input, dst []float32) ([]float32, error) {
	dst, _, err := e.run(ctx, in, dst)
	return dst, err
}

// run is Embed returning every output of a model of several (EmbedFunc).
func (e *Engine) run(ctx context.Context, in gpurun.Input, dst []float32) ([]float32, *gpurun.Result, error) {
	end := e.busy.Begin()
	defer end()
	return e.embed(ctx, in, dst)
}

// onFreeDevice is the device pool: take a slot, run, give the slot back. A model of one output
// runs through Runner.Embed (CUDA graphs included); one of several through Runner.EmbedAll.
func (e *Engine) onFreeDevice(ctx context.Context, in gpurun.Input, dst []float32) ([]float32, *gpurun.Result, error) {
	var r *gpurun.Runner
	select {
	case r = <-e.slots:
	case <-ctx.Done():
		return dst, nil, ctx.Err()
	}
	defer func() { e.slots <- r }()
	for i, x := range e.runners {
		if x == r {
			e.runs[i].Add(1)
		}
	}
	if !e.multi {
		dst, err := r.Embed(ctx, in, dst)
		return dst, nil, err
	}
	res, err := r.EmbedAll(ctx, in)
	if err != nil {
		return dst, nil, err
	}
	return append(dst, res.Outputs[e.outputs.embedding].F32...), res, nil
}

// Close releases the runners and host buffers.
func (e *Engine) Close() {
	for _, r := range e.runners {
		r.Close()
	}
	if e.alloc != nil {
		e.alloc.Close()
	}
}
