package gpurun

import (
	"context"
	"errors"
	"fmt"
	"math"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/NVIDIA/go-nvml/pkg/nvml"

	"github.com/seqembed/seqembed/internal/testutil"
)

func TestClassifyTier(t *testing.T) {
	for _, c := range []struct {
		util   float64
		queued bool
		want   Tier
	}{
		{0, false, TierUnknown},
		{0.95, false, TierUnknown},
		{1, true, TierFine},
		{1.2, true, TierFine},
		{0.8, true, TierFine},
		{0.7999, true, TierMild},
		{0.5, true, TierMild},
		{0.4999, true, TierSevere},
		{0, true, TierSevere},
		{-0.1, true, TierUnknown},
		{math.NaN(), true, TierUnknown},
	} {
		if got := ClassifyTier(c.util, c.queued); got != c.want {
			t.Errorf("ClassifyTier(%v, %v) = %v, want %v", c.util, c.queued, got, c.want)
		}
	}
	for tier, s := range map[Tier]string{TierUnknown: "unknown", TierFine: "fine", TierMild: "mild", TierSevere: "severe", 9: "tier(9)"} {
		if tier.String() != s {
			t.Errorf("Tier(%d).String() = %q, want %q", int(tier), tier.String(), s)
		}
	}
}

// checkUnavailable exercises every method of a sampler without NVML.
func checkUnavailable(t *testing.T, s *NVMLSampler) {
	t.Helper()
	if s.Available() {
		t.Fatal("Available() = true without NVML")
	}
	if s.Reason() == "" {
		t.Error("Reason() is empty")
	}
	if got, err := s.Sample(); !errors.Is(err, ErrNVMLUnavailable) || got != nil {
		t.Errorf("Sample() = %v, %v; want nil, ErrNVMLUnavailable", got, err)
	}
	h := s.Start(context.Background())
	select {
	case <-h.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("Start on an unavailable sampler: Done not closed")
	}
	h.Stop()
	h.Stop()
	for range 2 {
		if err := s.Close(); err != nil {
			t.Errorf("Close() = %v", err)
		}
	}
	if s.Reason() == "" {
		t.Error("Reason() empty after Close")
	}
}

// TestNVMLUnavailable uses a library path that cannot exist, so it holds on GPU hosts too.
func TestNVMLUnavailable(t *testing.T) {
	var reports atomic.Int32
	lib := nvml.New(nvml.WithLibraryPath("/nonexistent/seqembed/libnvidia-ml.so.1"))
	s, err := NewNVMLSampler([]int{0, 1}, withNVMLLibrary(lib), WithInterval(time.Millisecond),
		WithReport(func(GPUSample, Tier) { reports.Add(1) }))
	if err != nil {
		t.Fatalf("NewNVMLSampler: %v (want an unavailable sampler, no error)", err)
	}
	t.Logf("reason: %s", s.Reason())
	checkUnavailable(t, s)
	if reports.Load() != 0 {
		t.Errorf("report called %d times on an unavailable sampler", reports.Load())
	}
}

// TestNVMLDefaultLibrary goes through go-nvml's real loader; it checks the no-driver path where
// libnvidia-ml.so.1 is absent (this machine, CI) and only closes the sampler where it is present.
func TestNVMLDefaultLibrary(t *testing.T) {
	s, err := NewNVMLSampler([]int{0})
	if err != nil {
		t.Fatalf("NewNVMLSampler: %v", err)
	}
	if s.Available() {
		if err := s.Close(); err != nil {
			t.Error(err)
		}
		t.Skip("NVML is present here; TestNVMLOnGPU covers this host")
	}
	t.Logf("reason: %s", s.Reason())
	checkUnavailable(t, s)
}

func TestNVMLOptions(t *testing.T) {
	for name, c := range map[string]struct {
		indices []int
		opts    []NVMLOption
	}{
		"no indices":    {nil, nil},
		"negative":      {[]int{-1}, nil},
		"duplicate":     {[]int{0, 2, 0}, nil},
		"zero interval": {[]int{0}, []NVMLOption{WithInterval(0)}},
		"neg interval":  {[]int{0}, []NVMLOption{WithInterval(-time.Second)}},
		"nil queued":    {[]int{0}, []NVMLOption{WithQueued(nil)}},
		"nil report":    {[]int{0}, []NVMLOption{WithReport(nil)}},
		"nil onError":   {[]int{0}, []NVMLOption{WithOnError(nil)}},
		"nil library":   {[]int{0}, []NVMLOption{withNVMLLibrary(nil)}},
	} {
		s, err := NewNVMLSampler(c.indices, c.opts...)
		if !errors.Is(err, ErrOption) || s != nil {
			t.Errorf("%s: got %v, %v; want nil, ErrOption", name, s, err)
		}
	}
}

// fakeNVML is a library with GPUs whose readings the test sets. Methods the sampler does not use
// panic through the nil embedded interfaces.
type fakeNVML struct {
	mu        sync.Mutex
	refs      int
	gpus      []*fakeGPU
	countRet  nvml.Return
	shutdowns int
}

type fakeGPU struct {
	nvml.Device
	lib     *fakeNVML
	name    string
	util    uint32
	utilRet nvml.Return
	mem     nvml.Memory
}

func (f *fakeNVML) Init() nvml.Return {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.refs++
	return nvml.SUCCESS
}

func (f *fakeNVML) Shutdown() nvml.Return {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.shutdowns++
	if f.refs == 0 {
		return nvml.ERROR_UNINITIALIZED
	}
	f.refs--
	return nvml.SUCCESS
}

func (f *fakeNVML) DeviceGetCount() (int, nvml.Return) { return len(f.gpus), f.countRet }

func (f *fakeNVML) DeviceGetHandleByIndex(i int) (nvml.Device, nvml.Return) {
	if i >= len(f.gpus) {
		return nil, nvml.ERROR_INVALID_ARGUMENT
	}
	return f.gpus[i], nvml.SUCCESS
}

// live fails the test's reads after Shutdown, as the real library would (or worse, crash).
func (g *fakeGPU) live() bool {
	g.lib.mu.Lock()
	defer g.lib.mu.Unlock()
	return g.lib.refs > 0
}

func (g *fakeGPU) GetName() (string, nvml.Return) { return g.name, nvml.SUCCESS }

func (g *fakeGPU) GetUtilizationRates() (nvml.Utilization, nvml.Return) {
	if !g.live() {
		panic("nvml call after Shutdown")
	}
	g.lib.mu.Lock()
	defer g.lib.mu.Unlock()
	return nvml.Utilization{Gpu: g.util}, g.utilRet
}

func (g *fakeGPU) GetMemoryInfo() (nvml.Memory, nvml.Return) {
	if !g.live() {
		panic("nvml call after Shutdown")
	}
	return g.mem, nvml.SUCCESS
}

func newFakeNVML(utils ...uint32) *fakeNVML {
	f := &fakeNVML{}
	for _, u := range utils {
		f.gpus = append(f.gpus, &fakeGPU{lib: f, name: "Fake H100", util: u,
			mem: nvml.Memory{Total: 80 << 30, Used: 10 << 30, Free: 70 << 30}})
	}
	return f
}

func TestNVMLFakeSample(t *testing.T) {
	f := newFakeNVML(95, 60, 10)
	s, err := NewNVMLSampler([]int{2, 0}, withNVMLLibrary(f))
	if err != nil {
		t.Fatal(err)
	}
	if !s.Available() || s.Reason() != "" {
		t.Fatalf("Available %v, Reason %q", s.Available(), s.Reason())
	}
	got, err := s.Sample()
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || got[0].Index != 2 || got[1].Index != 0 {
		t.Fatalf("samples %+v: want GPUs 2 then 0", got)
	}
	if got[0].Util != 0.1 || got[1].Util != 0.95 || got[0].MemTotal != 80<<30 ||
		got[0].MemUsed != 10<<30 || got[0].Name != "Fake H100" || got[0].Time.IsZero() {
		t.Errorf("samples %+v", got)
	}

	// A GPU that cannot report utilisation is left out; the other still reads.
	f.mu.Lock()
	f.gpus[0].utilRet = nvml.ERROR_NOT_SUPPORTED
	f.mu.Unlock()
	got, err = s.Sample()
	if !errors.Is(err, ErrDevice) || !errors.Is(err, nvml.ERROR_NOT_SUPPORTED) {
		t.Errorf("err = %v, want ErrDevice and ERROR_NOT_SUPPORTED", err)
	}
	if len(got) != 1 || got[0].Index != 2 {
		t.Errorf("samples %+v: want only GPU 2", got)
	}

	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if s.Available() || s.Reason() != "closed" || f.refs != 0 || f.shutdowns != 1 {
		t.Errorf("after Close: Available %v, Reason %q, refs %d, shutdowns %d",
			s.Available(), s.Reason(), f.refs, f.shutdowns)
	}
	if _, err := s.Sample(); !errors.Is(err, ErrNVMLUnavailable) {
		t.Errorf("Sample after Close: %v", err)
	}
}

func TestNVMLFakeBadIndex(t *testing.T) {
	f := newFakeNVML(50)
	if _, err := NewNVMLSampler([]int{0, 1}, withNVMLLibrary(f)); !errors.Is(err, ErrDevice) {
		t.Errorf("index past the last GPU: err = %v, want ErrDevice", err)
	}
	f.countRet = nvml.ERROR_UNKNOWN
	if _, err := NewNVMLSampler([]int{0}, withNVMLLibrary(f)); !errors.Is(err, ErrDevice) || !errors.Is(err, nvml.ERROR_UNKNOWN) {
		t.Errorf("count failure: err = %v", err)
	}
	if f.refs != 0 {
		t.Errorf("failed constructors left %d NVML references", f.refs)
	}
}

func TestNVMLFakeLoop(t *testing.T) {
	f := newFakeNVML(30, 90)
	var queued atomic.Bool
	type rep struct {
		idx  int
		tier Tier
	}
	reps := make(chan rep, 64)
	var errs atomic.Int32
	s, err := NewNVMLSampler([]int{0, 1}, withNVMLLibrary(f),
		WithInterval(time.Millisecond),
		WithQueued(queued.Load),
		WithReport(func(g GPUSample, tier Tier) {
			select {
			case reps <- rep{g.Index, tier}:
			default:
			}
		}),
		WithOnError(func(error) { errs.Add(1) }))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()

	ctx, cancel := context.WithCancel(context.Background())
	h := s.Start(ctx)
	want := map[int]Tier{0: TierUnknown, 1: TierUnknown} // nothing queued yet
	// drain takes the reports delivered so far, marking the GPUs reported with their wanted tier.
	drain := func(seen map[int]bool) {
		for {
			select {
			case r := <-reps:
				if r.tier == want[r.idx] {
					seen[r.idx] = true
				}
			default:
				return
			}
		}
	}
	wait := func() {
		t.Helper()
		seen := map[int]bool{}
		testutil.Eventually(t, 10*time.Second, func() (bool, string) {
			drain(seen)
			return len(seen) == 2, fmt.Sprintf("reports with tiers %v for both GPUs (seen %v)", want, seen)
		})
	}
	wait()
	queued.Store(true)
	want = map[int]Tier{0: TierSevere, 1: TierFine}
	wait()
	if errs.Load() != 0 {
		t.Errorf("%d read errors", errs.Load())
	}

	cancel()
	select {
	case <-h.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("loop did not end after cancel")
	}
	h.Stop()

	// Close while a loop runs (it has reported): the loop ends and never touches NVML after
	// Shutdown.
	drain(map[int]bool{}) // the first loop is done: what is left is its
	h2 := s.Start(context.Background())
	testutil.EventuallyTrue(t, 10*time.Second, "a report from the second loop", func() bool { return len(reps) > 0 })
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	select {
	case <-h2.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("loop did not end after Close")
	}
}

// TestNVMLOnGPU needs a real NVIDIA GPU 0: SEQEMBED_GPU_TESTS=1 go test ./gpurun/ -run NVMLOnGPU -v
func TestNVMLOnGPU(t *testing.T) {
	SkipWithoutGPU(t)
	reports := make(chan GPUSample, 16)
	s, err := NewNVMLSampler([]int{0}, WithInterval(50*time.Millisecond),
		WithReport(func(g GPUSample, _ Tier) {
			select {
			case reports <- g:
			default:
			}
		}))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if !s.Available() {
		t.Fatalf("NVML unavailable on a GPU host: %s", s.Reason())
	}
	got, err := s.Sample()
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 1 {
		t.Fatalf("%d samples, want 1", len(got))
	}
	g := got[0]
	t.Logf("%+v", g)
	if g.Index != 0 || g.Name == "" || g.MemTotal == 0 || g.MemUsed > g.MemTotal || g.Util < 0 || g.Util > 1 {
		t.Errorf("implausible sample %+v", g)
	}

	h := s.Start(context.Background())
	select {
	case r := <-reports:
		t.Logf("loop: %+v", r)
	case <-time.After(10 * time.Second):
		t.Error("no report from the loop")
	}
	h.Stop()
	<-h.Done()
	if err := s.Close(); err != nil {
		t.Error(err)
	}
	if s.Available() {
		t.Error("available after Close")
	}
}

// fakeClock is a manual clock for exact BusyMeter arithmetic.
type fakeClock struct{ t time.Time }

func (c *fakeClock) now() time.Time      { return c.t }
func (c *fakeClock) add(d time.Duration) { c.t = c.t.Add(d) }
func newFakeBusyMeter() (*BusyMeter, *fakeClock) {
	c := &fakeClock{t: time.Unix(1000, 0)}
	m := &BusyMeter{now: c.now}
	m.Snapshot(true) // start the window at the fake time
	return m, c
}

func TestBusyMeterExact(t *testing.T) {
	m, c := newFakeBusyMeter()
	ms := time.Millisecond

	c.add(10 * ms) // idle before the first run: not a gap
	endA := m.Begin()
	c.add(20 * ms)
	endB := m.Begin() // overlaps A
	c.add(30 * ms)
	endA()
	c.add(10 * ms)
	endB() // busy 10..70
	c.add(20 * ms)
	endC := m.Begin() // gap 20
	c.add(10 * ms)
	endC() // busy 90..100
	c.add(40 * ms)
	end := m.Begin() // gap 40
	c.add(20 * ms)   // still in flight at the snapshot: busy 140..160

	frac, runs, gap := m.Snapshot(true)
	if want := 90.0 / 160; math.Abs(frac-want) > 1e-9 || runs != 3 || gap != 30*ms {
		t.Errorf("Snapshot = %v, %d, %v; want %v, 3, 30ms", frac, runs, gap, want)
	}

	// The run in flight carries into the new window.
	c.add(10 * ms)
	end()
	end() // stray extra end with nothing in flight: ignored
	c.add(30 * ms)
	frac, runs, gap = m.Snapshot(false)
	if math.Abs(frac-0.25) > 1e-9 || runs != 1 || gap != 0 {
		t.Errorf("second window = %v, %d, %v; want 0.25, 1, 0", frac, runs, gap)
	}

	// An empty window.
	_, _, _ = m.Snapshot(true)
	frac, runs, gap = m.Snapshot(true)
	if frac != 0 || runs != 0 || gap != 0 {
		t.Errorf("empty window = %v, %d, %v", frac, runs, gap)
	}
}

// The meters below run on synctest's clock: a sleep is the length of a run or an idle gap,
// exact and instant, and never synchronises anything.

func TestBusyMeterZeroValue(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var m BusyMeter
		end := m.Begin() // the window starts here
		time.Sleep(time.Millisecond)
		end()
		if frac, runs, _ := m.Snapshot(false); runs != 1 || frac != 1 {
			t.Errorf("zero-value meter: %v, %d; want 1, 1", frac, runs)
		}
	})
}

func TestBusyMeterOverlap(t *testing.T) {
	synctest.Test(t, testBusyMeterOverlap)
}

func testBusyMeterOverlap(t *testing.T) {
	m := NewBusyMeter()
	const workers, rounds = 4, 5
	var wg sync.WaitGroup
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range rounds {
				end := m.Begin()
				time.Sleep(10 * time.Millisecond)
				end()
				if w == 0 {
					time.Sleep(time.Millisecond)
				}
			}
		}()
	}
	wg.Wait()
	// Workers 1-3 run back to back until 50ms; worker 0 starts a run every 11ms, the last at
	// 44ms, ends it at 54ms and idles until 55ms: busy 54 of 55ms, no gap longer than 0.
	frac, runs, gap := m.Snapshot(true)
	t.Logf("busy %.3f, runs %d, mean gap %v", frac, runs, gap)
	if runs != workers*rounds || math.Abs(frac-54.0/55) > 1e-9 || gap != 0 {
		t.Errorf("overlapping runs: busy %v, runs %d, mean gap %v; want %v, %d, 0", frac, runs, gap, 54.0/55, workers*rounds)
	}

	// Idle time between the runs: busy 3×5 of 75ms. Gaps: 1ms (from the last run above, ended
	// before this window), then two of 20ms.
	for range 3 {
		end := m.Begin()
		time.Sleep(5 * time.Millisecond)
		end()
		time.Sleep(20 * time.Millisecond)
	}
	frac, runs, gap = m.Snapshot(false)
	t.Logf("busy %.3f, runs %d, mean gap %v", frac, runs, gap)
	if want := 41 * time.Millisecond / 3; runs != 3 || math.Abs(frac-0.2) > 1e-9 || gap != want {
		t.Errorf("with idle time: busy %v, runs %d, mean gap %v; want 0.2, 3, %v", frac, runs, gap, want)
	}
}

func TestBusyMeterNoAlloc(t *testing.T) {
	m := NewBusyMeter()
	if n := testing.AllocsPerRun(1000, func() { m.Begin()() }); n != 0 {
		t.Errorf("Begin+end allocate %v times per run", n)
	}
}

func BenchmarkBusyMeter(b *testing.B) {
	m := NewBusyMeter()
	b.ReportAllocs()
	for b.Loop() {
		end := m.Begin()
		end()
	}
}

func BenchmarkBusyMeterParallel(b *testing.B) {
	m := NewBusyMeter()
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			end := m.Begin()
			end()
		}
	})
}
