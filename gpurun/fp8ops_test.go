package gpurun

import (
	"context"
	"errors"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/seqembed/seqembed/internal/half"
)

// e4m3Values are the non-negative finite E4M3 (e4m3fn) values by code 0..0x7e, computed from the
// format's definition (4 exponent bits, bias 7; 3 mantissa bits; subnormals m·2^-9).
var e4m3Values = func() [0x7f]float64 {
	var v [0x7f]float64
	for c := range 0x7f {
		e, m := c>>3, c&7
		if e == 0 {
			v[c] = math.Ldexp(float64(m), -9)
		} else {
			v[c] = math.Ldexp(1+float64(m)/8, e-7)
		}
	}
	return v
}()

func e4m3Decode(c uint8) float64 {
	v := e4m3Values[min(int(c&0x7f), 0x7e)]
	if c&0x80 != 0 {
		return -v
	}
	return v
}

// e4m3Encode is the reference quantiser, written apart from the op's: the nearest of the 127
// values, a tie to the even code, saturated at 448.
func e4m3Encode(x float32) uint8 {
	var sign uint8
	a := float64(x)
	if a < 0 || (a == 0 && math.Signbit(a)) {
		sign, a = 0x80, -a
	}
	if a >= 448 {
		return sign | 0x7e
	}
	c := 0
	for c+1 < 0x7f && e4m3Values[c+1] <= a {
		c++
	}
	if e4m3Values[c] == a {
		return sign | uint8(c)
	}
	lo, hi := a-e4m3Values[c], e4m3Values[c+1]-a
	if hi < lo || (hi == lo && c%2 == 1) {
		c++
	}
	return sign | uint8(c)
}

// fp8Model is QuantizeE4M3(x, gelu) -> (q, scale); Fp8Linear(q, scale, w, w_scale[, bias]) -> y,
// with q, scale and y as graph outputs. float is the ONNX element type of x, bias and y (1 float32
// for the CPU ops, 10 float16 for the CUDA ones).
func fp8Model(float int64, quantOp, linearOp string, gelu int64, bias bool) []byte {
	const uint8T = 2
	attr := intAttr("gelu", gelu)
	quant := pbString(pbString(pbString(nil, 1, "x"), 2, "q"), 2, "scale")
	quant = pbMessage(pbString(pbString(pbString(quant, 3, "quantize"), 4, quantOp), 7, "ai.seqembed"), 5, attr)
	lin := withBias(pbString(pbString(pbString(pbString(nil, 1, "q"), 1, "scale"), 1, "w"), 1, "w_scale"), bias)
	lin = pbString(pbString(pbString(pbString(lin, 2, "y"), 3, "linear"), 4, linearOp), 7, "ai.seqembed")
	graph := pbString(pbMessage(pbMessage(nil, 1, quant), 1, lin), 2, "fp8-test")
	graph = pbMessage(graph, 11, valueInfo("x", float, "rows", "k"))
	graph = pbMessage(graph, 11, valueInfo("w", uint8T, "n", "k"))
	graph = pbMessage(graph, 11, valueInfo("w_scale", 1, "n"))
	if bias {
		graph = pbMessage(graph, 11, valueInfo("bias", float, "n"))
	}
	graph = pbMessage(graph, 12, valueInfo("q", uint8T, "rows", "k"))
	graph = pbMessage(graph, 12, valueInfo("scale", 1, "rows"))
	graph = pbMessage(graph, 12, valueInfo("y", float, "rows", "n"))
	return opTestModel(graph)
}

// withBias appends the bias input to a node under construction when bias is set.
func withBias(node []byte, bias bool) []byte {
	if bias {
		return pbString(node, 1, "bias")
	}
	return node
}

// fp8Case is one test problem: x [rows, k], w codes [n, k] with per-channel scales, bias [n].
type fp8Case struct {
	rows, k, n int
	x          []float32
	w          []uint8
	wScale     []float32
	bias       []float32
}

// newFP8Case fills a case deterministically. Row 0 holds E4M3's edge values at scale 1 (its
// largest magnitude is 448): the smallest subnormal, ties that round to even, saturation; row 1 is
// all zeros (scale 1, codes 0); the other rows span magnitudes 1e-3..1e2.
func newFP8Case(rows, k, n int) fp8Case {
	c := fp8Case{rows: rows, k: k, n: n, x: make([]float32, rows*k), w: make([]uint8, n*k),
		wScale: make([]float32, n), bias: make([]float32, n)}
	edge := []float32{448, 0x1p-9, 0x1p-10, 1.5 * 0x1p-9, 1.0625, 1.1875, -3.3, 240, 0, -448, 0.0137, 17.2,
		-0x1p-10 * 3, 2.5 * 0x1p-9, 0x1p-6, 0.96875, 447}
	for r := 2; r < rows; r++ {
		mag := math.Pow(10, float64(r%6)-3)
		for j := range k {
			c.x[r*k+j] = float32(mag * math.Sin(float64(r*k+j)*0.713+0.3) * (1 + float64(j%7)))
		}
	}
	copy(c.x, edge[:min(len(edge), k)])
	for i := range c.w {
		c.w[i] = e4m3Encode(float32(300 * math.Sin(float64(i)*1.37+0.1)))
	}
	for i := range n {
		c.wScale[i] = float32(1e-3 * (1 + float64(i%5)))
		c.bias[i] = float32(0.1 * math.Cos(float64(i)))
	}
	return c
}

// reference is the ops' contract computed in float64: per-row scales and codes of x (after GELU:
// gelu 1 erf, 2 the tanh approximation), and y = scale[r]·w_scale[n]·Σ dec(q)·dec(w) + bias.
func (c fp8Case) reference(x []float32, gelu int64) (q []uint8, scale []float32, y []float64) {
	q, scale, y = make([]uint8, c.rows*c.k), make([]float32, c.rows), make([]float64, c.rows*c.n)
	v := make([]float32, c.k)
	for r := range c.rows {
		amax := float32(0)
		for j := range c.k {
			v[j] = x[r*c.k+j]
			switch gelu {
			case 1:
				v[j] = float32(geluErf(float64(v[j])))
			case 2:
				v[j] = float32(geluTanh(float64(v[j])))
			}
			amax = max(amax, float32(math.Abs(float64(v[j]))))
		}
		s := amax / 448
		if s <= 0 {
			s = 1
		}
		scale[r] = s
		inv := 1 / s
		for j := range c.k {
			q[r*c.k+j] = e4m3Encode(v[j] * inv)
		}
		for n := range c.n {
			acc := 0.0
			for j := range c.k {
				acc += e4m3Decode(q[r*c.k+j]) * e4m3Decode(c.w[n*c.k+j])
			}
			y[r*c.n+n] = float64(s)*float64(c.wScale[n])*acc + float64(c.bias[n])
		}
	}
	return q, scale, y
}

func openFP8(t *testing.T, lib string, model []byte, dev Device, bias bool) *session {
	t.Helper()
	in := []string{"x", "w", "w_scale"}
	if bias {
		in = append(in, "bias")
	}
	return openOpTest(t, lib, "fp8.onnx", model, dev, in, []string{"q", "scale", "y"})
}

// TestCustomOpsFP8CPU checks the CPU forms of QuantizeE4M3 and Fp8Linear (the reference the CUDA
// ops are held to on the GPU) against an independent quantiser: without GELU every scale and code
// is exact (ties to even, subnormals, saturation, an all-zero row); with GELU (erf in float32 in
// the op, float64 here; or its tanh approximation, gelu 2) a code may sit one step off where GELU's
// last bit decides; y within 1e-5 of the float64 sum, with and without bias; gelu 3 is refused.
func TestCustomOpsFP8CPU(t *testing.T) {
	lib := buildCPUOps(t)
	if err := acquireEnv(LibraryPath()); err != nil {
		t.Fatal(err)
	}
	defer releaseEnv()
	c := newFP8Case(12, 32, 24)
	for _, tc := range []struct {
		gelu int64
		bias bool
	}{{0, true}, {1, true}, {0, false}, {2, true}} {
		sess := openFP8(t, lib, fp8Model(1, "QuantizeE4M3F32", "Fp8LinearF32", tc.gelu, tc.bias), Device{Kind: "cpu"}, tc.bias)
		q, scale, y := make([]uint8, c.rows*c.k), make([]float32, c.rows), make([]float32, c.rows*c.n)
		in := tensors(tensorOf(c.x, int64(c.rows), int64(c.k)), tensorOf(c.w, int64(c.n), int64(c.k)), tensorOf(c.wScale, int64(c.n)))
		bias := c.bias
		if tc.bias {
			in = append(in, tensorOf(c.bias, int64(c.n)))
		} else {
			bias = make([]float32, c.n)
		}
		if err := sess.run(context.Background(), in, tensors(tensorOf(q, int64(c.rows), int64(c.k)), tensorOf(scale, int64(c.rows)),
			tensorOf(y, int64(c.rows), int64(c.n)))); err != nil {
			t.Fatalf("gelu %d bias %v: %v", tc.gelu, tc.bias, err)
		}
		ref := c
		ref.bias = bias
		wq, ws, wy := ref.reference(c.x, tc.gelu)
		off := 0
		for i := range q {
			if q[i] != wq[i] {
				d := int(q[i]&0x7f) - int(wq[i]&0x7f)
				if tc.gelu == 0 || q[i]&0x80 != wq[i]&0x80 || d < -1 || d > 1 {
					t.Fatalf("gelu %d: x[%d][%d] = %g: code %#x, want %#x", tc.gelu, i/c.k, i%c.k, c.x[i], q[i], wq[i])
				}
				off++
			}
		}
		if off > len(q)/100 {
			t.Errorf("gelu: %d of %d codes one step off (want at most 1%%)", off, len(q))
		}
		for r := range c.rows {
			if (tc.gelu == 0 && scale[r] != ws[r]) || math.Abs(float64(scale[r]-ws[r])) > 1e-6*float64(ws[r]) {
				t.Fatalf("gelu %d: row %d scale %g, want %g", tc.gelu, r, scale[r], ws[r])
			}
		}
		if scale[1] != 1 || q[c.k] != 0 {
			t.Errorf("all-zero row: scale %g, first code %#x; want 1 and 0", scale[1], q[c.k])
		}
		if tc.gelu == 0 {
			for j, want := range []uint8{0x7e, 0x01, 0x00, 0x02, 0x38, 0x3a, 0xc5, 0x77, 0x00, 0xfe} {
				if q[j] != want {
					t.Errorf("edge value x[0][%d] = %g: code %#x, want %#x", j, c.x[j], q[j], want)
				}
			}
		}
		for r := range c.rows {
			for n := range c.n {
				acc := 0.0
				for j := range c.k {
					acc += e4m3Decode(q[r*c.k+j]) * e4m3Decode(c.w[n*c.k+j])
				}
				want := float64(scale[r])*float64(c.wScale[n])*acc + float64(bias[n])
				if got := float64(y[r*c.n+n]); math.Abs(got-want) > 1e-5*(1+math.Abs(want)) {
					t.Fatalf("gelu %d bias %v: y[%d][%d] = %g, want %g (reference from its own codes %g)", tc.gelu, tc.bias, r, n, got, want, wy[r*c.n+n])
				}
			}
		}
	}
	sess := openFP8(t, lib, fp8Model(1, "QuantizeE4M3F32", "Fp8LinearF32", 3, true), Device{Kind: "cpu"}, true)
	q, scale, y := make([]uint8, c.rows*c.k), make([]float32, c.rows), make([]float32, c.rows*c.n)
	err := sess.run(context.Background(), tensors(tensorOf(c.x, int64(c.rows), int64(c.k)), tensorOf(c.w, int64(c.n), int64(c.k)), tensorOf(c.wScale, int64(c.n)), tensorOf(c.bias, int64(c.n))),
		tensors(tensorOf(q, int64(c.rows), int64(c.k)), tensorOf(scale, int64(c.rows)), tensorOf(y, int64(c.rows), int64(c.n))))
	if err == nil || !strings.Contains(err.Error(), "gelu must be 0") {
		t.Fatalf("gelu 3: err = %v, want the op's refusal of the attribute", err)
	}
}

// TestGPUFP8Ops runs the CUDA QuantizeE4M3 and Fp8Linear (cuBLASLt, outer-vector scales, bias
// epilogue) on float16 data of ESM-2 650M's shapes and holds them to the CPU ops on the same
// values: codes and scales identical without GELU (one code step where GELU's last bit decides),
// y within float16 rounding of the CPU result. Needs SEQEMBED_GPU_TESTS=1, a GPU with FP8 tensor
// cores and SEQEMBED_CUSTOM_OPS pointing at the CUDA build of the library.
func TestGPUFP8Ops(t *testing.T) {
	cpuLib, cudaLib := gpuOpLibs(t)
	for _, shape := range [][3]int{{333, 1280, 1280}, {77, 5120, 1280}, {1, 1280, 5120}, {12, 32, 32}} {
		c := newFP8Case(shape[0], shape[1], shape[2])
		// The inputs as float16, and the same values as float32 for the CPU ops.
		x16, b16 := make([]uint16, len(c.x)), make([]uint16, len(c.bias))
		for i, v := range c.x {
			x16[i] = half.FromFloat64(float64(min(max(v, -65504), 65504)))
			c.x[i] = half.ToFloat32(x16[i])
		}
		for i, v := range c.bias {
			b16[i] = half.FromFloat64(float64(v))
			c.bias[i] = half.ToFloat32(b16[i])
		}
		for _, gelu := range []int64{0, 1, 2} {
			cpu := openFP8(t, cpuLib, fp8Model(1, "QuantizeE4M3F32", "Fp8LinearF32", gelu, true), Device{Kind: "cpu"}, true)
			gpu := openFP8(t, cudaLib, fp8Model(10, "QuantizeE4M3", "Fp8Linear", gelu, true), Device{Kind: "cuda"}, true)
			rows, k, n := int64(c.rows), int64(c.k), int64(c.n)
			q, s, y := make([]uint8, c.rows*c.k), make([]float32, c.rows), make([]float32, c.rows*c.n)
			if err := cpu.run(context.Background(), tensors(tensorOf(c.x, rows, k), tensorOf(c.w, n, k), tensorOf(c.wScale, n), tensorOf(c.bias, n)),
				tensors(tensorOf(q, rows, k), tensorOf(s, rows), tensorOf(y, rows, n))); err != nil {
				t.Fatal(err)
			}
			gq, gs, gy := make([]uint8, c.rows*c.k), make([]float32, c.rows), make([]uint16, c.rows*c.n)
			if err := gpu.run(context.Background(), tensors(tensorOf(x16, rows, k), tensorOf(c.w, n, k), tensorOf(c.wScale, n), tensorOf(b16, n)),
				tensors(tensorOf(gq, rows, k), tensorOf(gs, rows), tensorOf(gy, rows, n))); err != nil {
				t.Fatalf("shape %v gelu %d: %v", shape, gelu, err)
			}
			off := 0
			for i := range q {
				if d := int(gq[i]&0x7f) - int(q[i]&0x7f); gq[i] != q[i] && (gelu == 0 || d < -1 || d > 1) {
					t.Fatalf("shape %v gelu %d: code [%d][%d] %#x on the GPU, %#x on the CPU", shape, gelu, i/c.k, i%c.k, gq[i], q[i])
				} else if gq[i] != q[i] {
					off++
				}
			}
			worstScale, worstY := 0.0, 0.0
			for r := range c.rows {
				worstScale = max(worstScale, math.Abs(float64(gs[r]-s[r]))/float64(s[r]))
			}
			scaleLimit := 1e-6
			if gelu == 2 { // the GPU's x*sigmoid(2u) with the hardware exp against the CPU's tanhf form
				scaleLimit = 4e-6
			}
			if (gelu == 0 && worstScale != 0) || worstScale > scaleLimit {
				t.Fatalf("shape %v gelu %d: scales differ by %g relative", shape, gelu, worstScale)
			}
			// y from the GPU's own codes would match to float16 rounding; with a few codes one
			// step apart (GELU) compare against the output's scale instead.
			ymax := 0.0
			for _, v := range y {
				ymax = max(ymax, math.Abs(float64(v)))
			}
			for i, v := range y {
				worstY = max(worstY, math.Abs(float64(half.ToFloat32(gy[i]))-float64(v))/(ymax+1e-30))
			}
			limit := 2e-3
			if off > 0 {
				limit = 1e-2
			}
			t.Logf("shape %v gelu %d: %d of %d codes one step apart, y max diff %.2e of max |y| %.3g", shape, gelu, off, len(q), worstY, ymax)
			if worstY > limit {
				t.Errorf("shape %v gelu %d: y differs from the CPU op by %.2e of max |y| (limit %.0e)", shape, gelu, worstY, limit)
			}
		}
	}
}

// TestFP8ModelRefusedOffGPU: a manifest with precision fp8 is refused on the CPU before any session
// is made, naming what it needs; an unknown precision is a manifest error.
func TestFP8ModelRefusedOffGPU(t *testing.T) {
	dir := t.TempDir()
	data, err := os.ReadFile("../testdata/esm2-tiny/model.json")
	if err != nil {
		t.Fatal(err)
	}
	write := func(precision string) {
		t.Helper()
		out := strings.Replace(string(data), `"dtype"`, `"precision": "`+precision+`", "dtype"`, 1)
		if err := os.WriteFile(filepath.Join(dir, "model.json"), []byte(out), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("fp8")
	if _, err := New(dir); !errors.Is(err, ErrDevice) || !strings.Contains(err.Error(), "FP8 tensor cores") {
		t.Fatalf("fp8 model on the CPU: err = %v, want ErrDevice naming FP8 tensor cores", err)
	}
	write("int4")
	if _, err := LoadManifest(dir); !errors.Is(err, ErrManifest) || !strings.Contains(err.Error(), `precision "int4"`) {
		t.Fatalf("precision int4: err = %v, want ErrManifest", err)
	}
}
