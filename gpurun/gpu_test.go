package gpurun_test

import (
	"context"
	"math"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/seqembed/seqembed/gpurun"
)

// GPU tests run where SEQEMBED_GPU_TESTS=1 (the GPU machine); CI has no GPU and skips them.
// SEQEMBED_GPU_MODEL may name more model directories (a list, like PATH), each with a golden.json
// of float32 PyTorch embeddings (e.g. the 650M fp16 export), held to cosine >= 0.9999 per sequence.
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
		dirs = append(dirs, filepath.SplitList(d)...)
	}
	for _, dir := range dirs {
		r := newRunnerDir(t, dir, gpurun.WithDevice(gpurun.Device{Kind: "cuda"}))
		g := loadGolden(t, dir)
		// Several batch sizes: padded rows must not change any sequence's embedding, and
		// packed-attention graphs see different token layouts for the same sequence.
		check := func(how string) {
			for _, batch := range []int{1, 3, 8} {
				abs, cos := compareGolden(t, g, embedGolden(t, r, g, alloc, batch), 0, 0.9999)
				t.Logf("%s (%s, attention %s%s) on cuda:0, batches of %d, vs PyTorch float32: worst max-abs %.3g, worst cosine %.7f",
					r.Manifest().Name, r.Manifest().DType, r.Manifest().Attention, how, batch, abs, cos)
			}
		}
		check("")
		if r.CUDAGraphs() {
			// Before Warmup every batch ran without a graph; now every golden shape replays a
			// captured 8-row graph, batches of 1 and 3 filled up with padding rows.
			var shapes [][2]int
			for cols := 64; cols <= 1024; cols += 64 {
				shapes = append(shapes, [2]int{8, cols})
			}
			d, err := r.Warmup(context.Background(), shapes, alloc)
			if err != nil {
				t.Fatal(err)
			}
			t.Logf("captured %d shapes in %v", len(shapes), d)
			check(", CUDA graphs replayed")
		}
	}
}

// TestGPUCUDAGraphReplay (SEQEMBED_GPU_GRAPH_MODEL: an "mha" export): the same batches with CUDA
// graphs off and replayed agree, and the log shows the time per batch of each.
func TestGPUCUDAGraphReplay(t *testing.T) {
	requireGPU(t)
	dir := os.Getenv("SEQEMBED_GPU_GRAPH_MODEL")
	if dir == "" {
		t.Skip("set SEQEMBED_GPU_GRAPH_MODEL to an mha export")
	}
	alloc, err := gpurun.NewHostAllocator(16384, true)
	if err != nil {
		t.Fatal(err)
	}
	defer alloc.Close()
	cuda := gpurun.WithDevice(gpurun.Device{Kind: "cuda"})
	off := newRunnerDir(t, dir, cuda, gpurun.WithCUDAGraphs(gpurun.GraphsOff))
	on := newRunnerDir(t, dir, cuda, gpurun.WithCUDAGraphs(gpurun.GraphsOn))
	const rows, cols = 32, 256
	ids, mask := mustAlloc(t, alloc, rows*cols)
	defer alloc.Free(ids, mask)
	for i := range ids {
		n := 40 + (i/cols)*7 // row lengths 40..257, some rows full
		ids[i], mask[i] = int64(4+(i*13)%20), 1
		if i%cols >= n {
			ids[i], mask[i] = 1, 0
		}
	}
	for _, r := range []*gpurun.Runner{off, on} {
		if _, err := r.Warmup(context.Background(), [][2]int{{rows, cols}}, alloc); err != nil {
			t.Fatal(err)
		}
	}
	for _, n := range []int{rows, 5} { // full, then padded with 27 rows
		in := gpurun.Input{IDs: ids, Mask: mask, Rows: n, Cols: cols}
		var got [2][]float32
		var took [2]time.Duration
		for k, r := range []*gpurun.Runner{off, on} {
			start := time.Now()
			for range 20 {
				if got[k], err = r.Embed(context.Background(), in, got[k][:0]); err != nil {
					t.Fatal(err)
				}
			}
			took[k] = time.Since(start) / 20
		}
		worst := 0.0
		for i := range got[0] {
			worst = max(worst, math.Abs(float64(got[0][i]-got[1][i])))
		}
		t.Logf("%s %d×%d: graphs off %v per batch, replayed %v; max-abs difference %.3g", off.Manifest().Name, n, cols, took[0], took[1], worst)
		if worst > 1e-2 {
			t.Errorf("%d rows: replayed graph differs from the plain run by %g", n, worst)
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
		ids, mask := mustAlloc(t, alloc, 8*512)
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
