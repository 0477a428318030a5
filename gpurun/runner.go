package gpurun

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
)

// ORTVersion is the ONNX Runtime release seqembed is built and tested against.
const ORTVersion = "1.29.0"

// LibraryPath returns the ONNX Runtime shared library to load: $ONNXRUNTIME_SHARED_LIBRARY_PATH if
// set, else the copy scripts/fetch-ort.sh caches under ~/.cache/seqembed/onnxruntime-1.29.0/.
func LibraryPath() string {
	if p := os.Getenv("ONNXRUNTIME_SHARED_LIBRARY_PATH"); p != "" {
		return p
	}
	cache := os.Getenv("XDG_CACHE_HOME")
	if cache == "" {
		home, _ := os.UserHomeDir()
		cache = filepath.Join(home, ".cache")
	}
	return filepath.Join(cache, "seqembed", "onnxruntime-"+ORTVersion, "libonnxruntime.so")
}

// Device names where inference runs: "cpu" or "cuda:N".
type Device struct {
	Kind  string // "cpu" or "cuda"
	Index int
}

func (d Device) String() string {
	if d.Kind == "cuda" {
		return "cuda:" + strconv.Itoa(d.Index)
	}
	return "cpu"
}

// ParseDevice reads "cpu", "cuda" (= cuda:0) or "cuda:N".
func ParseDevice(s string) (Device, error) {
	switch {
	case s == "cpu":
		return Device{Kind: "cpu"}, nil
	case s == "cuda":
		return Device{Kind: "cuda"}, nil
	case strings.HasPrefix(s, "cuda:"):
		n, err := strconv.Atoi(s[len("cuda:"):])
		if err != nil || n < 0 {
			return Device{}, fmt.Errorf("%w: device %q: want cpu, cuda or cuda:N", ErrOption, s)
		}
		return Device{Kind: "cuda", Index: n}, nil
	}
	return Device{}, fmt.Errorf("%w: device %q: want cpu, cuda or cuda:N", ErrOption, s)
}

// ParseDevices reads a comma-separated device list ("cuda:0,cuda:1", "cpu,cpu") or "cuda:all"
// (every visible CUDA device). One runner is made per entry; mixing cpu and cuda is refused.
func ParseDevices(s string) ([]Device, error) {
	if s == "cuda:all" {
		n, err := CUDADeviceCount()
		if err != nil {
			return nil, err
		}
		if n == 0 {
			return nil, fmt.Errorf("%w: cuda:all: no CUDA device visible", ErrDevice)
		}
		devs := make([]Device, n)
		for i := range devs {
			devs[i] = Device{Kind: "cuda", Index: i}
		}
		return devs, nil
	}
	return parseDeviceList(s)
}

// DeviceKind is the kind ("cpu" or "cuda") of a device list as ParseDevices reads it, from the
// list's syntax alone (cuda:all is not counted, so no driver is asked), or ParseDevices' error for
// a list it refuses by its syntax.
func DeviceKind(s string) (string, error) {
	if s == "cuda:all" {
		return "cuda", nil
	}
	devs, err := parseDeviceList(s)
	if err != nil {
		return "", err
	}
	return devs[0].Kind, nil
}

// parseDeviceList is ParseDevices for an explicit comma-separated list.
func parseDeviceList(s string) ([]Device, error) {
	var devs []Device
	for _, part := range strings.Split(s, ",") {
		d, err := ParseDevice(strings.TrimSpace(part))
		if err != nil {
			return nil, err
		}
		if len(devs) > 0 && devs[0].Kind != d.Kind {
			return nil, fmt.Errorf("%w: devices %q mix cpu and cuda", ErrOption, s)
		}
		devs = append(devs, d)
	}
	return devs, nil
}

type options struct {
	device        Device
	threads       int
	maxRows       int
	cudaExtra     map[string]string
	graphs        string
	concurrent    int
	graphOverlap  bool
	graphSessions int // 0: concurrent
	graphTimeline func(GraphBatch)
}

// Option configures a Runner.
type Option func(*options) error

// WithDevice selects where inference runs. Default "cpu".
func WithDevice(d Device) Option {
	return func(o *options) error {
		if d.Kind != "cpu" && d.Kind != "cuda" {
			return fmt.Errorf("%w: device kind %q", ErrOption, d.Kind)
		}
		o.device = d
		return nil
	}
}

// WithThreads sets ORT's intra-op thread count on the CPU. Default 0: one per core.
func WithThreads(n int) Option {
	return func(o *options) error {
		if n < 0 {
			return fmt.Errorf("%w: threads %d must be >= 0", ErrOption, n)
		}
		o.threads = n
		return nil
	}
}

// WithMaxRows sizes the pooled output buffers (rows × dim float32). Default 256; larger batches
// still run, with a one-off buffer.
func WithMaxRows(n int) Option {
	return func(o *options) error {
		if n <= 0 {
			return fmt.Errorf("%w: max rows %d must be > 0", ErrOption, n)
		}
		o.maxRows = n
		return nil
	}
}

// WithCUDAProviderOptions passes extra CUDA execution provider options (ORT's names, e.g.
// "sdpa_kernel", "use_tf32") on top of seqembed's own; they win over them. Ignored on
// the CPU. Default none. ParseProviderOptions reads the "k=v,k=v" form of the --cuda-options flag.
func WithCUDAProviderOptions(opts map[string]string) Option {
	return func(o *options) error {
		for k := range opts {
			if k == "" || k == "device_id" {
				return fmt.Errorf("%w: CUDA provider option %q cannot be set (use WithDevice for device_id)", ErrOption, k)
			}
		}
		o.cudaExtra = opts
		return nil
	}
}

// ParseProviderOptions parses "k=v,k=v" (empty: none).
func ParseProviderOptions(s string) (map[string]string, error) {
	out := map[string]string{}
	for _, kv := range strings.Split(s, ",") {
		if kv = strings.TrimSpace(kv); kv == "" {
			continue
		}
		k, v, ok := strings.Cut(kv, "=")
		if !ok || strings.TrimSpace(k) == "" {
			return nil, fmt.Errorf("%w: provider option %q: want key=value", ErrOption, kv)
		}
		out[strings.TrimSpace(k)] = strings.TrimSpace(v)
	}
	return out, nil
}

// WithCUDAGraphs sets when a CUDA runner captures CUDA graphs, one per batch shape given to
// Warmup, and replays them (one launch per batch instead of one per kernel; small models are
// launch-bound): GraphsAuto (default: for "mha" exports on CUDA), GraphsOn or GraphsOff. Batches
// of a captured length with fewer rows are padded up to the captured shape; other shapes run
// without a graph. ParseCUDAGraphs reads the --cuda-graphs flag.
func WithCUDAGraphs(mode string) Option {
	return func(o *options) error {
		if _, err := ParseCUDAGraphs(mode); err != nil {
			return err
		}
		o.graphs = mode
		return nil
	}
}

// ParseCUDAGraphs checks a CUDA graph mode: auto, on or off.
func ParseCUDAGraphs(s string) (string, error) {
	switch s {
	case GraphsAuto, GraphsOn, GraphsOff:
		return s, nil
	}
	return "", fmt.Errorf("%w: CUDA graph mode %q: want auto, on or off", ErrOption, s)
}

// WithConcurrentRuns sets how many Embed calls run at once. A CUDA-graph runner has this many
// sessions unless WithGraphSessions says otherwise (each with its own stream, captured graphs
// and copy of the weights; ORT runs one batch at a time on such a session); other runners run
// any number at once and ignore it. Default 2 (the worker passes --inflight).
func WithConcurrentRuns(n int) Option {
	return func(o *options) error {
		if n <= 0 {
			return fmt.Errorf("%w: concurrent runs %d must be > 0", ErrOption, n)
		}
		o.concurrent = n
		return nil
	}
}

// WithGraphSessions sets how many sessions a CUDA-graph runner has (default 0: as many as
// WithConcurrentRuns). Each replays one batch at a time; with copy overlap each also holds a
// second batch, so a runner takes up to twice as many Embed calls at once as it has sessions,
// and a session replays back to back only when more batches are in flight than sessions
// (e.g. 1 session for 2 concurrent runs). Ignored without CUDA graphs.
func WithGraphSessions(n int) Option {
	return func(o *options) error {
		if n < 0 {
			return fmt.Errorf("%w: graph sessions %d must be >= 0", ErrOption, n)
		}
		o.graphSessions = n
		return nil
	}
}

// WithGraphCopyOverlap sets whether a CUDA-graph runner's copies overlap its replays (default
// true). On: every session has two buffer sets per captured shape, each captured as its own graph
// (twice the captures at Warmup), and a batch's copy in is enqueued on a copy stream by its Embed
// call, while the session replays another batch, and its copy out on a second stream after its
// replay, which the Embed call waits for while the session goes on to its next batch; CUDA events
// order the copies against the replays on the host (ORT gives no handle on the stream it replays
// on: see graphsched.go). Off: a session copies in, replays and copies out one batch at a time,
// synchronising its copy stream before and after each replay. Outputs are the same either way.
// Ignored without CUDA graphs.
func WithGraphCopyOverlap(on bool) Option {
	return func(o *options) error {
		o.graphOverlap = on
		return nil
	}
}

// WithGraphTimeline has a CUDA-graph runner time every batch's copies with CUDA events and call
// fn with the batch's timeline (GraphBatch) once its outputs are in host memory, from the Embed
// call, before it returns: fn must be quick and safe for concurrent use. nil (the default): no
// timeline, and no copy timing in GraphStats. Ignored without CUDA graphs.
func WithGraphTimeline(fn func(GraphBatch)) Option {
	return func(o *options) error {
		o.graphTimeline = fn
		return nil
	}
}

// Input is one tokenised batch: Rows × Cols int64 ids and mask, row-major. The slices are read
// during Embed only. C memory (HostAllocator; pinned on CUDA, so that the GPU reads it by DMA) is
// best; Go memory also works (it is pinned for the run, never kept by C).
type Input struct {
	IDs, Mask  []int64
	Rows, Cols int
}

// Runner runs one ONNX model on one device. Embed is safe for concurrent use: each concurrent call
// is its own ORT Run (on CUDA, its own stream); a CUDA-graph runner (WithCUDAGraphs) runs one
// call at a time per session (WithGraphSessions), with copy overlap (WithGraphCopyOverlap) holds
// a second one per session whose inputs go to the device meanwhile, and the rest wait for a free
// session. Close waits for nothing: callers stop calling Embed first.
type Runner struct {
	man    *Manifest
	opts   options
	sess   *session   // nil with CUDA graphs
	graphs *graphPool // nil without

	mu      sync.Mutex
	outs    []*floatBuf
	allOuts []*floatBuf
	closed  bool
}

// New loads DIR/model.json and DIR/model.onnx (checking the model against the manifest's
// sha256, when it has one) and creates an ORT session on the chosen device, with the manifest's
// custom-op library registered. ONNX Runtime is LibraryPath(), loaded on first use. A CUDA-graph
// runner's sessions are made while no CUDA graph capture of this process runs: New waits for one
// in progress (another runner's Warmup) to end.
func New(modelDir string, opts ...Option) (*Runner, error) {
	o := options{device: Device{Kind: "cpu"}, maxRows: 256, graphs: GraphsAuto, concurrent: 2, graphOverlap: true}
	for _, opt := range opts {
		if err := opt(&o); err != nil {
			return nil, err
		}
	}
	man, err := LoadManifest(modelDir)
	if err != nil {
		return nil, err
	}
	if slices.Contains(man.Requires, "cuda") && o.device.Kind != "cuda" {
		return nil, fmt.Errorf("%w: model %s (attention %q) runs on the CUDA execution provider only, not on %s; "+
			"use --device cuda:N, or export a CPU-capable graph (tools/export_esm2.py without --fused packed)",
			ErrDevice, man.Name, man.Attention, o.device)
	}
	if err := checkPrecision(man, o.device); err != nil {
		return nil, err
	}
	graphs, err := o.useGraphs(man)
	if err != nil {
		return nil, err
	}
	if err := man.VerifySHA256(); err != nil {
		return nil, err
	}
	if err := acquireEnv(LibraryPath()); err != nil {
		return nil, err
	}
	r := &Runner{man: man, opts: o}
	if graphs {
		if r.graphs, err = newCUDAGraphPool(r); err != nil {
			releaseEnv()
			return nil, err
		}
		return r, nil
	}
	if r.sess, err = openSession(r.sessionConfig(nil)); err != nil {
		releaseEnv()
		return nil, err
	}
	return r, nil
}

// checkPrecision refuses an FP8 model on a device without FP8 tensor cores, before any session
// is made (the op would fail at the first run).
func checkPrecision(man *Manifest, dev Device) error {
	if man.Precision != PrecisionFP8 {
		return nil
	}
	if dev.Kind != "cuda" {
		return fmt.Errorf("%w: model %s has FP8 projections (precision fp8): it runs on a CUDA GPU with FP8 tensor "+
			"cores only, not on %s; use the float16 export", ErrDevice, man.Name, dev)
	}
	major, minor, err := CUDACapability(dev.Index)
	if err != nil {
		return err
	}
	if major*10+minor < FP8MinCapability {
		return fmt.Errorf("%w: model %s has FP8 projections (precision fp8), which need FP8 tensor cores (compute "+
			"capability 8.9 or newer: Ada, Hopper, Blackwell); %s is %d.%d: use the float16 export",
			ErrDevice, man.Name, dev, major, minor)
	}
	return nil
}

// useGraphs resolves the CUDA graph mode for man.
func (o *options) useGraphs(man *Manifest) (bool, error) {
	switch {
	case o.graphs == GraphsOff:
		return false, nil
	case o.graphs == GraphsAuto:
		return o.device.Kind == "cuda" && man.Attention == "mha" && man.SingleOutput(), nil
	case o.device.Kind != "cuda":
		return false, fmt.Errorf("%w: CUDA graphs need a CUDA device, not %s", ErrOption, o.device)
	case man.Attention == "packed":
		return false, fmt.Errorf("%w: model %s: CUDA graphs need static shapes, and packed attention's token count "+
			"depends on the data; export with tools/export_esm2.py --fused mha", ErrOption, man.Name)
	case !man.SingleOutput():
		return false, fmt.Errorf("%w: model %s has %d outputs: CUDA graphs serve models whose one output is the pooled embedding only; "+
			"use --cuda-graphs off (or auto)", ErrOption, man.Name, len(man.Outputs))
	}
	return true, nil
}

// CUDAGraphs says whether the runner replays CUDA graphs.
func (r *Runner) CUDAGraphs() bool { return r.graphs != nil }

// GraphStats are the cumulative counts and times of a CUDA-graph runner's batches (zero for
// other runners): cheap, always kept; the copies' device times only with WithGraphTimeline.
func (r *Runner) GraphStats() GraphStats {
	if r.graphs == nil {
		return GraphStats{}
	}
	return r.graphs.stats.snapshot()
}

// sessionConfig is the runner's session: the model, its custom ops, threads, and on CUDA the
// execution provider options (seqembed's, then extra, then WithCUDAProviderOptions').
func (r *Runner) sessionConfig(extra map[string]string) sessionConfig {
	cfg := sessionConfig{model: r.man.ModelPath(), threads: r.opts.threads, device: r.opts.device,
		customOps: r.man.CustomOpsPath(), inputs: r.man.Inputs}
	for _, o := range r.man.Outputs {
		cfg.outputs = append(cfg.outputs, o.Name)
	}
	if r.opts.device.Kind == "cuda" {
		cfg.cuda = map[string]string{
			"device_id":                 strconv.Itoa(r.opts.device.Index),
			"arena_extend_strategy":     "kSameAsRequested",
			"cudnn_conv_algo_search":    "HEURISTIC",
			"do_copy_in_default_stream": "0",
		}
		maps.Copy(cfg.cuda, extra)
		maps.Copy(cfg.cuda, r.opts.cudaExtra)
	}
	return cfg
}

// Manifest returns the model's manifest. The caller must not modify it.
func (r *Runner) Manifest() *Manifest { return r.man }

// Dim is the embedding dimension.
func (r *Runner) Dim() int { return r.man.EmbeddingDim }

// Device is where the runner runs.
func (r *Runner) Device() Device { return r.opts.device }

// getOut takes an output buffer of at least n floats: a pooled one (WithMaxRows × Dim) when n
// fits, else a one-off; a new buffer is allocated only when the pool is empty.
func (r *Runner) getOut(ctx context.Context, n int) (*floatBuf, error) {
	pooled := r.opts.maxRows * r.man.EmbeddingDim
	r.mu.Lock()
	if n <= pooled && len(r.outs) > 0 {
		b := r.outs[len(r.outs)-1]
		r.outs = r.outs[:len(r.outs)-1]
		r.mu.Unlock()
		return b, nil
	}
	r.mu.Unlock()
	b, err := newFloatBuf(ctx, hostMem{pinned: r.opts.device.Kind == "cuda"}, max(n, pooled))
	if err != nil {
		return nil, fmt.Errorf("output buffer: %w", err)
	}
	r.mu.Lock()
	r.allOuts = append(r.allOuts, b)
	r.mu.Unlock()
	return b, nil
}

func (r *Runner) putOut(b *floatBuf) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(b.buf) == r.opts.maxRows*r.man.EmbeddingDim {
		r.outs = append(r.outs, b)
		return
	}
	for i, x := range r.allOuts {
		if x == b {
			r.allOuts = append(r.allOuts[:i], r.allOuts[i+1:]...)
			break
		}
	}
	b.free()
}

// Embed runs one batch and appends Rows × Dim float32 embeddings (row-major) to dst.
//
// ctx is honoured while Embed waits: for a free session (CUDA-graph runners), for a CUDA graph
// capture of this process to end (CUDA runners; Warmup), for an output buffer, for its session's
// thread to take the batch (CUDA-graph runners: the batch is then not run), and during a plain
// ORT run, which its end terminates (ORT stops the run at its next kernel boundary). A CUDA graph
// replay cannot be interrupted: Embed waits for it (one graph launch, the batch's own GPU time)
// and its copies, and returns its result even if ctx ended meanwhile. In every case Embed returns
// only once ORT and the copies are done with in's buffers and its own: the caller may reuse in as
// soon as Embed returns.
// Errors wrap ErrRun, and ctx.Err() when ctx ended, ErrAlloc when no output buffer could be had,
// ErrShape for an input that does not match its Rows and Cols.
func (r *Runner) Embed(ctx context.Context, in Input, dst []float32) ([]float32, error) {
	n := in.Rows * in.Cols
	if in.Rows <= 0 || in.Cols <= 0 || len(in.IDs) < n || len(in.Mask) < n {
		return dst, fmt.Errorf("%w: batch %d×%d with %d ids and %d mask values", ErrShape, in.Rows, in.Cols, len(in.IDs), len(in.Mask))
	}
	r.mu.Lock()
	closed := r.closed
	r.mu.Unlock()
	if closed {
		return dst, ErrClosed
	}
	if err := ctx.Err(); err != nil {
		return dst, r.runErr(ctx, in, err)
	}
	if !r.man.SingleOutput() {
		return r.embedPrimary(ctx, in, dst)
	}
	dim := r.man.EmbeddingDim
	ob, err := r.getOut(ctx, in.Rows*dim)
	if err != nil {
		return dst, r.runErr(ctx, in, err)
	}
	defer r.putOut(ob)
	out := ob.buf[:in.Rows*dim]
	if r.graphs != nil {
		err = r.graphs.embed(ctx, in, out)
	} else {
		err = r.run(ctx, in, out)
	}
	if err != nil {
		return dst, r.runErr(ctx, in, err)
	}
	return append(dst, out...), nil
}

// runErr is Embed's error for err: it wraps ErrRun and err, and ctx.Err() once ctx has ended.
func (r *Runner) runErr(ctx context.Context, in Input, err error) error {
	if cerr := ctx.Err(); cerr != nil && !errors.Is(err, cerr) {
		return fmt.Errorf("%w: batch %d×%d on %s: %w (%w)", ErrRun, in.Rows, in.Cols, r.opts.device, cerr, err)
	}
	return fmt.Errorf("%w: batch %d×%d on %s: %w", ErrRun, in.Rows, in.Cols, r.opts.device, err)
}

// run is one ORT Run of in on the runner's session, into out (Rows × dim).
func (r *Runner) run(ctx context.Context, in Input, out []float32) error {
	if r.opts.device.Kind == "cuda" {
		if err := captureMu.rlock(ctx); err != nil {
			return err
		}
		defer captureMu.runlock()
	}
	return r.sess.runTokens(ctx, in, out)
}

// Warmup runs one all-<cls>/<eos> batch of each given shape ({rows, cols} pairs), so that no real
// batch pays for kernel selection or arena growth; it returns how long that took. The batches'
// buffers come from alloc (not used, and may be nil, for CUDA-graph runners). A CUDA-graph runner
// instead captures each shape's graph on each of its sessions, one per buffer set (two with copy
// overlap; one shape per cols: a later shape with more rows replaces it), without other CUDA work
// of this process meanwhile; call it before serving.
//
// ctx is checked before every shape (and, with CUDA graphs, before every session's capture) and
// honoured while Warmup waits for sessions and for other CUDA work to end; a warm-up run is
// terminated like Embed's, but a capture that has started runs to its end (a few runs of one
// shape: ORT must not be left in the middle of a capture).
func (r *Runner) Warmup(ctx context.Context, shapes [][2]int, alloc *HostAllocator) (time.Duration, error) {
	start := time.Now()
	var out []float32
	for _, s := range shapes {
		err := ctx.Err()
		switch {
		case err != nil:
		case s[0] <= 0 || s[1] <= 0:
			err = fmt.Errorf("%w: shape %d×%d", ErrShape, s[0], s[1])
		case r.graphs != nil:
			err = r.graphs.capture(ctx, s[0], s[1])
		default:
			out, err = r.warmRun(ctx, s[0], s[1], alloc, out)
		}
		if err != nil {
			return time.Since(start), fmt.Errorf("warm-up %d×%d: %w", s[0], s[1], err)
		}
	}
	return time.Since(start), nil
}

// warmRun embeds one rows×cols batch of padding rows from alloc.
func (r *Runner) warmRun(ctx context.Context, rows, cols int, alloc *HostAllocator, out []float32) ([]float32, error) {
	if alloc == nil {
		return out, fmt.Errorf("%w: Warmup without CUDA graphs needs a HostAllocator", ErrOption)
	}
	ids, mask, err := alloc.Alloc(rows * cols)
	if err != nil {
		return out, err
	}
	defer alloc.Free(ids, mask)
	padRows(ids, mask, cols)
	return r.Embed(ctx, Input{IDs: ids, Mask: mask, Rows: rows, Cols: cols}, out[:0])
}

// Close destroys the session and frees the output buffers. Embed must not be running. It is
// idempotent and returns nil (the error result is kept for io.Closer).
func (r *Runner) Close() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return nil
	}
	r.closed = true
	if r.graphs != nil {
		r.graphs.close()
	} else {
		r.sess.close()
	}
	for _, b := range r.allOuts {
		b.free()
	}
	r.allOuts, r.outs = nil, nil
	releaseEnv()
	return nil
}
