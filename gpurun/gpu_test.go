package gpurun_test

import (
	"context"
	"os"
	"slices"
	"sync"
	"testing"

	"github.com/seqembed/seqembed/gpurun"
)

// GPU tests run where SEQEMBED_GPU_TESTS=1 (the GPU machine); CI has no GPU and skips them.
// SEQEMBED_GPU_MODEL may name a second model directory with a golden.json of float32 PyTorch
// embeddings (e.g. the 650M fp16 export), held to cosine >= 0.9999 per sequence.
func requireGPU(t *testing.T) {
	t.Helper()
	if os.Getenv("SEQEMBED_GPU_TESTS") == "" {
		t.Skip("GPU tests: set SEQEMBED_GPU_TESTS=1 on a machine with a CUDA GPU")
	}
	requireORT(t)
}

func TestGPUGoldenParity(t *testing.T) {
	requireGPU(t)
	alloc, err := gpurun.NewHostAllocator(16384, true)
	if err != nil {
		t.Fatal(err)
	}
	defer alloc.Close()
	if !alloc.Pinned() {
		t.Fatal("allocator is not pinned")
	}
	dirs := []string{tinyModel}
	if d := os.Getenv("SEQEMBED_GPU_MODEL"); d != "" {
		dirs = append(dirs, d)
	}
	for _, dir := range dirs {
		r := newRunnerDir(t, dir, gpurun.WithDevice(gpurun.Device{Kind: "cuda"}))
		g := loadGolden(t, dir)
		// Several batch sizes: padded rows must not change any sequence's embedding, and
		// packed-attention graphs see different token layouts for the same sequence.
		for _, batch := range []int{1, 3, 8} {
			abs, cos := compareGolden(t, g, embedGolden(t, r, g, alloc, batch), 0, 0.9999)
			t.Logf("%s (%s, attention %s) on cuda:0, batches of %d, vs PyTorch float32: worst max-abs %.3g, worst cosine %.7f",
				r.Manifest().Name, r.Manifest().DType, r.Manifest().Attention, batch, abs, cos)
		}
	}
}

// TestGPUConcurrentRuns: three goroutines Embed at once on one session; results equal sequential ones.
func TestGPUConcurrentRuns(t *testing.T) {
	requireGPU(t)
	r := newRunner(t, gpurun.WithDevice(gpurun.Device{Kind: "cuda"}))
	alloc, err := gpurun.NewHostAllocator(8*512, true)
	if err != nil {
		t.Fatal(err)
	}
	defer alloc.Close()
	inputs := make([]gpurun.Input, 6)
	for k := range inputs {
		ids, mask := alloc.Alloc(8 * 512)
		for i := range ids {
			ids[i], mask[i] = int64(4+(i*7+k)%20), 1
		}
		inputs[k] = gpurun.Input{IDs: ids, Mask: mask, Rows: 8, Cols: 512}
	}
	want := make([][]float32, len(inputs))
	for k, in := range inputs {
		if want[k], err = r.Embed(context.Background(), in, nil); err != nil {
			t.Fatal(err)
		}
	}
	var wg sync.WaitGroup
	got := make([][]float32, len(inputs))
	for k, in := range inputs {
		wg.Go(func() {
			var err error
			if got[k], err = r.Embed(context.Background(), in, nil); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	for k := range inputs {
		if !slices.Equal(got[k], want[k]) {
			t.Errorf("input %d: concurrent result differs from sequential", k)
		}
	}
}
