package gpurun_test

import (
	"context"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/seqembed/seqembed/gpurun"
)

// GPU tests run where SEQEMBED_GPU_TESTS=1 (the GPU machine); CI has no GPU and skips them.
// SEQEMBED_GPU_MODEL may name more model directories (a list, like PATH), each with a golden.json
// of float32 PyTorch embeddings (e.g. the 650M fp16 export), held to cosine >= 0.9999 per sequence.
func requireGPU(t *testing.T) {
	t.Helper()
	gpurun.SkipWithoutGPU(t)
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

// graphModel is SEQEMBED_GPU_GRAPH_MODEL (an "mha" export), or the test is skipped.
func graphModel(t *testing.T) string {
	t.Helper()
	requireGPU(t)
	dir := os.Getenv("SEQEMBED_GPU_GRAPH_MODEL")
	if dir == "" {
		t.Skip("set SEQEMBED_GPU_GRAPH_MODEL to an mha export")
	}
	return dir
}

// proteinBatch fills rows×cols pinned buffers with <cls> residues <eos> <pad>... rows whose
// lengths (2..cols tokens) follow seed, as the batcher's buckets hold.
func proteinBatch(t testing.TB, alloc *gpurun.HostAllocator, rows, cols, seed int) gpurun.Input {
	ids, mask := mustAlloc(t, alloc, rows*cols)
	for r := range rows {
		n := 2 + (seed*31+r*17)%(cols-1)
		if r == 0 {
			n = cols // one full row per batch
		}
		for j := range cols {
			i := r*cols + j
			switch {
			case j == 0:
				ids[i], mask[i] = 0, 1
			case j == n-1:
				ids[i], mask[i] = 2, 1
			case j < n:
				ids[i], mask[i] = int64(4+(seed*7+i*13)%20), 1
			default:
				ids[i], mask[i] = 1, 0
			}
		}
	}
	return gpurun.Input{IDs: ids, Mask: mask, Rows: rows, Cols: cols}
}

// TestGPUCUDAGraphCopyOverlap (SEQEMBED_GPU_GRAPH_MODEL): with copy overlap, on two sessions and on
// one (whose two buffer sets then pipeline), many goroutines at once give exactly (max-abs 0) the
// synchronous path's embeddings for every batch: full and padded replays of several shapes, a
// shape without a graph (a plain run), Go-memory input; batches whose context ends on the way
// fail without disturbing the others; and the stats count every batch.
func TestGPUCUDAGraphCopyOverlap(t *testing.T) {
	dir := graphModel(t)
	alloc, err := gpurun.NewHostAllocator(16384, true)
	if err != nil {
		t.Fatal(err)
	}
	defer alloc.Close()
	cuda := gpurun.WithDevice(gpurun.Device{Kind: "cuda"})
	shapes := [][2]int{{32, 256}, {64, 128}, {16, 512}}
	var inputs []gpurun.Input
	for k, rows := range []int{32, 5, 1, 7, 64, 16, 3, 8} { // full and padded, on every shape
		s := shapes[k%len(shapes)]
		inputs = append(inputs, proteinBatch(t, alloc, min(rows, s[0]), s[1], k))
	}
	inputs = append(inputs, proteinBatch(t, alloc, 8, 320, 99)) // no graph of 320: a plain run
	goMem := proteinBatch(t, alloc, 7, 256, 7)
	goMem.IDs, goMem.Mask = slices.Clone(goMem.IDs), slices.Clone(goMem.Mask)
	inputs = append(inputs, goMem)

	syncR := newRunnerDir(t, dir, cuda, gpurun.WithCUDAGraphs(gpurun.GraphsOn), gpurun.WithGraphCopyOverlap(false))
	if _, err := syncR.Warmup(context.Background(), shapes, alloc); err != nil {
		t.Fatal(err)
	}
	want := make([][]float32, len(inputs))
	for k, in := range inputs {
		if want[k], err = syncR.Embed(context.Background(), in, nil); err != nil {
			t.Fatal(err)
		}
	}
	for _, sessions := range []int{2, 1} {
		t.Run(fmt.Sprintf("%d sessions", sessions), func(t *testing.T) {
			r := newRunnerDir(t, dir, cuda, gpurun.WithCUDAGraphs(gpurun.GraphsOn), gpurun.WithGraphSessions(sessions))
			took, err := r.Warmup(context.Background(), shapes, alloc)
			if err != nil {
				t.Fatal(err)
			}
			t.Logf("captured %d shapes × 2 buffer sets on %d sessions in %v", len(shapes), sessions, took)
			const workers, rounds = 6, 8
			var wg sync.WaitGroup
			var mismatches, cancelled atomic.Int64
			for w := range workers {
				wg.Go(func() {
					var out []float32
					for i := range rounds * len(inputs) {
						k := (w*5 + i) % len(inputs)
						ctx := context.Background()
						var cancel context.CancelFunc = func() {}
						if (w+i)%11 == 10 { // now and then a context that ends on the way
							ctx, cancel = context.WithTimeout(ctx, time.Duration(50+i*37%400)*time.Microsecond)
						}
						got, err := r.Embed(ctx, inputs[k], out[:0])
						cancel()
						switch {
						case err != nil && ctx.Err() != nil:
							cancelled.Add(1)
						case err != nil:
							t.Error(err)
							return
						case !slices.Equal(got, want[k]):
							mismatches.Add(1)
							t.Errorf("input %d (%d×%d): max-abs %g against the synchronous path", k, inputs[k].Rows, inputs[k].Cols, maxAbs(got, want[k]))
						}
						out = got
					}
				})
			}
			wg.Wait()
			st := r.GraphStats()
			t.Logf("%d batches (%d replayed), %d ended by their context, %d mismatches; stats %+v",
				workers*rounds*len(inputs), st.Replayed, cancelled.Load(), mismatches.Load(), st)
			if st.Batches+cancelled.Load() < workers*rounds*int64(len(inputs)) || st.Replayed == 0 {
				t.Errorf("stats count %d batches (%d replayed) of %d", st.Batches, st.Replayed, workers*rounds*len(inputs))
			}
		})
	}
	off := newRunnerDir(t, dir, cuda, gpurun.WithCUDAGraphs(gpurun.GraphsOff))
	worst := 0.0
	for k, in := range inputs {
		got, err := off.Embed(context.Background(), in, nil)
		if err != nil {
			t.Fatal(err)
		}
		worst = max(worst, maxAbs(got, want[k]))
	}
	t.Logf("synchronous replays vs graphs off: worst max-abs %.3g", worst)
	if worst > 1e-2 {
		t.Errorf("replays differ from plain runs by %g", worst)
	}
}

func maxAbs(a, b []float32) float64 {
	if len(a) != len(b) {
		return math.Inf(1)
	}
	worst := 0.0
	for i := range a {
		worst = max(worst, math.Abs(float64(a[i]-b[i])))
	}
	return worst
}

// TestGPUGraphTimeline (SEQEMBED_GPU_GRAPH_MODEL; SEQEMBED_GPU_TIMELINE_BATCHES batches, default
// 600): the raw benchmark's pattern on 8M-like buckets of 16,384 tokens, replayed by `inflight`
// goroutines, for copy overlap off and on and for one and two sessions; it logs, per setting,
// tokens/s, the mean per-batch timeline (queue, run, finish, the session's gap between runs,
// the copies' device times) and the share of the wall time some replay was running (the union
// of the runs: NVML's sampling not involved), then the first batches' timelines.
func TestGPUGraphTimeline(t *testing.T) {
	dir := graphModel(t)
	n := 600
	if s := os.Getenv("SEQEMBED_GPU_TIMELINE_BATCHES"); s != "" {
		if _, err := fmt.Sscan(s, &n); err != nil || n <= 0 {
			t.Fatalf("SEQEMBED_GPU_TIMELINE_BATCHES=%q", s)
		}
	}
	alloc, err := gpurun.NewHostAllocator(16384, true)
	if err != nil {
		t.Fatal(err)
	}
	defer alloc.Close()
	shapes := [][2]int{{256, 64}, {128, 128}, {64, 256}, {32, 512}, {16, 1024}}
	batches := make([]gpurun.Input, len(shapes)*4)
	for k := range batches {
		s := shapes[k%len(shapes)]
		batches[k] = proteinBatch(t, alloc, s[0], s[1], k)
	}
	for _, c := range []struct {
		overlap            bool
		sessions, inflight int
	}{
		{false, 2, 2}, // before: the synchronous path, as the worker runs it with --inflight 2
		{true, 2, 2},
		{true, 1, 2},
		{true, 2, 4},
	} {
		var mu sync.Mutex
		var line []gpurun.GraphBatch
		r, err := gpurun.New(dir, gpurun.WithDevice(gpurun.Device{Kind: "cuda"}), gpurun.WithCUDAGraphs(gpurun.GraphsOn),
			gpurun.WithMaxRows(256), gpurun.WithGraphCopyOverlap(c.overlap), gpurun.WithGraphSessions(c.sessions),
			gpurun.WithConcurrentRuns(c.inflight), gpurun.WithGraphTimeline(func(b gpurun.GraphBatch) {
				mu.Lock()
				line = append(line, b)
				mu.Unlock()
			}))
		if err != nil {
			t.Fatal(err)
		}
		took, err := r.Warmup(context.Background(), shapes, alloc)
		if err != nil {
			r.Close()
			t.Fatal(err)
		}
		for _, in := range batches { // one untimed pass
			if _, err := r.Embed(context.Background(), in, nil); err != nil {
				r.Close()
				t.Fatal(err)
			}
		}
		mu.Lock()
		line = line[:0]
		mu.Unlock()
		before := r.GraphStats()
		next := make(chan int, n)
		for i := range n {
			next <- i
		}
		close(next)
		var tokens atomic.Int64
		var wg sync.WaitGroup
		start := time.Now()
		for range c.inflight {
			wg.Go(func() {
				var out []float32
				for i := range next {
					in := batches[i%len(batches)]
					var err error
					if out, err = r.Embed(context.Background(), in, out[:0]); err != nil {
						t.Error(err)
						return
					}
					var real int64
					for _, m := range in.Mask[:in.Rows*in.Cols] {
						real += m
					}
					tokens.Add(real)
				}
			})
		}
		wg.Wait()
		wall := time.Since(start)
		r.Close()
		st := r.GraphStats()
		k := st.Batches - before.Batches
		per := func(a, b time.Duration) string { return fmt.Sprintf("%.1fµs", float64(a-b)/float64(k)/1e3) }
		t.Logf("overlap=%v sessions=%d inflight=%d (warm-up %v): %d batches in %v, %.0f tokens/s; per batch: queue %s, run %s, finish %s, gap %s, copy in %s, copy out %s (device); runs busy %.1f%% of the wall time",
			c.overlap, c.sessions, c.inflight, took.Round(time.Millisecond), k, wall.Round(time.Millisecond), float64(tokens.Load())/wall.Seconds(),
			per(st.Queue, before.Queue), per(st.Run, before.Run), per(st.Finish, before.Finish), per(st.Gap, before.Gap),
			per(st.CopyIn, before.CopyIn), per(st.CopyOut, before.CopyOut), 100*gpurun.GraphRunBusy(line).Seconds()/wall.Seconds())
		slices.SortFunc(line, func(a, b gpurun.GraphBatch) int { return a.Queued.Compare(b.Queued) })
		t0 := start
		ms := func(x time.Time) float64 { return float64(x.Sub(t0)) / 1e6 }
		for _, b := range line[:min(12, len(line))] {
			t.Logf("  s%d/%d %4d×%-4d queued %8.3f  run %8.3f–%8.3f  done %8.3f ms  gap %6.1fµs  copy in %5.1fµs out %5.1fµs",
				b.Session, b.Set, b.Rows, b.Cols, ms(b.Queued), ms(b.RunStart), ms(b.RunEnd), ms(b.Done),
				float64(b.Gap)/1e3, float64(b.CopyIn)/1e3, float64(b.CopyOut)/1e3)
		}
	}
}
