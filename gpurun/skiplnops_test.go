package gpurun

import (
	"context"
	"math"
	"strings"
	"testing"

	"github.com/seqembed/seqembed/internal/half"
)

// skipLnModel is one SkipLayerNormE4M3 node (op: SkipLayerNormE4M3F32 or SkipLayerNormE4M3)
// (x, skip, gamma, beta[, bias]) -> (q, scale, sum) with epsilon eps; float is the ONNX element
// type of x, skip, gamma, beta, bias and sum (1 float32, 10 float16).
func skipLnModel(float int64, op string, eps float32, bias bool) []byte {
	attr := floatAttr("epsilon", eps)
	node := withBias(pbString(pbString(pbString(pbString(nil, 1, "x"), 1, "skip"), 1, "gamma"), 1, "beta"), bias)
	node = pbString(pbString(pbString(node, 2, "q"), 2, "scale"), 2, "sum")
	node = pbMessage(pbString(pbString(pbString(node, 3, "skipln"), 4, op), 7, "ai.seqembed"), 5, attr)
	graph := pbString(pbMessage(nil, 1, node), 2, "skipln-test")
	graph = pbMessage(graph, 11, valueInfo("x", float, "rows", "d"))
	graph = pbMessage(graph, 11, valueInfo("skip", float, "rows", "d"))
	graph = pbMessage(graph, 11, valueInfo("gamma", float, "d"))
	graph = pbMessage(graph, 11, valueInfo("beta", float, "d"))
	if bias {
		graph = pbMessage(graph, 11, valueInfo("bias", float, "d"))
	}
	graph = pbMessage(graph, 12, valueInfo("q", 2, "rows", "d"))
	graph = pbMessage(graph, 12, valueInfo("scale", 1, "rows"))
	graph = pbMessage(graph, 12, valueInfo("sum", float, "rows", "d"))
	return opTestModel(graph)
}

func openSkipLn(t *testing.T, lib string, model []byte, dev Device, bias bool) *session {
	t.Helper()
	in := []string{"x", "skip", "gamma", "beta"}
	if bias {
		in = append(in, "bias")
	}
	return openOpTest(t, lib, "skipln.onnx", model, dev, in, []string{"q", "scale", "sum"})
}

// skipLnCase is one problem of ESM-2's scale, every value exactly a float16: x a projection's
// output (a few units), skip the residual stream (up to ~8, with one outlier channel near 60, as
// trained ESM-2 has), gamma ~1, beta and bias small.
type skipLnCase struct {
	rows, d                    int
	x, skip, gamma, beta, bias []float32
}

func newSkipLnCase(rows, d int) skipLnCase {
	c := skipLnCase{rows: rows, d: d, x: make([]float32, rows*d), skip: make([]float32, rows*d),
		gamma: make([]float32, d), beta: make([]float32, d), bias: make([]float32, d)}
	round := func(v float64) float32 { return toHalf(float64(float32(v))) }
	for i := range c.x {
		c.x[i] = round(2 * math.Sin(float64(i)*0.731+0.2) * (1 + float64(i%5)/4))
		c.skip[i] = round(8 * math.Sin(float64(i)*0.113+1.1))
		if i%d == d/3 {
			c.skip[i] = round(60 + float64(i%7))
		}
	}
	for j := range d {
		c.gamma[j] = round(1 + 0.2*math.Cos(float64(j)*0.37))
		c.beta[j] = round(0.1 * math.Sin(float64(j)*0.91))
		c.bias[j] = round(0.5 * math.Sin(float64(j)*0.29))
	}
	return c
}

// reference is the op's contract in float64: the sum, the normalised rows, their scales and codes.
func (c skipLnCase) reference(bias bool, eps float64) (sum, norm []float64, scale []float32, q []uint8) {
	sum, norm = make([]float64, c.rows*c.d), make([]float64, c.rows*c.d)
	scale, q = make([]float32, c.rows), make([]uint8, c.rows*c.d)
	for r := range c.rows {
		mean := 0.0
		for j := range c.d {
			v := float64(c.x[r*c.d+j]) + float64(c.skip[r*c.d+j])
			if bias {
				v += float64(c.bias[j])
			}
			sum[r*c.d+j] = v
			mean += v
		}
		mean /= float64(c.d)
		variance := 0.0
		for j := range c.d {
			variance += (sum[r*c.d+j] - mean) * (sum[r*c.d+j] - mean)
		}
		rstd := 1 / math.Sqrt(variance/float64(c.d)+eps)
		amax := 0.0
		for j := range c.d {
			n := (sum[r*c.d+j]-mean)*rstd*float64(c.gamma[j]) + float64(c.beta[j])
			norm[r*c.d+j] = n
			amax = max(amax, math.Abs(n))
		}
		s := float32(amax) / 448
		if s <= 0 {
			s = 1
		}
		scale[r] = s
		for j := range c.d {
			q[r*c.d+j] = e4m3Encode(float32(norm[r*c.d+j]) * (1 / s))
		}
	}
	return sum, norm, scale, q
}

// codesOff counts codes of got one E4M3 step from want (where float32 rounding of the LayerNorm
// decides) and fails on any further apart or of the other sign.
func codesOff(t *testing.T, what string, d int, got, want []uint8) int {
	t.Helper()
	off := 0
	for i := range want {
		if got[i] == want[i] {
			continue
		}
		if diff := int(got[i]&0x7f) - int(want[i]&0x7f); got[i]&0x80 != want[i]&0x80 || diff < -1 || diff > 1 {
			t.Fatalf("%s: code [%d][%d] %#x, want %#x", what, i/d, i%d, got[i], want[i])
		}
		off++
	}
	if off > len(want)/100 {
		t.Errorf("%s: %d of %d codes one step off (want at most 1%%)", what, off, len(want))
	}
	return off
}

// TestCustomOpsSkipLayerNormE4M3CPU checks the CPU form of SkipLayerNormE4M3 (the CUDA op's
// reference on the GPU) against a float64 SkipLayerNormalization + QuantizeE4M3, with and without
// bias and at a non-default epsilon: the sum to float32 rounding, scales to 1e-6, codes exact but
// for a few one step off, decoded codes within E4M3's half step of the LayerNorm; and that a skip
// of another shape is refused.
func TestCustomOpsSkipLayerNormE4M3CPU(t *testing.T) {
	lib := buildCPUOps(t)
	if err := acquireEnv(LibraryPath()); err != nil {
		t.Fatal(err)
	}
	defer releaseEnv()
	c := newSkipLnCase(7, 96)
	rows, d := int64(c.rows), int64(c.d)
	for _, tc := range []struct {
		bias bool
		eps  float32
	}{{true, 1e-5}, {false, 1e-5}, {true, 0.5}} {
		sess := openSkipLn(t, lib, skipLnModel(1, "SkipLayerNormE4M3F32", tc.eps, tc.bias), Device{Kind: "cpu"}, tc.bias)
		in := tensors(tensorOf(c.x, rows, d), tensorOf(c.skip, rows, d), tensorOf(c.gamma, d), tensorOf(c.beta, d))
		if tc.bias {
			in = append(in, tensorOf(c.bias, d))
		}
		q, scale, sum := make([]uint8, c.rows*c.d), make([]float32, c.rows), make([]float32, c.rows*c.d)
		if err := sess.run(context.Background(), in, tensors(tensorOf(q, rows, d), tensorOf(scale, rows), tensorOf(sum, rows, d))); err != nil {
			t.Fatalf("%+v: %v", tc, err)
		}
		wsum, norm, wscale, wq := c.reference(tc.bias, float64(tc.eps))
		for i, w := range wsum {
			if math.Abs(float64(sum[i])-w) > 1e-6*(1+math.Abs(w)) {
				t.Fatalf("%+v: sum[%d][%d] = %g, want %g", tc, i/c.d, i%c.d, sum[i], w)
			}
		}
		for r := range c.rows {
			if math.Abs(float64(scale[r]-wscale[r])) > 1e-6*float64(wscale[r]) {
				t.Fatalf("%+v: row %d scale %g, want %g", tc, r, scale[r], wscale[r])
			}
		}
		codesOff(t, "cpu", c.d, q, wq)
		for i, n := range norm {
			if got := e4m3Decode(q[i]) * float64(scale[i/c.d]); math.Abs(got-n) > math.Abs(n)*(1.0/16+1e-5)+float64(scale[i/c.d])*0x1p-9 {
				t.Fatalf("%+v: [%d][%d] decodes to %g, LayerNorm %g", tc, i/c.d, i%c.d, got, n)
			}
		}
	}
	sess := openSkipLn(t, lib, skipLnModel(1, "SkipLayerNormE4M3F32", 1e-5, false), Device{Kind: "cpu"}, false)
	q, scale, sum := make([]uint8, c.rows*c.d), make([]float32, c.rows), make([]float32, c.rows*c.d)
	err := sess.run(context.Background(), tensors(tensorOf(c.x, rows, d), tensorOf(c.skip[:c.d*(c.rows-1)], rows-1, d),
		tensorOf(c.gamma, d), tensorOf(c.beta, d)), tensors(tensorOf(q, rows, d), tensorOf(scale, rows), tensorOf(sum, rows, d)))
	if err == nil || !strings.Contains(err.Error(), "skip must have x's shape") {
		t.Errorf("skip of %d rows for %d: err = %v, want the op's refusal", c.rows-1, c.rows, err)
	}
}

// TestGPUSkipLayerNormE4M3 runs the CUDA SkipLayerNormE4M3 on ESM-2 650M's and 3B's widths (and a
// narrow one, odd row counts) and holds it to the CPU op on the same float16 values: the sum is the
// CPU's float32 sum rounded to float16 (within half a step), scales within 1e-5 (the block sums in
// another order), codes equal but for a few one step apart. Needs SEQEMBED_GPU_TESTS=1 and
// SEQEMBED_CUSTOM_OPS pointing at the CUDA build of the library.
func TestGPUSkipLayerNormE4M3(t *testing.T) {
	cpuLib, cudaLib := gpuOpLibs(t)
	for _, shape := range [][2]int{{333, 1280}, {77, 2560}, {1, 1280}, {12, 32}} {
		c := newSkipLnCase(shape[0], shape[1])
		rows, d := int64(c.rows), int64(c.d)
		for _, bias := range []bool{true, false} {
			cpu := openSkipLn(t, cpuLib, skipLnModel(1, "SkipLayerNormE4M3F32", 1e-5, bias), Device{Kind: "cpu"}, bias)
			gpu := openSkipLn(t, cudaLib, skipLnModel(10, "SkipLayerNormE4M3", 1e-5, bias), Device{Kind: "cuda"}, bias)
			in := tensors(tensorOf(c.x, rows, d), tensorOf(c.skip, rows, d), tensorOf(c.gamma, d), tensorOf(c.beta, d))
			in16 := tensors(tensorOf(halves(c.x), rows, d), tensorOf(halves(c.skip), rows, d), tensorOf(halves(c.gamma), d),
				tensorOf(halves(c.beta), d))
			if bias {
				in = append(in, tensorOf(c.bias, d))
				in16 = append(in16, tensorOf(halves(c.bias), d))
			}
			q, scale, sum := make([]uint8, c.rows*c.d), make([]float32, c.rows), make([]float32, c.rows*c.d)
			if err := cpu.run(context.Background(), in, tensors(tensorOf(q, rows, d), tensorOf(scale, rows), tensorOf(sum, rows, d))); err != nil {
				t.Fatal(err)
			}
			gq, gscale, gsum := make([]uint8, c.rows*c.d), make([]float32, c.rows), make([]uint16, c.rows*c.d)
			if err := gpu.run(context.Background(), in16, tensors(tensorOf(gq, rows, d), tensorOf(gscale, rows), tensorOf(gsum, rows, d))); err != nil {
				t.Fatalf("shape %v bias %v: %v", shape, bias, err)
			}
			for i, v := range sum {
				if g := half.ToFloat32(gsum[i]); math.Abs(float64(g-v)) > math.Abs(float64(v))*0x1p-11+0x1p-24 {
					t.Fatalf("shape %v bias %v: sum[%d][%d] = %g on the GPU, want the CPU's %g in float16", shape, bias,
						i/c.d, i%c.d, g, v)
				}
			}
			worst := 0.0
			for r := range c.rows {
				worst = max(worst, math.Abs(float64(gscale[r]-scale[r]))/float64(scale[r]))
			}
			if worst > 1e-5 {
				t.Fatalf("shape %v bias %v: scales differ by %g relative", shape, bias, worst)
			}
			off := codesOff(t, "gpu vs cpu", c.d, gq, q)
			t.Logf("shape %v bias %v: scales within %.1e, %d of %d codes one step apart", shape, bias, worst, off, len(q))
		}
	}
}
