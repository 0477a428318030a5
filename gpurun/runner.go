package gpurun

import (
	"context"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	ort "github.com/yalue/onnxruntime_go"
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

var (
	envMu   sync.Mutex
	envRefs int
)

// acquireEnv initialises ORT's process-wide environment on first use.
func acquireEnv(lib string) error {
	envMu.Lock()
	defer envMu.Unlock()
	if envRefs == 0 {
		if _, err := os.Stat(lib); err != nil {
			return fmt.Errorf("%w: %v (run scripts/fetch-ort.sh or set ONNXRUNTIME_SHARED_LIBRARY_PATH)", ErrLibrary, err)
		}
		ort.SetSharedLibraryPath(lib)
		if err := ort.InitializeEnvironment(ort.WithLogLevelWarning()); err != nil {
			return fmt.Errorf("%w: loading %s: %v", ErrLibrary, lib, err)
		}
	}
	envRefs++
	return nil
}

func releaseEnv() {
	envMu.Lock()
	defer envMu.Unlock()
	envRefs--
	if envRefs == 0 {
		_ = ort.DestroyEnvironment()
	}
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
	device     Device
	lib        string
	threads    int
	maxRows    int
	gpuMemGiB  float64
	verifyHash bool
	cudaExtra  map[string]string
	graphs     string
	concurrent int
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

// WithLibrary sets the ONNX Runtime shared library path. Default LibraryPath().
func WithLibrary(path string) Option {
	return func(o *options) error {
		if path == "" {
			return fmt.Errorf("%w: empty library path", ErrOption)
		}
		o.lib = path
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

// WithGPUMemLimit caps the CUDA arena in GiB. Default 0: ORT's default (no cap).
func WithGPUMemLimit(gib float64) Option {
	return func(o *options) error {
		if gib < 0 {
			return fmt.Errorf("%w: gpu memory limit %v GiB must be >= 0", ErrOption, gib)
		}
		o.gpuMemGiB = gib
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
// sessions (each with its own stream, captured graphs and copy of the weights; ORT runs one
// batch at a time on such a session); other runners run any number at once and ignore it.
// Default 2 (the worker passes --inflight).
func WithConcurrentRuns(n int) Option {
	return func(o *options) error {
		if n <= 0 {
			return fmt.Errorf("%w: concurrent runs %d must be > 0", ErrOption, n)
		}
		o.concurrent = n
		return nil
	}
}

// WithVerifyHash checks the model file against the manifest's sha256 at start. Default true.
func WithVerifyHash(v bool) Option {
	return func(o *options) error { o.verifyHash = v; return nil }
}

// Input is one tokenised batch: Rows × Cols int64 ids and mask, row-major. The slices should be
// C memory (HostAllocator); they are read during Embed only.
type Input struct {
	IDs, Mask  []int64
	Rows, Cols int
}

// Runner runs one ONNX model on one device. Embed is safe for concurrent use: each concurrent call
// is its own ORT Run (on CUDA, its own stream); a CUDA-graph runner (WithCUDAGraphs) runs up to
// WithConcurrentRuns calls at once, one per session, and the rest wait for a free session. Close
// waits for nothing: callers stop calling Embed first.
type Runner struct {
	man     *Manifest
	opts    options
	session *ort.DynamicAdvancedSession // nil with CUDA graphs
	graphs  *graphPool                  // nil without

	mu      sync.Mutex
	outs    []*floatBuf
	allOuts []*floatBuf
	closed  bool
}

// New loads DIR/model.json and DIR/model.onnx and creates an ORT session on the chosen device.
func New(modelDir string, opts ...Option) (*Runner, error) {
	o := options{device: Device{Kind: "cpu"}, maxRows: 256, verifyHash: true, graphs: GraphsAuto, concurrent: 2}
	for _, opt := range opts {
		if err := opt(&o); err != nil {
			return nil, err
		}
	}
	if o.lib == "" {
		o.lib = LibraryPath()
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
	graphs, err := o.useGraphs(man)
	if err != nil {
		return nil, err
	}
	if o.verifyHash {
		if err := man.VerifySHA256(); err != nil {
			return nil, err
		}
	}
	if err := acquireEnv(o.lib); err != nil {
		return nil, err
	}
	r := &Runner{man: man, opts: o}
	if graphs {
		if r.graphs, err = newGraphPool(r, o.concurrent); err != nil {
			releaseEnv()
			return nil, err
		}
		return r, nil
	}
	so, err := r.sessionOptions(nil)
	if err != nil {
		releaseEnv()
		return nil, err
	}
	defer so.Destroy()
	r.session, err = ort.NewDynamicAdvancedSession(man.ModelPath(), man.Inputs, []string{man.Output}, so)
	if err != nil {
		releaseEnv()
		return nil, fmt.Errorf("%w: loading %s on %s: %v", ErrSession, man.ModelPath(), o.device, err)
	}
	return r, nil
}

// useGraphs resolves the CUDA graph mode for man.
func (o *options) useGraphs(man *Manifest) (bool, error) {
	switch {
	case o.graphs == GraphsOff:
		return false, nil
	case o.graphs == GraphsAuto:
		return o.device.Kind == "cuda" && man.Attention == "mha", nil
	case o.device.Kind != "cuda":
		return false, fmt.Errorf("%w: CUDA graphs need a CUDA device, not %s", ErrOption, o.device)
	case man.Attention == "packed":
		return false, fmt.Errorf("%w: model %s: CUDA graphs need static shapes, and packed attention's token count "+
			"depends on the data; export with tools/export_esm2.py --fused mha", ErrOption, man.Name)
	}
	return true, nil
}

// CUDAGraphs says whether the runner replays CUDA graphs.
func (r *Runner) CUDAGraphs() bool { return r.graphs != nil }

// sessionOptions are the runner's ORT session options: device, threads, CUDA provider options
// (seqembed's, then extra, then WithCUDAProviderOptions') and the model's custom ops.
func (r *Runner) sessionOptions(extra map[string]string) (*ort.SessionOptions, error) {
	so, err := ort.NewSessionOptions()
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrSession, err)
	}
	fail := func(what string, err error) (*ort.SessionOptions, error) {
		so.Destroy()
		return nil, fmt.Errorf("%w: %s: %v", ErrSession, what, err)
	}
	if err := so.SetGraphOptimizationLevel(ort.GraphOptimizationLevelEnableAll); err != nil {
		return fail("graph optimisation level", err)
	}
	if r.opts.threads > 0 {
		if err := so.SetIntraOpNumThreads(r.opts.threads); err != nil {
			return fail("intra-op threads", err)
		}
	}
	if r.opts.device.Kind == "cuda" {
		cuda, err := ort.NewCUDAProviderOptions()
		if err != nil {
			return fail("CUDA provider options", err)
		}
		defer cuda.Destroy()
		cfg := map[string]string{
			"device_id":                 strconv.Itoa(r.opts.device.Index),
			"arena_extend_strategy":     "kSameAsRequested",
			"cudnn_conv_algo_search":    "HEURISTIC",
			"do_copy_in_default_stream": "0",
		}
		if r.opts.gpuMemGiB > 0 {
			cfg["gpu_mem_limit"] = strconv.FormatInt(int64(r.opts.gpuMemGiB*(1<<30)), 10)
		}
		maps.Copy(cfg, extra)
		maps.Copy(cfg, r.opts.cudaExtra)
		if err := cuda.Update(cfg); err != nil {
			return fail("CUDA provider options", err)
		}
		if err := so.AppendExecutionProviderCUDA(cuda); err != nil {
			return fail(fmt.Sprintf("CUDA execution provider on %s", r.opts.device), fmt.Errorf("%w: %v", ErrDevice, err))
		}
	}
	if r.man.CustomOps != "" {
		if err := registerCustomOps(so, r.opts.lib, r.man.CustomOpsPath()); err != nil {
			so.Destroy()
			return nil, err
		}
	}
	return so, nil
}

// Manifest returns the model's manifest. The caller must not modify it.
func (r *Runner) Manifest() *Manifest { return r.man }

// Dim is the embedding dimension.
func (r *Runner) Dim() int { return r.man.EmbeddingDim }

// Device is where the runner runs.
func (r *Runner) Device() Device { return r.opts.device }

func (r *Runner) getOut(n int) *floatBuf {
	r.mu.Lock()
	defer r.mu.Unlock()
	if n <= r.opts.maxRows*r.man.EmbeddingDim && len(r.outs) > 0 {
		b := r.outs[len(r.outs)-1]
		r.outs = r.outs[:len(r.outs)-1]
		return b
	}
	b := newFloatBuf(hostMem{pinned: r.opts.device.Kind == "cuda"}, max(n, r.opts.maxRows*r.man.EmbeddingDim))
	r.allOuts = append(r.allOuts, b)
	return b
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

// Embed runs one batch and appends Rows × Dim float32 embeddings (row-major) to dst. It returns
// when the run is done or ctx is cancelled (the run is then terminated).
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
	dim := r.man.EmbeddingDim
	ob := r.getOut(in.Rows * dim)
	defer r.putOut(ob)
	var err error
	if r.graphs != nil {
		err = r.graphs.embed(ctx, in, ob.buf[:in.Rows*dim])
	} else {
		err = r.run(ctx, in, ob.buf[:in.Rows*dim])
	}
	if err != nil {
		if ctx.Err() != nil {
			return dst, fmt.Errorf("%w: batch %d×%d on %s: %w", ErrRun, in.Rows, in.Cols, r.opts.device, ctx.Err())
		}
		return dst, fmt.Errorf("%w: batch %d×%d on %s: %v", ErrRun, in.Rows, in.Cols, r.opts.device, err)
	}
	runtime.KeepAlive(in)
	return append(dst, ob.buf[:in.Rows*dim]...), nil
}

// run is one ORT Run of in on the runner's session, into out (Rows × dim, C memory).
func (r *Runner) run(ctx context.Context, in Input, out []float32) error {
	n := in.Rows * in.Cols
	shape := ort.NewShape(int64(in.Rows), int64(in.Cols))
	ids, err := ort.NewTensor(shape, in.IDs[:n])
	if err != nil {
		return fmt.Errorf("input tensor: %v", err)
	}
	defer ids.Destroy()
	mask, err := ort.NewTensor(shape, in.Mask[:n])
	if err != nil {
		return fmt.Errorf("mask tensor: %v", err)
	}
	defer mask.Destroy()
	res, err := ort.NewTensor(ort.NewShape(int64(in.Rows), int64(r.man.EmbeddingDim)), out)
	if err != nil {
		return fmt.Errorf("output tensor: %v", err)
	}
	defer res.Destroy()
	var ro *ort.RunOptions
	if ctx.Done() != nil {
		if ro, err = ort.NewRunOptions(); err != nil {
			return fmt.Errorf("run options: %v", err)
		}
		defer ro.Destroy()
		stop := context.AfterFunc(ctx, func() { _ = ro.Terminate() })
		defer stop()
	}
	if r.opts.device.Kind == "cuda" {
		captureMu.RLock()
		defer captureMu.RUnlock()
	}
	return r.session.RunWithOptions([]ort.Value{ids, mask}, []ort.Value{res}, ro)
}

// Warmup runs one all-<cls>/<eos> batch of each given shape ({rows, cols} pairs), so that no real
// batch pays for kernel selection or arena growth; it returns how long that took. A CUDA-graph
// runner instead captures each shape's graph on each of its sessions (one shape per cols: a
// later shape with more rows replaces it), without other CUDA work of this process meanwhile;
// call it before serving.
func (r *Runner) Warmup(ctx context.Context, shapes [][2]int, alloc *HostAllocator) (time.Duration, error) {
	start := time.Now()
	var out []float32
	for _, s := range shapes {
		var err error
		if r.graphs != nil {
			err = r.graphs.capture(ctx, s[0], s[1])
		} else {
			ids, mask := alloc.Alloc(s[0] * s[1])
			padRows(ids, mask, s[1])
			out, err = r.Embed(ctx, Input{IDs: ids, Mask: mask, Rows: s[0], Cols: s[1]}, out[:0])
			alloc.Free(ids, mask)
		}
		if err != nil {
			return time.Since(start), fmt.Errorf("warm-up %d×%d: %w", s[0], s[1], err)
		}
	}
	return time.Since(start), nil
}

// Close destroys the session and frees the output buffers. Embed must not be running.
func (r *Runner) Close() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return nil
	}
	r.closed = true
	var err error
	if r.graphs != nil {
		r.graphs.close()
	} else {
		err = r.session.Destroy()
	}
	for _, b := range r.allOuts {
		b.free()
	}
	r.allOuts, r.outs = nil, nil
	releaseEnv()
	if err != nil {
		return fmt.Errorf("%w: destroying session: %v", ErrSession, err)
	}
	return nil
}
