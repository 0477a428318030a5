package gpurun_test

import (
	"context"
	"encoding/json"
	"errors"
	"math"
	"os"
	"slices"
	"strings"
	"testing"

	"github.com/seqembed/seqembed/batcher"
	"github.com/seqembed/seqembed/gpurun"
)

const tinyModel = "../testdata/esm2-tiny"

// The worker hands its HostAllocator to the batcher.
var _ batcher.Allocator = (*gpurun.HostAllocator)(nil)

type golden struct {
	Records []struct {
		ID        string    `json:"id"`
		Sequence  string    `json:"sequence"`
		TokenIDs  []int64   `json:"token_ids"`
		Embedding []float32 `json:"embedding"`
	} `json:"records"`
}

func loadGolden(t testing.TB, dir string) golden {
	data, err := os.ReadFile(dir + "/golden.json")
	if err != nil {
		t.Fatal(err)
	}
	var g golden
	if err := json.Unmarshal(data, &g); err != nil {
		t.Fatal(err)
	}
	return g
}

// requireORT skips where the ORT library is absent, except in CI (make test fetches it).
func requireORT(t testing.TB) {
	t.Helper()
	if _, err := os.Stat(gpurun.LibraryPath()); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("ONNX Runtime library missing in CI: %v", err)
		}
		t.Skipf("ONNX Runtime library not found (%v): run scripts/fetch-ort.sh", err)
	}
}

func newRunner(t testing.TB, opts ...gpurun.Option) *gpurun.Runner {
	t.Helper()
	return newRunnerDir(t, tinyModel, opts...)
}

func newRunnerDir(t testing.TB, dir string, opts ...gpurun.Option) *gpurun.Runner {
	t.Helper()
	requireORT(t)
	r, err := gpurun.New(dir, append([]gpurun.Option{gpurun.WithThreads(2)}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	return r
}

// embedGolden runs the golden sequences as padded batches of 4 (each padded to its longest
// record's 64-multiple), checking the tokeniser against HF's ids on the way, and returns one
// embedding per record.
func embedGolden(t testing.TB, r *gpurun.Runner, g golden, alloc *gpurun.HostAllocator, batch int) [][]float32 {
	t.Helper()
	tok, err := batcher.NewTokenizer("")
	if err != nil {
		t.Fatal(err)
	}
	var embs [][]float32
	for lo := 0; lo < len(g.Records); lo += batch {
		recs := g.Records[lo:min(lo+batch, len(g.Records))]
		cols := 0
		for _, rec := range recs {
			cols = max(cols, (len(rec.Sequence)+2+63)/64*64)
		}
		ids, mask := mustAlloc(t, alloc, len(recs)*cols)
		for i, rec := range recs {
			row := ids[i*cols : (i+1)*cols]
			tok.Encode(row, []byte(rec.Sequence))
			n := len(rec.Sequence) + 2
			for j := range row {
				if j >= n {
					row[j] = batcher.PadID
				}
				mask[i*cols+j] = int64(min(1, max(0, n-j)))
			}
			for j, want := range rec.TokenIDs {
				if row[j] != want {
					t.Fatalf("%s: token %d = %d, HF EsmTokenizer says %d", rec.ID, j, row[j], want)
				}
			}
		}
		out, err := r.Embed(context.Background(), gpurun.Input{IDs: ids, Mask: mask, Rows: len(recs), Cols: cols}, nil)
		alloc.Free(ids, mask)
		if err != nil {
			t.Fatal(err)
		}
		for i := range recs {
			embs = append(embs, out[i*r.Dim():(i+1)*r.Dim()])
		}
	}
	return embs
}

// compareGolden checks each embedding against PyTorch's: max-abs (when maxAbs > 0) and cosine.
func compareGolden(t testing.TB, g golden, embs [][]float32, maxAbs, minCos float64) (worstAbs, worstCos float64) {
	t.Helper()
	worstCos = 1
	for i, rec := range g.Records {
		var dot, na, nb, abs float64
		for j, want := range rec.Embedding {
			got := float64(embs[i][j])
			dot, na, nb = dot+got*float64(want), na+got*got, nb+float64(want)*float64(want)
			abs = math.Max(abs, math.Abs(got-float64(want)))
		}
		cos := dot / math.Sqrt(na*nb)
		worstAbs, worstCos = math.Max(worstAbs, abs), math.Min(worstCos, cos)
		if (maxAbs > 0 && abs > maxAbs) || cos < minCos {
			t.Errorf("%s (%d residues): max abs %.3g, cosine %.7f (limits %.g, %.5f)", rec.ID, len(rec.Sequence), abs, cos, maxAbs, minCos)
		}
	}
	return worstAbs, worstCos
}

// TestGoldenParity: padded CPU batches match PyTorch's unpadded embeddings within 1e-4 max-abs.
func TestGoldenParity(t *testing.T) {
	g := loadGolden(t, tinyModel)
	r := newRunner(t)
	alloc, err := gpurun.NewHostAllocator(16384, false)
	if err != nil {
		t.Fatal(err)
	}
	defer alloc.Close()
	compareGolden(t, g, embedGolden(t, r, g, alloc, 4), 1e-4, 0.99999)
}

func TestEmbedShapeErrors(t *testing.T) {
	r := newRunner(t)
	_, err := r.Embed(context.Background(), gpurun.Input{IDs: make([]int64, 3), Mask: make([]int64, 3), Rows: 2, Cols: 2}, nil)
	if !errors.Is(err, gpurun.ErrShape) {
		t.Fatalf("err = %v, want ErrShape", err)
	}
}

func TestManifestErrors(t *testing.T) {
	dir := t.TempDir()
	if _, err := gpurun.LoadManifest(dir); !errors.Is(err, gpurun.ErrManifest) {
		t.Fatalf("missing manifest: err = %v", err)
	}
	os.WriteFile(dir+"/model.json", []byte(`{"name":"x","embedding_dim":8,"max_length":10,"alphabet":"esm","inputs":["a","b"],"output":"o","pooling":"cls"}`), 0o644)
	if _, err := gpurun.LoadManifest(dir); !errors.Is(err, gpurun.ErrManifest) {
		t.Fatalf("cls pooling: err = %v", err)
	}
	os.WriteFile(dir+"/model.json", []byte(`{"name":"x","embedding_dim":8,"max_length":10,"alphabet":"esm","inputs":["a","b"],"output":"o","pooling":"mean","sha256":"00"}`), 0o644)
	os.WriteFile(dir+"/model.onnx", []byte("not a model"), 0o644)
	m, err := gpurun.LoadManifest(dir)
	if err != nil {
		t.Fatal(err)
	}
	if err := m.VerifySHA256(); !errors.Is(err, gpurun.ErrManifest) {
		t.Fatalf("hash mismatch: err = %v", err)
	}
}

func TestBrokenModelFailsAtStart(t *testing.T) {
	requireORT(t)
	dir := t.TempDir()
	os.WriteFile(dir+"/model.json", []byte(`{"name":"x","embedding_dim":8,"max_length":10,"alphabet":"esm","inputs":["input_ids","attention_mask"],"output":"embedding","pooling":"mean"}`), 0o644)
	os.WriteFile(dir+"/model.onnx", []byte("not a model"), 0o644)
	if _, err := gpurun.New(dir); !errors.Is(err, gpurun.ErrSession) {
		t.Fatalf("err = %v, want ErrSession", err)
	}
}

// TestCUDAOnlyModelOnCPU: a manifest that requires CUDA (packed attention) is refused on the CPU
// with ErrDevice naming the way out, before ORT tries to load ops it has no CPU kernels for;
// an unknown requirement is a manifest error.
func TestCUDAOnlyModelOnCPU(t *testing.T) {
	dir := t.TempDir()
	const base = `"name":"esm2-packed","embedding_dim":8,"max_length":10,"alphabet":"esm","inputs":["input_ids","attention_mask"],"output":"embedding","pooling":"mean"`
	os.WriteFile(dir+"/model.json", []byte(`{`+base+`,"attention":"packed","requires":["cuda"]}`), 0o644)
	os.WriteFile(dir+"/model.onnx", []byte("not loaded"), 0o644)
	_, err := gpurun.New(dir)
	if !errors.Is(err, gpurun.ErrDevice) || !strings.Contains(err.Error(), "--device cuda:N") {
		t.Fatalf("err = %v, want ErrDevice naming --device cuda:N", err)
	}
	os.WriteFile(dir+"/model.json", []byte(`{`+base+`,"requires":["tpu"]}`), 0o644)
	if _, err := gpurun.LoadManifest(dir); !errors.Is(err, gpurun.ErrManifest) {
		t.Fatalf("unknown requirement: err = %v, want ErrManifest", err)
	}
}

func TestParseDevice(t *testing.T) {
	for in, want := range map[string]string{"cpu": "cpu", "cuda": "cuda:0", "cuda:3": "cuda:3"} {
		d, err := gpurun.ParseDevice(in)
		if err != nil || d.String() != want {
			t.Errorf("ParseDevice(%q) = %v, %v", in, d, err)
		}
	}
	for _, in := range []string{"gpu", "cuda:-1", "cuda:x", ""} {
		if _, err := gpurun.ParseDevice(in); !errors.Is(err, gpurun.ErrOption) {
			t.Errorf("ParseDevice(%q) err = %v", in, err)
		}
	}
}

// mustAlloc is a.Alloc(n), failing the test on an error.
func mustAlloc(t testing.TB, a *gpurun.HostAllocator, n int) (ids, mask []int64) {
	t.Helper()
	ids, mask, err := a.Alloc(n)
	if err != nil {
		t.Fatalf("Alloc(%d): %v", n, err)
	}
	return ids, mask
}

func TestHostAllocatorReuse(t *testing.T) {
	a, err := gpurun.NewHostAllocator(128, false)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	ids, mask := mustAlloc(t, a, 100)
	if len(ids) != 100 || len(mask) != 100 {
		t.Fatalf("lens %d %d", len(ids), len(mask))
	}
	ids[99], mask[99] = 7, 1
	p := &ids[0]
	a.Free(ids, mask)
	ids2, mask2 := mustAlloc(t, a, 64)
	if &ids2[0] != p {
		t.Error("pooled buffer was not reused")
	}
	big, bigMask := mustAlloc(t, a, 1000) // one-off, larger than the pool's capacity
	big[999], bigMask[999] = 1, 1
	a.Free(big, bigMask)
	a.Free(ids2, mask2)
}

// TestHostAllocatorFailure: a request the host cannot meet is an error wrapping ErrAlloc, not a
// crash, and the allocator goes on serving (and pooling) what it can.
func TestHostAllocatorFailure(t *testing.T) {
	a, err := gpurun.NewHostAllocator(128, false)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	for _, n := range []int{1 << 58, math.MaxInt / 4, -1} { // 2 EiB per buffer, an overflowing size, a negative one
		if ids, mask, err := a.Alloc(n); !errors.Is(err, gpurun.ErrAlloc) || ids != nil || mask != nil {
			t.Errorf("Alloc(%d) = %d, %d elements, %v; want nothing and ErrAlloc", n, len(ids), len(mask), err)
		}
	}
	ids, mask := mustAlloc(t, a, 128)
	a.Free(ids, mask)
	if again, againMask := mustAlloc(t, a, 1); &again[0] != &ids[0] {
		t.Error("the pool does not reuse buffers after a failed allocation")
	} else {
		a.Free(again, againMask)
	}
}

// TestWarmupAndCancel: Warmup runs plain CPU shapes from the allocator (refusing a bad shape and a
// missing allocator); Embed and Warmup with an ended context run nothing and say why.
func TestWarmupAndCancel(t *testing.T) {
	r := newRunner(t)
	alloc, err := gpurun.NewHostAllocator(4*64, false)
	if err != nil {
		t.Fatal(err)
	}
	defer alloc.Close()
	if _, err := r.Warmup(context.Background(), [][2]int{{4, 64}, {1, 128}}, alloc); err != nil {
		t.Fatal(err)
	}
	if _, err := r.Warmup(context.Background(), [][2]int{{0, 64}}, alloc); !errors.Is(err, gpurun.ErrShape) {
		t.Errorf("Warmup of 0×64: err = %v, want ErrShape", err)
	}
	if _, err := r.Warmup(context.Background(), [][2]int{{1, 64}}, nil); !errors.Is(err, gpurun.ErrOption) {
		t.Errorf("Warmup without an allocator: err = %v, want ErrOption", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := r.Warmup(ctx, [][2]int{{1, 64}}, alloc); !errors.Is(err, context.Canceled) {
		t.Errorf("Warmup with a cancelled context: err = %v, want context.Canceled", err)
	}
	ids, mask := mustAlloc(t, alloc, 64)
	defer alloc.Free(ids, mask)
	dst := []float32{42}
	got, err := r.Embed(ctx, gpurun.Input{IDs: ids, Mask: mask, Rows: 1, Cols: 64}, dst)
	if !errors.Is(err, gpurun.ErrRun) || !errors.Is(err, context.Canceled) || len(got) != 1 {
		t.Errorf("Embed with a cancelled context: %d values, err = %v; want dst unchanged, ErrRun and context.Canceled", len(got), err)
	}
}

// TestEmbedGoMemory: Go slices work as input (pinned for the run) and give what C memory gives.
func TestEmbedGoMemory(t *testing.T) {
	r := newRunner(t)
	alloc, err := gpurun.NewHostAllocator(2*64, false)
	if err != nil {
		t.Fatal(err)
	}
	defer alloc.Close()
	ids, mask := mustAlloc(t, alloc, 2*64)
	defer alloc.Free(ids, mask)
	for i := range ids {
		ids[i], mask[i] = int64(4+i%20), 1
	}
	in := gpurun.Input{IDs: ids, Mask: mask, Rows: 2, Cols: 64}
	want, err := r.Embed(context.Background(), in, nil)
	if err != nil {
		t.Fatal(err)
	}
	in.IDs, in.Mask = slices.Clone(ids), slices.Clone(mask)
	got, err := r.Embed(context.Background(), in, nil)
	if err != nil || !slices.Equal(got, want) {
		t.Fatalf("Go-memory input: %v, equal to C-memory result: %v", err, slices.Equal(got, want))
	}
}

func BenchmarkEmbedTiny(b *testing.B) {
	r := newRunner(b)
	alloc, _ := gpurun.NewHostAllocator(16*256, false)
	defer alloc.Close()
	ids, mask := mustAlloc(b, alloc, 16*256)
	for i := range ids {
		ids[i], mask[i] = int64(4+i%20), 1
	}
	b.ReportAllocs()
	b.SetBytes(16 * 256)
	var out []float32
	for b.Loop() {
		var err error
		if out, err = r.Embed(context.Background(), gpurun.Input{IDs: ids, Mask: mask, Rows: 16, Cols: 256}, out[:0]); err != nil {
			b.Fatal(err)
		}
	}
}

func TestParseDevices(t *testing.T) {
	devs, err := gpurun.ParseDevices("cuda:0, cuda:1")
	if err != nil || len(devs) != 2 || devs[1].String() != "cuda:1" {
		t.Fatalf("got %v, %v", devs, err)
	}
	if devs, err := gpurun.ParseDevices("cpu,cpu"); err != nil || len(devs) != 2 {
		t.Fatalf("cpu,cpu: %v, %v", devs, err)
	}
	for _, bad := range []string{"cpu,cuda:0", "cuda:0,", "gpu"} {
		if _, err := gpurun.ParseDevices(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
		if kind, err := gpurun.DeviceKind(bad); err == nil {
			t.Errorf("DeviceKind(%q) = %q, want ParseDevices' refusal", bad, kind)
		}
	}
}

// TestDeviceKind: the kind of a device list from its syntax, cuda:all included, without a driver
// (this test runs on machines with no GPU).
func TestDeviceKind(t *testing.T) {
	for s, want := range map[string]string{"cpu": "cpu", "cpu,cpu": "cpu", "cuda": "cuda", "cuda:0, cuda:1": "cuda", "cuda:all": "cuda"} {
		if got, err := gpurun.DeviceKind(s); err != nil || got != want {
			t.Errorf("DeviceKind(%q) = %q, %v; want %q", s, got, err, want)
		}
	}
}

func TestParseProviderOptions(t *testing.T) {
	got, err := gpurun.ParseProviderOptions(" sdpa_kernel=1, tunable_op_enable = 1 ,")
	if err != nil || len(got) != 2 || got["sdpa_kernel"] != "1" || got["tunable_op_enable"] != "1" {
		t.Fatalf("got %v, %v", got, err)
	}
	if got, err := gpurun.ParseProviderOptions(""); err != nil || len(got) != 0 {
		t.Fatalf("empty: %v, %v", got, err)
	}
	for _, bad := range []string{"novalue", "=1"} {
		if _, err := gpurun.ParseProviderOptions(bad); !errors.Is(err, gpurun.ErrOption) {
			t.Errorf("%q: err = %v, want ErrOption", bad, err)
		}
	}
	if _, err := gpurun.New(tinyModel, gpurun.WithCUDAProviderOptions(map[string]string{"device_id": "1"})); !errors.Is(err, gpurun.ErrOption) {
		t.Errorf("device_id override: err = %v, want ErrOption", err)
	}
}

// TestCUDAGraphModes: auto leaves a CPU runner (and any non-"mha" export) without CUDA graphs;
// "on" is refused on the CPU and for packed exports, whose token count depends on the data.
func TestCUDAGraphModes(t *testing.T) {
	r := newRunner(t, gpurun.WithCUDAGraphs(gpurun.GraphsAuto))
	if r.CUDAGraphs() {
		t.Error("auto mode on the CPU uses CUDA graphs")
	}
	if _, err := gpurun.New(tinyModel, gpurun.WithCUDAGraphs(gpurun.GraphsOn)); !errors.Is(err, gpurun.ErrOption) {
		t.Errorf("graphs on for the CPU: err = %v, want ErrOption", err)
	}
	dir := t.TempDir()
	os.WriteFile(dir+"/model.json", []byte(`{"name":"esm2-packed","embedding_dim":8,"max_length":10,"alphabet":"esm",`+
		`"inputs":["input_ids","attention_mask"],"output":"embedding","pooling":"mean","attention":"packed"}`), 0o644)
	_, err := gpurun.New(dir, gpurun.WithDevice(gpurun.Device{Kind: "cuda"}), gpurun.WithCUDAGraphs(gpurun.GraphsOn))
	if !errors.Is(err, gpurun.ErrOption) || !strings.Contains(err.Error(), "--fused mha") {
		t.Errorf("graphs on for a packed export: err = %v, want ErrOption naming --fused mha", err)
	}
	for _, bad := range []string{"", "yes", "ON"} {
		if _, err := gpurun.ParseCUDAGraphs(bad); !errors.Is(err, gpurun.ErrOption) {
			t.Errorf("ParseCUDAGraphs(%q): err = %v, want ErrOption", bad, err)
		}
	}
	if _, err := gpurun.New(tinyModel, gpurun.WithConcurrentRuns(0)); !errors.Is(err, gpurun.ErrOption) {
		t.Errorf("0 concurrent runs: err = %v, want ErrOption", err)
	}
}

// TestGraphOptions: the CUDA-graph options are checked, and ignored by a runner without graphs,
// whose GraphStats stay zero.
func TestGraphOptions(t *testing.T) {
	if _, err := gpurun.New(tinyModel, gpurun.WithGraphSessions(-1)); !errors.Is(err, gpurun.ErrOption) {
		t.Errorf("-1 graph sessions: err = %v, want ErrOption", err)
	}
	called := false
	r := newRunner(t, gpurun.WithGraphCopyOverlap(false), gpurun.WithGraphSessions(1),
		gpurun.WithGraphTimeline(func(gpurun.GraphBatch) { called = true }))
	ids, mask := make([]int64, 64), make([]int64, 64)
	for i := range ids {
		ids[i], mask[i] = int64(4+i%20), 1
	}
	if _, err := r.Embed(context.Background(), gpurun.Input{IDs: ids, Mask: mask, Rows: 1, Cols: 64}, nil); err != nil {
		t.Fatal(err)
	}
	if st := r.GraphStats(); st != (gpurun.GraphStats{}) || called || r.CUDAGraphs() {
		t.Errorf("CPU runner: stats %+v, timeline called %v, CUDA graphs %v", st, called, r.CUDAGraphs())
	}
}
