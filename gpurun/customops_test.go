package gpurun

import (
	"context"
	"errors"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/seqembed/seqembed/internal/half"
	"github.com/seqembed/seqembed/internal/testutil"
	"google.golang.org/protobuf/encoding/protowire"
)

// SkipWithoutGPU skips t unless GPU tests run here (SEQEMBED_GPU_TESTS set: the GPU machine; CI
// has none). Exported for the package's external GPU tests (gpu_test.go) as well.
func SkipWithoutGPU(t testing.TB) {
	t.Helper()
	if os.Getenv("SEQEMBED_GPU_TESTS") == "" {
		t.Skip("GPU tests: set SEQEMBED_GPU_TESTS=1 on a machine with a CUDA GPU")
	}
}

// buildCPUOps builds the custom-op library's CPU-only form (testutil.CPUOps) where ONNX Runtime
// is there to load it.
func buildCPUOps(t *testing.T) string {
	t.Helper()
	if _, err := os.Stat(LibraryPath()); err != nil {
		if os.Getenv("CI") != "" { // in CI every test runs: make test installs what they need
			t.Fatalf("ONNX Runtime library not found (%v)", err)
		}
		t.Skipf("ONNX Runtime library not found (%v): run scripts/fetch-ort.sh", err)
	}
	return testutil.CPUOps(t)
}

// onnx protobuf field numbers (onnx.proto) for the few messages the test graph needs.
func pbString(b []byte, field protowire.Number, s string) []byte {
	b = protowire.AppendTag(b, field, protowire.BytesType)
	return protowire.AppendString(b, s)
}

func pbMessage(b []byte, field protowire.Number, msg []byte) []byte {
	b = protowire.AppendTag(b, field, protowire.BytesType)
	return protowire.AppendBytes(b, msg)
}

func pbVarint(b []byte, field protowire.Number, v int64) []byte {
	b = protowire.AppendTag(b, field, protowire.VarintType)
	return protowire.AppendVarint(b, uint64(v))
}

// intAttr and floatAttr are ONNX AttributeProtos of type INT and FLOAT.
func intAttr(name string, v int64) []byte {
	return pbVarint(pbVarint(pbString(nil, 1, name), 3, v), 20, 2)
}

func floatAttr(name string, v float32) []byte {
	attr := protowire.AppendFixed32(protowire.AppendTag(pbString(nil, 1, name), 2, protowire.Fixed32Type), math.Float32bits(v))
	return pbVarint(attr, 20, 1)
}

// valueInfo is an ONNX ValueInfoProto: a tensor of elemType with named (string) or fixed dims.
func valueInfo(name string, elemType int64, dims ...any) []byte {
	var shape []byte
	for _, d := range dims {
		var dim []byte
		switch d := d.(type) {
		case string:
			dim = pbString(nil, 2, d)
		case int:
			dim = pbVarint(nil, 1, int64(d))
		}
		shape = pbMessage(shape, 1, dim)
	}
	tensor := pbMessage(pbVarint(nil, 1, elemType), 2, shape)
	return pbMessage(pbString(nil, 1, name), 2, pbMessage(nil, 1, tensor))
}

// biasRotaryModel is a one-node ONNX model: y = ai.seqembed.<op>(x, bias, pos, cos, sin), with x,
// bias, cos, sin and y of ONNX element type elem (1 float32 for BiasRotaryF32, 10 float16 for the
// CUDA op BiasRotary).
func biasRotaryModel(op string, elem int64) []byte {
	const int64 = 7
	node := pbString(nil, 4, op)
	for _, in := range []string{"x", "bias", "pos", "cos", "sin"} {
		node = pbString(node, 1, in)
	}
	node = pbString(pbString(pbString(node, 2, "y"), 3, "bias_rotary"), 7, "ai.seqembed")
	graph := pbString(pbMessage(nil, 1, node), 2, "bias-rotary-test")
	graph = pbMessage(graph, 11, valueInfo("x", elem, "batch", "length", "dim"))
	graph = pbMessage(graph, 11, valueInfo("bias", elem, "dim"))
	graph = pbMessage(graph, 11, valueInfo("pos", int64, "p0", "p1"))
	graph = pbMessage(graph, 11, valueInfo("cos", elem, "positions", "half"))
	graph = pbMessage(graph, 11, valueInfo("sin", elem, "positions", "half"))
	graph = pbMessage(graph, 12, valueInfo("y", elem, "batch", "length", "dim"))
	return opTestModel(graph)
}

// rotaryCache is ESM-2's cos/sin cache: positions rows of half angles p / 10000^(2j / (2 half)).
func rotaryCache(positions, half int) (cos, sin []float32) {
	cos, sin = make([]float32, positions*half), make([]float32, positions*half)
	for p := range positions {
		for j := range half {
			a := float64(p) / math.Pow(10000, float64(2*j)/float64(2*half))
			cos[p*half+j], sin[p*half+j] = float32(math.Cos(a)), float32(math.Sin(a))
		}
	}
	return cos, sin
}

// opTestModel wraps an op test's graph in a ModelProto: IR version 8, the ONNX opset 17 and the
// ai.seqembed domain.
func opTestModel(graph []byte) []byte {
	model := pbVarint(nil, 1, 8)
	model = pbMessage(model, 8, pbVarint(pbString(nil, 1, ""), 2, 17))
	model = pbMessage(model, 8, pbVarint(pbString(nil, 1, "ai.seqembed"), 2, 1))
	return pbMessage(model, 7, graph)
}

// gpuOpLibs skips t without a GPU (SkipWithoutGPU) or without SEQEMBED_CUSTOM_OPS (the CUDA build
// of libseqembed_ops.so), builds the library's CPU form and holds ORT's environment until t ends:
// the two libraries of a test that holds a CUDA op to its CPU twin.
func gpuOpLibs(t *testing.T) (cpuLib, cudaLib string) {
	t.Helper()
	SkipWithoutGPU(t)
	cudaLib = os.Getenv("SEQEMBED_CUSTOM_OPS")
	if cudaLib == "" {
		t.Skip("set SEQEMBED_CUSTOM_OPS to the CUDA build of libseqembed_ops.so")
	}
	cpuLib = buildCPUOps(t)
	if err := acquireEnv(LibraryPath()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(releaseEnv)
	return cpuLib, cudaLib
}

// openOpTest writes model to a file called name in a temporary directory and opens it through
// openSession with the custom-op library lib on dev (one thread; device_id 0 on CUDA), feeding
// inputs and fetching outputs; the session closes when the test ends.
func openOpTest(t *testing.T, lib, name string, model []byte, dev Device, inputs, outputs []string) *session {
	t.Helper()
	path := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(path, model, 0o644); err != nil {
		t.Fatal(err)
	}
	cfg := sessionConfig{model: path, threads: 1, device: dev, customOps: lib, inputs: inputs, outputs: outputs}
	if dev.Kind == "cuda" {
		cfg.cuda = map[string]string{"device_id": "0"}
	}
	sess, err := openSession(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(sess.close)
	return sess
}

// TestCustomOpsBiasRotaryCPU registers the custom-op library (CPU form) on a session made by
// openSession, the path every runner's session takes, and checks BiasRotaryF32 against the
// formula: pairs (2j, 2j+1) of x + bias rotated by the angle cached for the row's position and
// column j % half; a single position p0 puts row r of a [batch, length, dim] input at
// p0 + r % length. The CUDA op runs the same formula in float on float16 data (TestGPUBiasRotary
// holds it to this op; the golden tests of models that use it check it end to end).
func TestCustomOpsBiasRotaryCPU(t *testing.T) {
	lib := buildCPUOps(t)
	if err := acquireEnv(LibraryPath()); err != nil {
		t.Fatal(err)
	}
	defer releaseEnv()
	model := filepath.Join(t.TempDir(), "bias_rotary.onnx")
	if err := os.WriteFile(model, biasRotaryModel("BiasRotaryF32", 1), 0o644); err != nil {
		t.Fatal(err)
	}
	cfg := sessionConfig{model: model, threads: 1, device: Device{Kind: "cpu"},
		customOps: filepath.Join(t.TempDir(), "missing.so"), inputs: []string{"x", "bias", "pos", "cos", "sin"}, outputs: []string{"y"}}
	if _, err := openSession(cfg); !errors.Is(err, ErrSession) || !strings.Contains(err.Error(), "missing.so") {
		t.Fatalf("missing library: err = %v, want ErrSession naming the library", err)
	}
	cfg.customOps = ""
	if _, err := openSession(cfg); !errors.Is(err, ErrSession) {
		t.Fatalf("no custom ops for a graph that needs them: err = %v, want ErrSession", err)
	}
	cfg.customOps = lib
	sess, err := openSession(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer sess.close()

	const rows, dim, positions, half = 5, 16, 12, 4
	x, bias := make([]float32, rows*dim), make([]float32, dim)
	for i := range x {
		x[i] = float32(math.Sin(float64(i) * 0.37))
	}
	for i := range bias {
		bias[i] = float32(i%5) * 0.1
	}
	pos := []int64{0, 3, 11, 7, 3}
	cos, sin := rotaryCache(positions, half)
	// run treats x as [rows/length, length, dim] with positions pos ([rows, 1] or [1, 1]).
	run := func(length int64, pos []int64) ([]float32, error) {
		y := make([]float32, rows*dim)
		err := sess.run(context.Background(),
			tensors(tensorOf(x, rows/length, length, dim), tensorOf(bias, dim), tensorOf(pos, int64(len(pos)), 1),
				tensorOf(cos, positions, half), tensorOf(sin, positions, half)),
			tensors(tensorOf(y, rows/length, length, dim)))
		return y, err
	}
	got, err := run(1, pos)
	if err != nil {
		t.Fatal(err)
	}
	for r := range rows {
		for j := range dim / 2 {
			c, s := cos[int(pos[r])*half+j%half], sin[int(pos[r])*half+j%half]
			x0, x1 := x[r*dim+2*j]+bias[2*j], x[r*dim+2*j+1]+bias[2*j+1]
			want0, want1 := x0*c-x1*s, x1*c+x0*s
			if math.Abs(float64(got[r*dim+2*j]-want0)) > 1e-6 || math.Abs(float64(got[r*dim+2*j+1]-want1)) > 1e-6 {
				t.Fatalf("row %d pair %d: got (%g, %g), want (%g, %g)", r, j, got[r*dim+2*j], got[r*dim+2*j+1], want0, want1)
			}
		}
	}
	seq, err := run(rows, []int64{6}) // one sequence of 5 at positions 6..10
	if err != nil {
		t.Fatal(err)
	}
	if perRow, err := run(1, []int64{6, 7, 8, 9, 10}); err != nil || !slices.Equal(seq, perRow) {
		t.Errorf("start position 6 over a length-5 sequence differs from positions 6..10 given per row (%v)", err)
	}
	if _, err := run(1, []int64{0, 1, 12, 0, 0}); err == nil || !strings.Contains(err.Error(), "outside the cos/sin cache") {
		t.Errorf("position 12 of 12: err = %v, want the op's range error", err)
	}
}

// TestManifestCustomOps: a manifest naming a custom-op library loads only when the library is in
// the model directory or SEQEMBED_CUSTOM_OPS points at one.
func TestManifestCustomOps(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "model.json"), []byte(`{"name":"x","embedding_dim":8,"max_length":10,"alphabet":"esm",`+
		`"inputs":["input_ids","attention_mask"],"output":"embedding","pooling":"mean","custom_ops":"libseqembed_ops.so"}`), 0o644)
	t.Setenv("SEQEMBED_CUSTOM_OPS", "")
	if _, err := LoadManifest(dir); !errors.Is(err, ErrManifest) || !strings.Contains(err.Error(), "build-ops.sh") {
		t.Fatalf("missing library: err = %v, want ErrManifest naming build-ops.sh", err)
	}
	elsewhere := filepath.Join(t.TempDir(), "ops.so")
	os.WriteFile(elsewhere, nil, 0o644)
	t.Setenv("SEQEMBED_CUSTOM_OPS", elsewhere)
	m, err := LoadManifest(dir)
	if err != nil || m.CustomOpsPath() != elsewhere {
		t.Fatalf("SEQEMBED_CUSTOM_OPS: %v, path %q", err, m.CustomOpsPath())
	}
	local := filepath.Join(dir, "libseqembed_ops.so")
	os.WriteFile(local, nil, 0o644)
	if m, err := LoadManifest(dir); err != nil || m.CustomOpsPath() != local {
		t.Fatalf("library in the model directory wins: %v, path %q", err, m.CustomOpsPath())
	}
}

// TestRunnerRegistersManifestOps: New registers the manifest's custom-op library on the runner's
// session (CUDA-graph sessions take the same sessionConfig): the tiny model with the CPU ops
// library named in its manifest loads and embeds, and with a file that is no library in its
// place New fails with ErrSession naming it.
func TestRunnerRegistersManifestOps(t *testing.T) {
	lib := buildCPUOps(t)
	model, err := filepath.Abs("../testdata/esm2-tiny/model.onnx")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	if err := os.Symlink(model, filepath.Join(dir, "model.onnx")); err != nil {
		t.Fatal(err)
	}
	manifest := `{"name":"esm2-tiny-ops","embedding_dim":64,"max_length":1022,"alphabet":"esm",` +
		`"inputs":["input_ids","attention_mask"],"output":"embedding","pooling":"mean","custom_ops":"ops.so"}`
	if err := os.WriteFile(filepath.Join(dir, "model.json"), []byte(manifest), 0o644); err != nil {
		t.Fatal(err)
	}
	ops := filepath.Join(dir, "ops.so")
	if err := os.WriteFile(ops, []byte("not a library"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := New(dir, WithThreads(1)); !errors.Is(err, ErrSession) || !strings.Contains(err.Error(), "custom-op library "+ops) {
		t.Fatalf("New with a broken custom-op library: err = %v, want ErrSession naming %s", err, ops)
	}
	data, err := os.ReadFile(lib)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(ops, data, 0o755); err != nil {
		t.Fatal(err)
	}
	r, err := New(dir, WithThreads(1))
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	ids, mask := []int64{0, 5, 6, 2}, []int64{1, 1, 1, 1}
	if out, err := r.Embed(context.Background(), Input{IDs: ids, Mask: mask, Rows: 1, Cols: 4}, nil); err != nil || len(out) != 64 {
		t.Fatalf("Embed: %d values, %v", len(out), err)
	}
}

// TestGPUBiasRotary holds the CUDA op BiasRotary (float16) to its CPU twin BiasRotaryF32 run on the
// same float16-rounded inputs: every output within one float16 step of the CPU's float32 value.
// Shapes: ESM-2 650M's and 3B's widths (160 and 320 vectors a row: one and two passes of a row's
// threads) with the 32-column cache of head size 64, a cache whose width is not a multiple of 4
// (the scalar cache loads), and one start position over padded [batch, length, dim] rows.
func TestGPUBiasRotary(t *testing.T) {
	cpuLib, cudaLib := gpuOpLibs(t)
	io := []string{"x", "bias", "pos", "cos", "sin"}
	cpu := openOpTest(t, cpuLib, "bias_rotary_f32.onnx", biasRotaryModel("BiasRotaryF32", 1), Device{Kind: "cpu"}, io, []string{"y"})
	gpu := openOpTest(t, cudaLib, "bias_rotary.onnx", biasRotaryModel("BiasRotary", 10), Device{Kind: "cuda"}, io, []string{"y"})
	round := func(v []float32) {
		for i, f := range v {
			v[i] = toHalf(float64(f))
		}
	}
	for _, c := range []struct{ batch, length, dim, half, positions int }{
		{333, 1, 1280, 32, 1026}, {1, 77, 2560, 32, 1026}, {3, 5, 24, 6, 40}, {7, 11, 1280, 32, 1026}, {1, 1, 16, 4, 12},
	} {
		rows := c.batch * c.length
		x, bias := make([]float32, rows*c.dim), make([]float32, c.dim)
		for i := range x {
			x[i] = float32(4 * math.Sin(float64(i)*0.37+0.2))
		}
		for i := range bias {
			bias[i] = float32(0.5 * math.Cos(float64(i)*0.11))
		}
		cos, sin := rotaryCache(c.positions, c.half)
		round(x)
		round(bias)
		round(cos)
		round(sin)
		pos := make([]int64, rows)
		for r := range pos {
			pos[r] = int64((r*37 + 5) % c.positions)
		}
		if c.length > 1 {
			pos = []int64{int64(c.positions - c.length - 1)} // one start position, rows at p0 + r % length
		}
		b, l, d, n := int64(c.batch), int64(c.length), int64(c.dim), int64(len(pos))
		want := make([]float32, rows*c.dim)
		if err := cpu.run(context.Background(), tensors(tensorOf(x, b, l, d), tensorOf(bias, d), tensorOf(pos, n, 1),
			tensorOf(cos, int64(c.positions), int64(c.half)), tensorOf(sin, int64(c.positions), int64(c.half))),
			tensors(tensorOf(want, b, l, d))); err != nil {
			t.Fatal(err)
		}
		got := make([]uint16, rows*c.dim)
		if err := gpu.run(context.Background(), tensors(tensorOf(halves(x), b, l, d), tensorOf(halves(bias), d), tensorOf(pos, n, 1),
			tensorOf(halves(cos), int64(c.positions), int64(c.half)), tensorOf(halves(sin), int64(c.positions), int64(c.half))),
			tensors(tensorOf(got, b, l, d))); err != nil {
			t.Fatalf("%+v: %v", c, err)
		}
		// One float16 step of the result, plus float32's rounding of the two products whose
		// difference it is (x0·c − x1·s cancels: the GPU may fuse a multiply into the subtraction).
		worst := 0.0
		for i, v := range want {
			r, j := i/c.dim, i%c.dim/2
			p := int(pos[0]) + r%c.length
			if c.length == 1 {
				p = int(pos[r])
			}
			cc, ss := cos[p*c.half+j%c.half], sin[p*c.half+j%c.half]
			x0, x1 := x[r*c.dim+2*j]+bias[2*j], x[r*c.dim+2*j+1]+bias[2*j+1]
			terms := math.Abs(float64(x0*cc)) + math.Abs(float64(x1*ss))
			g := half.ToFloat32(got[i])
			diff := math.Abs(float64(g - v))
			if diff > math.Abs(float64(v))*0x1p-10+terms*0x1p-22+0x1p-24 {
				t.Fatalf("%+v: row %d column %d = %g on the GPU, want the CPU's %g within one float16 step", c, r, i%c.dim, g, v)
			}
			worst = max(worst, diff)
		}
		t.Logf("%+v: %d values, worst difference %.3g", c, len(want), worst)
	}
}
