package gpurun

import (
	"context"
	"fmt"
	"math"
	"strings"
	"testing"

	"github.com/seqembed/seqembed/internal/half"
)

// denseModel is one Fp16Linear node (op: Fp16LinearF32 or Fp16Linear) y = x·wᵀ (+ bias)
// (+ residual), GELU when gelu is 1; float is the ONNX element type of x, w, bias, residual and y
// (1 float32, 10 float16). Without bias but with residual the bias input is named "" (absent).
func denseModel(float int64, op string, gelu int64, bias, residual bool) []byte {
	attr := intAttr("gelu", gelu)
	node := withBias(pbString(pbString(nil, 1, "x"), 1, "w"), bias)
	if residual {
		if !bias {
			node = pbString(node, 1, "")
		}
		node = pbString(node, 1, "residual")
	}
	node = pbString(pbString(pbString(pbString(node, 2, "y"), 3, "dense"), 4, op), 7, "ai.seqembed")
	node = pbMessage(node, 5, attr)
	graph := pbString(pbMessage(nil, 1, node), 2, "dense-test")
	graph = pbMessage(graph, 11, valueInfo("x", float, "rows", "k"))
	graph = pbMessage(graph, 11, valueInfo("w", float, "n", "k"))
	if bias {
		graph = pbMessage(graph, 11, valueInfo("bias", float, "n"))
	}
	if residual {
		graph = pbMessage(graph, 11, valueInfo("residual", float, "rows", "n"))
	}
	graph = pbMessage(graph, 12, valueInfo("y", float, "rows", "n"))
	return opTestModel(graph)
}

func openDense(t *testing.T, lib string, model []byte, dev Device, bias, residual bool) *session {
	t.Helper()
	in := []string{"x", "w"}
	if bias {
		in = append(in, "bias")
	}
	if residual {
		in = append(in, "residual")
	}
	return openOpTest(t, lib, "dense.onnx", model, dev, in, []string{"y"})
}

// denseCase is one Fp16Linear problem: x [rows, k], w [n, k], bias [n], residual [rows, n], values
// of ESM-2's scale (activations up to a few units, weights ~0.02, a residual stream up to ~8),
// exactly representable in float16.
type denseCase struct {
	rows, k, n           int
	x, w, bias, residual []float32
}

func newDenseCase(rows, k, n int) denseCase {
	c := denseCase{rows: rows, k: k, n: n, x: make([]float32, rows*k), w: make([]float32, n*k), bias: make([]float32, n),
		residual: make([]float32, rows*n)}
	round := func(v float64) float32 { return toHalf(float64(float32(v))) }
	for i := range c.x {
		c.x[i] = round(2 * math.Sin(float64(i)*0.731+0.2) * (1 + float64(i%5)/4))
	}
	for i := range c.w {
		c.w[i] = round(0.04 * math.Cos(float64(i)*1.173+0.5) / math.Sqrt(float64(k)/64))
	}
	for i := range c.bias {
		c.bias[i] = round(0.5 * math.Sin(float64(i)*0.37))
	}
	for i := range c.residual {
		c.residual[i] = round(8 * math.Sin(float64(i)*0.113+1.1))
	}
	return c
}

// toHalf is v rounded to the nearest float16 (ties to even), as float32.
func toHalf(v float64) float32 { return half.ToFloat32(half.FromFloat64(v)) }

// halves is v as float16 bit patterns (rounded to nearest even).
func halves(v []float32) []uint16 {
	out := make([]uint16, len(v))
	for i, f := range v {
		out[i] = half.FromFloat64(float64(f))
	}
	return out
}

// geluTanh and geluErf are GELU's tanh approximation and its exact form, in float64.
func geluTanh(v float64) float64 {
	return 0.5 * v * (1 + math.Tanh(math.Sqrt(2/math.Pi)*(v+0.044715*v*v*v)))
}
func geluErf(v float64) float64 { return 0.5 * v * (1 + math.Erf(v/math.Sqrt2)) }

// reference is Fp16Linear's contract in float64, with the bias and the residual when asked; act
// applies GELU (nil: none).
func (c denseCase) reference(bias, residual bool, act func(float64) float64) []float64 {
	y := make([]float64, c.rows*c.n)
	for r := range c.rows {
		for n := range c.n {
			acc := 0.0
			for j := range c.k {
				acc += float64(c.x[r*c.k+j]) * float64(c.w[n*c.k+j])
			}
			if bias {
				acc += float64(c.bias[n])
			}
			if residual {
				acc += float64(c.residual[r*c.n+n])
			}
			if act != nil {
				acc = act(acc)
			}
			y[r*c.n+n] = acc
		}
	}
	return y
}

// TestCustomOpsFp16LinearCPU checks the CPU form of Fp16Linear (the CUDA op's reference on the
// GPU) against a float64 reference: with and without bias and residual, with the tanh GELU, that
// the GELU is the tanh approximation (cuBLASLt's), measurably not the erf form, on values where
// they part, and that a residual with GELU or of the wrong shape is refused.
func TestCustomOpsFp16LinearCPU(t *testing.T) {
	lib := buildCPUOps(t)
	if err := acquireEnv(LibraryPath()); err != nil {
		t.Fatal(err)
	}
	defer releaseEnv()
	c := newDenseCase(9, 48, 40)
	for _, tc := range []struct {
		gelu, bias, residual bool
	}{{true, true, false}, {false, true, false}, {false, false, false}, {true, false, false}, {false, true, true},
		{false, false, true}} {
		gelu := map[bool]int64{false: 0, true: 1}[tc.gelu]
		sess := openDense(t, lib, denseModel(1, "Fp16LinearF32", gelu, tc.bias, tc.residual), Device{Kind: "cpu"},
			tc.bias, tc.residual)
		in := tensors(tensorOf(c.x, int64(c.rows), int64(c.k)), tensorOf(c.w, int64(c.n), int64(c.k)))
		if tc.bias {
			in = append(in, tensorOf(c.bias, int64(c.n)))
		}
		if tc.residual {
			in = append(in, tensorOf(c.residual, int64(c.rows), int64(c.n)))
		}
		y := make([]float32, c.rows*c.n)
		if err := sess.run(context.Background(), in, tensors(tensorOf(y, int64(c.rows), int64(c.n)))); err != nil {
			t.Fatalf("%+v: %v", tc, err)
		}
		var act func(float64) float64
		if tc.gelu {
			act = geluTanh
		}
		want := c.reference(tc.bias, tc.residual, act)
		for i, w := range want {
			if d := math.Abs(float64(y[i]) - w); d > 2e-5*(1+math.Abs(w)) {
				t.Fatalf("%+v: y[%d][%d] = %g, want %g", tc, i/c.n, i%c.n, y[i], w)
			}
		}
		if tc.gelu && tc.bias {
			erf := c.reference(true, false, geluErf)
			worst := 0.0
			for i := range erf {
				worst = max(worst, math.Abs(float64(y[i])-erf[i]))
			}
			if worst < 5e-5 {
				t.Errorf("the GELU is within %.1e of the erf form everywhere: the case does not tell tanh from erf", worst)
			}
			t.Logf("tanh GELU vs erf GELU on this case: max |diff| %.2e", worst)
		}
	}
	// Refused: a residual with GELU (cuBLASLt would apply the GELU to the sum), and one whose
	// shape is not y's.
	y := make([]float32, c.rows*c.n)
	x, w, b := tensorOf(c.x, int64(c.rows), int64(c.k)), tensorOf(c.w, int64(c.n), int64(c.k)), tensorOf(c.bias, int64(c.n))
	sess := openDense(t, lib, denseModel(1, "Fp16LinearF32", 1, true, true), Device{Kind: "cpu"}, true, true)
	err := sess.run(context.Background(), tensors(x, w, b, tensorOf(c.residual, int64(c.rows), int64(c.n))),
		tensors(tensorOf(y, int64(c.rows), int64(c.n))))
	if err == nil || !strings.Contains(err.Error(), "residual input with gelu") {
		t.Errorf("residual with gelu: err = %v, want the op's refusal", err)
	}
	sess = openDense(t, lib, denseModel(1, "Fp16LinearF32", 0, true, true), Device{Kind: "cpu"}, true, true)
	err = sess.run(context.Background(), tensors(x, w, b, tensorOf(c.residual[:c.n*(c.rows-1)], int64(c.rows-1), int64(c.n))),
		tensors(tensorOf(y, int64(c.rows), int64(c.n))))
	if err == nil || !strings.Contains(err.Error(), "residual must have y's shape") {
		t.Errorf("residual of %d rows for %d: err = %v, want the op's refusal", c.rows-1, c.rows, err)
	}
}

// TestGPUFp16Linear runs the CUDA Fp16Linear (cuBLASLt, bias and GELU in the epilogue, the
// residual as C with beta = 1) on ESM-2 650M's fc1/fc2 shapes and odd row counts, held to the CPU
// op on the same float16 values within float16 rounding of y plus a GEMM's accumulation bound
// (|Δ| ≤ 2e-3·|y| + 1e-5·Σ_k|x_rk|·max|w|: cuBLAS may sum in a different order, or split K). With
// GELU it also checks the GELU is the tanh form the op documents: one float16 output cannot tell
// the forms apart (they differ by ≤ 2e-4, under float16's step at |y| ≈ 1), but the mean error
// signed by the forms' difference does — it is ≈ 0 for the form computed and ≈ the forms' mean gap
// for the other. Needs SEQEMBED_GPU_TESTS=1 and SEQEMBED_CUSTOM_OPS pointing at the CUDA build of
// the library.
func TestGPUFp16Linear(t *testing.T) {
	cpuLib, cudaLib := gpuOpLibs(t)
	for _, shape := range [][3]int{{333, 1280, 5120}, {77, 5120, 1280}, {1, 1280, 5120}, {257, 1280, 5120}, {12, 32, 48}} {
		c := newDenseCase(shape[0], shape[1], shape[2])
		for i := range c.bias { // pre-activations across GELU's bend (|v| up to ~3), where the forms part
			c.bias[i] = toHalf(float64(2.5 * float32(math.Sin(float64(i)*0.37))))
		}
		rows, k, n := int64(c.rows), int64(c.k), int64(c.n)
		wmax := 0.0
		for _, v := range c.w {
			wmax = max(wmax, math.Abs(float64(v)))
		}
		bound := make([]float64, c.rows) // 1e-5·Σ_k|x_rk|·max|w|
		for r := range c.rows {
			for j := range c.k {
				bound[r] += math.Abs(float64(c.x[r*c.k+j]))
			}
			bound[r] *= 1e-5 * wmax
		}
		for _, tc := range []struct {
			gelu, bias, residual bool
		}{{true, true, false}, {false, true, false}, {false, false, false}, {false, true, true}, {false, false, true}} {
			gelu := map[bool]int64{false: 0, true: 1}[tc.gelu]
			cpu := openDense(t, cpuLib, denseModel(1, "Fp16LinearF32", gelu, tc.bias, tc.residual), Device{Kind: "cpu"},
				tc.bias, tc.residual)
			gpu := openDense(t, cudaLib, denseModel(10, "Fp16Linear", gelu, tc.bias, tc.residual), Device{Kind: "cuda"},
				tc.bias, tc.residual)
			in := tensors(tensorOf(c.x, rows, k), tensorOf(c.w, n, k))
			in16 := tensors(tensorOf(halves(c.x), rows, k), tensorOf(halves(c.w), n, k))
			if tc.bias {
				in = append(in, tensorOf(c.bias, n))
				in16 = append(in16, tensorOf(halves(c.bias), n))
			}
			if tc.residual {
				in = append(in, tensorOf(c.residual, rows, n))
				in16 = append(in16, tensorOf(halves(c.residual), rows, n))
			}
			y, gy := make([]float32, c.rows*c.n), make([]uint16, c.rows*c.n)
			if err := cpu.run(context.Background(), in, tensors(tensorOf(y, rows, n))); err != nil {
				t.Fatal(err)
			}
			// Twice: the second run takes the algorithm the first cached for its row bucket.
			for range 2 {
				if err := gpu.run(context.Background(), in16, tensors(tensorOf(gy, rows, n))); err != nil {
					t.Fatalf("shape %v %+v: %v", shape, tc, err)
				}
			}
			worst, bad := 0.0, 0
			for i, v := range y {
				d := math.Abs(float64(half.ToFloat32(gy[i])) - float64(v))
				tol := 2e-3*math.Abs(float64(v)) + bound[i/c.n]
				worst = max(worst, d/tol)
				if d > tol {
					if bad++; bad <= 3 {
						t.Errorf("shape %v %+v: y[%d][%d] = %g on the GPU, %g on the CPU (tolerance %.2g)",
							shape, tc, i/c.n, i%c.n, half.ToFloat32(gy[i]), v, tol)
					}
				}
			}
			msg := ""
			if tc.gelu && tc.bias && c.rows*c.n >= 100000 {
				// mean of (GPU - form) signed by (tanh - erf), where the forms differ by > 5e-5
				pre := c.reference(true, false, nil)
				var st, se float64
				cnt := 0
				for i, v := range pre {
					gt, ge := geluTanh(v), geluErf(v)
					if math.Abs(gt-ge) < 5e-5 {
						continue
					}
					g, sign := float64(half.ToFloat32(gy[i])), math.Copysign(1, gt-ge)
					st += (g - gt) * sign
					se += (g - ge) * sign
					cnt++
				}
				st, se = st/float64(cnt), se/float64(cnt)
				msg = fmt.Sprintf("; over %d outputs where the forms differ, mean signed error vs tanh %.2e, vs erf %.2e", cnt, st, se)
				if cnt < 1000 || math.Abs(st) > math.Abs(se)/4 {
					t.Errorf("shape %v: the GPU's GELU is not the tanh form%s", shape, msg)
				}
			}
			t.Logf("shape %v %+v: worst |Δ| %.2f of the tolerance, %d outside%s", shape, tc, worst, bad, msg)
		}
	}
}
