package gpurun

import (
	"context"
	"errors"
	"fmt"
	"math"
	"sync"
	"time"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
)

// GPU telemetry. NVML (libnvidia-ml.so.1) is loaded with dlopen when a sampler is created, never at
// build or link time, so this file builds and runs on machines without an NVIDIA driver: there the
// sampler is simply unavailable. BusyMeter needs no NVML at all.

// ErrNVMLUnavailable: NVML could not be initialised (no driver, no library), or the sampler was
// closed. Sample returns it wrapped; Reason says why.
var ErrNVMLUnavailable = errors.New("gpurun: nvml unavailable")

// GPUSample is one reading of one GPU.
type GPUSample struct {
	// Index is the NVML device index (PCI bus order; NVML ignores CUDA_VISIBLE_DEVICES).
	Index int
	// Name is the product name as NVML reports it, e.g. "NVIDIA H100 80GB HBM3"; empty if NVML
	// could not report it.
	Name string
	// Util is the fraction 0..1 of NVML's last sample period (1/6 s to 1 s depending on the
	// product, not the sampler's interval) during which at least one kernel was running.
	Util float64
	// MemUsed and MemTotal are device memory in bytes.
	MemUsed, MemTotal uint64
	// Time is when the reading was taken.
	Time time.Time
}

// Tier classifies how busy a GPU was while work was queued for it.
type Tier int

const (
	// TierUnknown: nothing was queued (the GPU is idle for lack of work, not a bottleneck) or the
	// utilisation is not a valid fraction.
	TierUnknown Tier = iota
	// TierFine: work queued and the GPU at least TierFineMin busy.
	TierFine
	// TierMild: work queued and the GPU at least TierMildMin but less than TierFineMin busy.
	TierMild
	// TierSevere: work queued but the GPU less than TierMildMin busy: a severe input bottleneck
	// (tokenising, batching or host-to-device copies cannot keep up).
	TierSevere
)

// Thresholds used by ClassifyTier, as fractions of time busy.
const (
	TierFineMin = 0.8
	TierMildMin = 0.5
)

// String returns "unknown", "fine", "mild" or "severe" (or "tier(N)" for other values).
func (t Tier) String() string {
	switch t {
	case TierUnknown:
		return "unknown"
	case TierFine:
		return "fine"
	case TierMild:
		return "mild"
	case TierSevere:
		return "severe"
	}
	return fmt.Sprintf("tier(%d)", int(t))
}

// ClassifyTier maps a utilisation fraction and whether work was queued to a Tier:
//
//	queued == false                 → TierUnknown (no work: idle is expected)
//	util NaN or < 0                 → TierUnknown (not a valid reading)
//	util >= TierFineMin (0.8)       → TierFine   (values above 1 count as 1)
//	TierMildMin (0.5) <= util < 0.8 → TierMild
//	util < TierMildMin (0.5)        → TierSevere
//
// It is a pure function.
func ClassifyTier(util float64, queued bool) Tier {
	switch {
	case !queued || math.IsNaN(util) || util < 0:
		return TierUnknown
	case util >= TierFineMin:
		return TierFine
	case util >= TierMildMin:
		return TierMild
	default:
		return TierSevere
	}
}

// nvmlLib is the part of NVML's library interface the sampler uses. nvml.Interface satisfies it;
// the default, nvmlPackage, goes through go-nvml's package-level functions so that every user of
// NVML in the process shares one library handle and one reference count.
type nvmlLib interface {
	Init() nvml.Return
	Shutdown() nvml.Return
	DeviceGetCount() (int, nvml.Return)
	DeviceGetHandleByIndex(int) (nvml.Device, nvml.Return)
}

type nvmlPackage struct{}

func (nvmlPackage) Init() nvml.Return                  { return nvml.Init() }
func (nvmlPackage) Shutdown() nvml.Return              { return nvml.Shutdown() }
func (nvmlPackage) DeviceGetCount() (int, nvml.Return) { return nvml.DeviceGetCount() }
func (nvmlPackage) DeviceGetHandleByIndex(i int) (nvml.Device, nvml.Return) {
	return nvml.DeviceGetHandleByIndex(i)
}

type nvmlOptions struct {
	interval time.Duration
	queued   func() bool
	report   func(GPUSample, Tier)
	onError  func(error)
	lib      nvmlLib
}

// NVMLOption configures an NVMLSampler.
type NVMLOption func(*nvmlOptions) error

// WithInterval sets how often the loop started by Start samples. Default 1s; must be > 0.
// Intervals shorter than NVML's own sample period (up to 1 s) repeat readings.
func WithInterval(d time.Duration) NVMLOption {
	return func(o *nvmlOptions) error {
		if d <= 0 {
			return fmt.Errorf("%w: nvml interval %v must be > 0", ErrOption, d)
		}
		o.interval = d
		return nil
	}
}

// WithQueued sets the function the loop calls once per interval to learn whether work is queued
// for the GPUs (see ClassifyTier). Default: always true. It is called from the loop goroutine and
// must be safe for that; it should be quick. Must not be nil.
func WithQueued(f func() bool) NVMLOption {
	return func(o *nvmlOptions) error {
		if f == nil {
			return fmt.Errorf("%w: nil queued func", ErrOption)
		}
		o.queued = f
		return nil
	}
}

// WithReport sets the function the loop calls once per watched GPU per interval with the reading
// and its Tier. Calls come one at a time from the loop goroutine; a slow report delays (and the
// ticker drops) later readings. Default: none (readings are discarded). Must not be nil.
func WithReport(f func(GPUSample, Tier)) NVMLOption {
	return func(o *nvmlOptions) error {
		if f == nil {
			return fmt.Errorf("%w: nil report func", ErrOption)
		}
		o.report = f
		return nil
	}
}

// WithOnError sets the function the loop calls, from its goroutine, when a reading fails for one
// or more GPUs (the error from Sample; GPUs that did answer are still reported). Default: errors
// are dropped, the sampler never logs. Must not be nil.
func WithOnError(f func(error)) NVMLOption {
	return func(o *nvmlOptions) error {
		if f == nil {
			return fmt.Errorf("%w: nil error func", ErrOption)
		}
		o.onError = f
		return nil
	}
}

// withNVMLLibrary replaces go-nvml's package-level library (tests: a fake, or a library that
// points at a path that does not exist).
func withNVMLLibrary(lib nvmlLib) NVMLOption {
	return func(o *nvmlOptions) error {
		if lib == nil {
			return fmt.Errorf("%w: nil nvml library", ErrOption)
		}
		o.lib = lib
		return nil
	}
}

type nvmlGPU struct {
	index int
	name  string
	dev   nvml.Device
}

// NVMLSampler reads utilisation and memory of a fixed set of GPUs through NVML.
//
// If NVML cannot be initialised (no NVIDIA driver or libnvidia-ml.so.1, as on CPU machines and
// CI) the sampler is unavailable: Available is false, Reason says why, Sample returns
// ErrNVMLUnavailable, Start returns a handle that is already done, Close does nothing.
//
// The sampler holds one NVML reference from NewNVMLSampler to Close; the caller owns it and must
// Close it. All methods are safe for concurrent use. Close makes running loops end at their next
// tick; for an orderly shutdown Stop them and wait on Done first.
type NVMLSampler struct {
	opts nvmlOptions
	gpus []nvmlGPU // fixed after construction

	mu     sync.RWMutex // write-held by Close while NVML shuts down; read-held around NVML calls
	avail  bool
	reason string
	inited bool // this sampler holds an NVML reference
}

// NewNVMLSampler watches the GPUs with the given NVML indices (PCI bus order; note that CUDA
// device numbers follow CUDA_VISIBLE_DEVICES and CUDA_DEVICE_ORDER, so cuda:N need not be NVML
// index N). indices must be non-empty, non-negative and distinct (ErrOption).
//
// If NVML fails to initialise it returns an unavailable sampler and no error; callers may log
// Reason. If NVML works but an index does not name a GPU, it returns an error wrapping ErrDevice.
// Initialising NVML may take a few seconds on hosts without the persistence daemon.
func NewNVMLSampler(indices []int, opts ...NVMLOption) (*NVMLSampler, error) {
	o := nvmlOptions{interval: time.Second, queued: func() bool { return true }, lib: nvmlPackage{}}
	for _, opt := range opts {
		if err := opt(&o); err != nil {
			return nil, err
		}
	}
	if len(indices) == 0 {
		return nil, fmt.Errorf("%w: no GPU indices to sample", ErrOption)
	}
	seen := make(map[int]bool, len(indices))
	for _, i := range indices {
		if i < 0 {
			return nil, fmt.Errorf("%w: GPU index %d must be >= 0", ErrOption, i)
		}
		if seen[i] {
			return nil, fmt.Errorf("%w: GPU index %d listed twice", ErrOption, i)
		}
		seen[i] = true
	}

	s := &NVMLSampler{opts: o}
	if ret := o.lib.Init(); ret != nvml.SUCCESS {
		s.reason = fmt.Sprintf("nvml init: %v", ret)
		if ret == nvml.ERROR_LIBRARY_NOT_FOUND {
			s.reason += " (libnvidia-ml.so.1 not loadable: no NVIDIA driver on this host?)"
		}
		return s, nil
	}
	fail := func(err error) (*NVMLSampler, error) {
		_ = o.lib.Shutdown()
		return nil, err
	}
	count, ret := o.lib.DeviceGetCount()
	if ret != nvml.SUCCESS {
		return fail(fmt.Errorf("%w: nvml device count: %w", ErrDevice, ret))
	}
	s.gpus = make([]nvmlGPU, 0, len(indices))
	for _, i := range indices {
		if i >= count {
			return fail(fmt.Errorf("%w: nvml GPU %d: only %d GPU(s) visible", ErrDevice, i, count))
		}
		dev, ret := o.lib.DeviceGetHandleByIndex(i)
		if ret != nvml.SUCCESS {
			return fail(fmt.Errorf("%w: nvml GPU %d handle: %w", ErrDevice, i, ret))
		}
		name, ret := dev.GetName()
		if ret != nvml.SUCCESS {
			name = ""
		}
		s.gpus = append(s.gpus, nvmlGPU{index: i, name: name, dev: dev})
	}
	s.avail, s.inited = true, true
	return s, nil
}

// Available reports whether NVML was initialised and the sampler is not closed.
func (s *NVMLSampler) Available() bool {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.avail
}

// Reason says why the sampler is unavailable ("" while it is available).
func (s *NVMLSampler) Reason() string {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.reason
}

// Sample reads every watched GPU now: utilisation with nvmlDeviceGetUtilizationRates, memory with
// nvmlDeviceGetMemoryInfo. Readings come in the order of the indices given to NewNVMLSampler. A
// GPU whose reading fails is left out and its error, wrapping ErrDevice and the nvml.Return (for
// example nvml.ERROR_NOT_SUPPORTED for utilisation on MIG-enabled GPUs, nvml.ERROR_GPU_IS_LOST),
// is joined into the returned error next to the readings that succeeded. An unavailable sampler
// returns an error wrapping ErrNVMLUnavailable. The returned slice is the caller's.
func (s *NVMLSampler) Sample() ([]GPUSample, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if !s.avail {
		return nil, fmt.Errorf("%w: %s", ErrNVMLUnavailable, s.reason)
	}
	out := make([]GPUSample, 0, len(s.gpus))
	var errs []error
	for _, g := range s.gpus {
		u, ret := g.dev.GetUtilizationRates()
		if ret != nvml.SUCCESS {
			errs = append(errs, fmt.Errorf("%w: nvml GPU %d utilization: %w", ErrDevice, g.index, ret))
			continue
		}
		m, ret := g.dev.GetMemoryInfo()
		if ret != nvml.SUCCESS {
			errs = append(errs, fmt.Errorf("%w: nvml GPU %d memory info: %w", ErrDevice, g.index, ret))
			continue
		}
		out = append(out, GPUSample{
			Index:    g.index,
			Name:     g.name,
			Util:     float64(min(u.Gpu, 100)) / 100,
			MemUsed:  m.Used,
			MemTotal: m.Total,
			Time:     time.Now(),
		})
	}
	return out, errors.Join(errs...)
}

// Start samples every interval (default 1s; the first reading one interval after Start) until ctx
// is cancelled, the handle is stopped or the sampler is closed. Each tick it calls Sample; read
// errors go to the WithOnError function; if any GPU was read it calls the queued function once and
// then report once per GPU read, with ClassifyTier of that GPU's Util and the queued answer. On an unavailable sampler the returned handle is already done.
// Each call starts its own loop.
func (s *NVMLSampler) Start(ctx context.Context) *SamplerHandle {
	h := &SamplerHandle{stop: make(chan struct{}), done: make(chan struct{})}
	if !s.Available() {
		close(h.done)
		return h
	}
	go s.loop(ctx, h)
	return h
}

func (s *NVMLSampler) loop(ctx context.Context, h *SamplerHandle) {
	defer close(h.done)
	t := time.NewTicker(s.opts.interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-h.stop:
			return
		case <-t.C:
		}
		samples, err := s.Sample()
		if errors.Is(err, ErrNVMLUnavailable) {
			return // closed
		}
		if err != nil && s.opts.onError != nil {
			s.opts.onError(err)
		}
		if s.opts.report == nil || len(samples) == 0 {
			continue
		}
		queued := s.opts.queued()
		for _, g := range samples {
			s.opts.report(g, ClassifyTier(g.Util, queued))
		}
	}
}

// Close releases the sampler's NVML reference (nvml.Shutdown; the library is unloaded when the
// last reference in the process goes). It waits for Sample calls in progress, after which the
// sampler is unavailable with Reason "closed". On a sampler that never had NVML it does nothing.
// Close is idempotent; it returns an error wrapping ErrDevice if nvml.Shutdown fails.
func (s *NVMLSampler) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.inited {
		return nil
	}
	s.avail, s.inited, s.reason = false, false, "closed"
	if ret := s.opts.lib.Shutdown(); ret != nvml.SUCCESS {
		return fmt.Errorf("%w: nvml shutdown: %w", ErrDevice, ret)
	}
	return nil
}

// SamplerHandle is a running sampling loop.
type SamplerHandle struct {
	stop, done chan struct{}
	once       sync.Once
}

// Stop tells the loop to exit; it does not wait (see Done). It is idempotent and safe for
// concurrent use.
func (h *SamplerHandle) Stop() { h.once.Do(func() { close(h.stop) }) }

// Done is closed once the loop has exited; after that report is not called again.
func (h *SamplerHandle) Done() <-chan struct{} { return h.done }

// BusyMeter measures how busy the runner is without NVML, so it works on the CPU too: the fraction
// of wall time during which at least one run was in flight (overlapping runs are not counted
// twice), the number of runs, and the mean gap: how long the runner sat with nothing in flight
// between the end of one run and the start of the next (its wait for the next batch).
//
// Wrap each run:
//
//	end := meter.Begin()
//	out, err := runner.Embed(ctx, in)
//	end()
//
// Create it with NewBusyMeter; the zero value also works, with its window starting at first use.
// It is safe for concurrent use. Begin and end do not allocate.
type BusyMeter struct {
	mu  sync.Mutex
	now func() time.Time // nil: time.Now (tests swap in a fake clock)
	end func()           // m.endRun, built once so Begin does not allocate a closure per call

	started   bool
	winStart  time.Time     // start of the current Snapshot window
	inflight  int           // runs begun and not ended
	busySince time.Time     // when inflight last rose from 0 (or the window start), if inflight > 0
	busy      time.Duration // closed busy periods inside the window
	idleSince time.Time     // when inflight last fell to 0; zero before the first run ended
	runs      int           // runs ended inside the window
	gapSum    time.Duration // closed gaps ended inside the window
	gaps      int
}

// NewBusyMeter returns a meter whose first window starts now.
func NewBusyMeter() *BusyMeter {
	m := &BusyMeter{}
	m.mu.Lock()
	m.startLocked(m.clock())
	m.mu.Unlock()
	return m
}

func (m *BusyMeter) clock() time.Time {
	if m.now != nil {
		return m.now()
	}
	return time.Now()
}

func (m *BusyMeter) startLocked(now time.Time) {
	if !m.started {
		m.started = true
		m.winStart = now
		m.end = m.endRun
	}
}

// Begin marks the start of a run and returns the function that marks its end. Call that function
// exactly once. All runs share one end function, so a second call cannot be told apart from the
// end of another run in flight: it ends that run early; with nothing in flight it is ignored.
func (m *BusyMeter) Begin() (end func()) {
	m.mu.Lock()
	now := m.clock()
	m.startLocked(now)
	if m.inflight == 0 {
		m.busySince = now
		if !m.idleSince.IsZero() {
			m.gapSum += now.Sub(m.idleSince)
			m.gaps++
		}
	}
	m.inflight++
	end = m.end
	m.mu.Unlock()
	return end
}

func (m *BusyMeter) endRun() {
	m.mu.Lock()
	if m.inflight > 0 {
		now := m.clock()
		m.inflight--
		m.runs++
		if m.inflight == 0 {
			m.busy += now.Sub(m.busySince)
			m.idleSince = now
		}
	}
	m.mu.Unlock()
}

// Snapshot returns, for the window since NewBusyMeter or the last reset:
//
//   - busyFrac: the fraction 0..1 of the window with at least one run in flight (including a run
//     still in flight now), 0 for an empty window;
//   - runs: the runs that ended in the window;
//   - meanGap: the mean length of the idle gaps (nothing in flight, from the end of a run to the
//     start of the next) that ended in the window, counted whole even if they began before it;
//     0 if none. Time before the first run and a gap still open now are not gaps.
//
// With reset the next window starts now; runs in flight carry over into it.
func (m *BusyMeter) Snapshot(reset bool) (busyFrac float64, runs int, meanGap time.Duration) {
	m.mu.Lock()
	defer m.mu.Unlock()
	now := m.clock()
	m.startLocked(now)
	busy := m.busy
	if m.inflight > 0 {
		busy += now.Sub(m.busySince)
	}
	if window := now.Sub(m.winStart); window > 0 {
		busyFrac = min(max(float64(busy)/float64(window), 0), 1)
	}
	runs = m.runs
	if m.gaps > 0 {
		meanGap = m.gapSum / time.Duration(m.gaps)
	}
	if reset {
		m.winStart = now
		m.busy, m.runs, m.gapSum, m.gaps = 0, 0, 0, 0
		if m.inflight > 0 {
			m.busySince = now
		}
	}
	return busyFrac, runs, meanGap
}
