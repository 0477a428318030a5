package benchrun

import (
	"context"
	"sync"
	"time"

	"github.com/seqembed/seqembed/gpurun"
)

// GPUMeter samples NVML utilisation of a run's devices every 200 ms (nothing on the CPU or
// without NVML). It is safe for concurrent use; a nil *GPUMeter is a meter without samples.
type GPUMeter struct {
	mu      sync.Mutex
	samples []gpurun.GPUSample
	indices []int // NVML indices sampled, in --device order
	stop    func()
	once    sync.Once
}

// StartGPUMeter starts sampling the CUDA devices of device (a --device value); on the CPU, or
// where NVML is unavailable, the meter keeps no samples. Close stops it.
func StartGPUMeter(device string) *GPUMeter {
	g := &GPUMeter{stop: func() {}}
	devs, err := gpurun.ParseDevices(device)
	if err != nil || len(devs) == 0 || devs[0].Kind != "cuda" {
		return g
	}
	for _, d := range devs {
		g.indices = append(g.indices, d.Index)
	}
	s, err := gpurun.NewNVMLSampler(g.indices, gpurun.WithInterval(200*time.Millisecond),
		gpurun.WithReport(func(x gpurun.GPUSample, _ gpurun.Tier) {
			g.mu.Lock()
			g.samples = append(g.samples, x)
			g.mu.Unlock()
		}))
	if err != nil {
		return g
	}
	if !s.Available() {
		s.Close()
		return g
	}
	h := s.Start(context.Background())
	g.stop = func() { h.Stop(); <-h.Done(); s.Close() }
	return g
}

// Close stops sampling; the samples stay readable. It is idempotent.
func (g *GPUMeter) Close() {
	if g != nil {
		g.once.Do(func() { g.stop() })
	}
}

// Mean is the mean NVML utilisation of the samples taken in [from, to] on every device, or -1
// if there are none.
func (g *GPUMeter) Mean(from, to time.Time) float64 { return g.meanOf(from, to, -1) }

// meanOf is Mean for NVML device index (all devices when index < 0).
func (g *GPUMeter) meanOf(from, to time.Time, index int) float64 {
	if g == nil {
		return -1
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	sum, n := 0.0, 0
	for _, s := range g.samples {
		if !s.Time.Before(from) && !s.Time.After(to) && (index < 0 || s.Index == index) {
			sum += s.Util
			n++
		}
	}
	if n == 0 {
		return -1
	}
	return sum / float64(n)
}

// PerDevice is Mean for each sampled device, in --device order; nil for fewer than two devices.
func (g *GPUMeter) PerDevice(from, to time.Time) []float64 {
	if g == nil || len(g.indices) < 2 {
		return nil
	}
	out := make([]float64, len(g.indices))
	for i, idx := range g.indices {
		out[i] = g.meanOf(from, to, idx)
	}
	return out
}

// SamplesIn is the samples taken in [from, to].
func (g *GPUMeter) SamplesIn(from, to time.Time) []gpurun.GPUSample {
	if g == nil {
		return nil
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	var out []gpurun.GPUSample
	for _, s := range g.samples {
		if !s.Time.Before(from) && !s.Time.After(to) {
			out = append(out, s)
		}
	}
	return out
}
