package gpurun

import (
	"context"
	"math"
	"strings"
	"testing"

	"github.com/apache/arrow-go/v18/arrow/float16"
)

// fp8E4M3Model is QuantizeE4M3(x) -> (q, scale); Fp8LinearE4M3(q, scale, w, w_scale[, bias]) with
// attributes gelu, y_scale and fast_accum 1 -> (yq, ys), with q, scale, yq and ys as graph outputs.
// float is the ONNX element type of x and bias (1 float32 for the CPU ops, 10 float16 for CUDA).
func fp8E4M3Model(float int64, quantOp, linearOp string, gelu int64, yScale float32, bias bool) []byte {
	const uint8T = 2
	quant := pbString(pbString(pbString(nil, 1, "x"), 2, "q"), 2, "scale")
	quant = pbString(pbString(pbString(quant, 3, "quantize"), 4, quantOp), 7, "ai.seqembed")
	lin := withBias(pbString(pbString(pbString(pbString(nil, 1, "q"), 1, "scale"), 1, "w"), 1, "w_scale"), bias)
	lin = pbString(pbString(pbString(pbString(pbString(lin, 2, "yq"), 2, "ys"), 3, "linear"), 4, linearOp), 7, "ai.seqembed")
	lin = pbMessage(pbMessage(pbMessage(lin, 5, intAttr("gelu", gelu)), 5, floatAttr("y_scale", yScale)), 5, intAttr("fast_accum", 1))
	graph := pbString(pbMessage(pbMessage(nil, 1, quant), 1, lin), 2, "fp8-e4m3-test")
	graph = pbMessage(graph, 11, valueInfo("x", float, "rows", "k"))
	graph = pbMessage(graph, 11, valueInfo("w", uint8T, "n", "k"))
	graph = pbMessage(graph, 11, valueInfo("w_scale", 1, "n"))
	if bias {
		graph = pbMessage(graph, 11, valueInfo("bias", float, "n"))
	}
	graph = pbMessage(graph, 12, valueInfo("q", uint8T, "rows", "k"))
	graph = pbMessage(graph, 12, valueInfo("scale", 1, "rows"))
	graph = pbMessage(graph, 12, valueInfo("yq", uint8T, "rows", "n"))
	graph = pbMessage(graph, 12, valueInfo("ys", 1, "rows"))
	return opTestModel(graph)
}

func openFP8E4M3(t *testing.T, lib string, model []byte, dev Device, bias bool) *session {
	t.Helper()
	in := []string{"x", "w", "w_scale"}
	if bias {
		in = append(in, "bias")
	}
	return openOpTest(t, lib, "fp8e4m3.onnx", model, dev, in, []string{"q", "scale", "yq", "ys"})
}

// e4m3Steps is how many E4M3 steps apart codes a and b are: 0 for equal values (+0 and -0 too),
// counting through zero when the signs differ.
func e4m3Steps(a, b uint8) int {
	if e4m3Decode(a) == e4m3Decode(b) {
		return 0
	}
	ma, mb := int(a&0x7f), int(b&0x7f)
	if a&0x80 == b&0x80 {
		return max(ma-mb, mb-ma)
	}
	return ma + mb
}

// e4m3Out is one Fp8LinearE4M3 run's outputs: the input codes and scales (QuantizeE4M3's) and the
// output codes and scales.
type e4m3Out struct {
	q, yq     []uint8
	scale, ys []float32
}

// runFP8E4M3 runs sess on x (float32 or float16 bits) and bias (nil: the bias input is absent).
func runFP8E4M3[T float32 | uint16](t *testing.T, sess *session, c fp8Case, x, bias []T) (e4m3Out, error) {
	t.Helper()
	rows, k, n := int64(c.rows), int64(c.k), int64(c.n)
	o := e4m3Out{q: make([]uint8, c.rows*c.k), yq: make([]uint8, c.rows*c.n), scale: make([]float32, c.rows), ys: make([]float32, c.rows)}
	in := tensors(tensorOf(x, rows, k), tensorOf(c.w, n, k), tensorOf(c.wScale, n))
	if bias != nil {
		in = append(in, tensorOf(bias, n))
	}
	err := sess.run(context.Background(), in, tensors(tensorOf(o.q, rows, k), tensorOf(o.scale, rows), tensorOf(o.yq, rows, n), tensorOf(o.ys, rows)))
	return o, err
}

// e4m3Reference is Fp8LinearE4M3's contract in float64 from the run's own input codes and scales:
// v = scale[r]·w_scale[n]·Σ dec(q)·dec(w) + bias[n], codes of (gelu ? GeluTanh(v) : v) / yScale.
func e4m3Reference(c fp8Case, o e4m3Out, bias []float32, gelu bool, yScale float32) []uint8 {
	want := make([]uint8, c.rows*c.n)
	for r := range c.rows {
		for n := range c.n {
			acc := 0.0
			for j := range c.k {
				acc += e4m3Decode(o.q[r*c.k+j]) * e4m3Decode(c.w[n*c.k+j])
			}
			v := float64(o.scale[r])*float64(c.wScale[n])*acc + float64(bias[n])
			if gelu {
				v = geluTanh(v)
			}
			want[r*c.n+n] = e4m3Encode(float32(v / float64(yScale)))
		}
	}
	return want
}

// TestCustomOpsFp8LinearE4M3CPU checks the CPU form of Fp8LinearE4M3 (the CUDA op's reference on
// the GPU) against its contract in float64, with and without GELU and bias: every code within one
// E4M3 step (float32 against float64 arithmetic; at most 1 % off), the values past 448·y_scale
// saturated to ±448, every output scale y_scale; and the refusal of a missing y_scale.
func TestCustomOpsFp8LinearE4M3CPU(t *testing.T) {
	lib := buildCPUOps(t)
	if err := acquireEnv(LibraryPath()); err != nil {
		t.Fatal(err)
	}
	defer releaseEnv()
	c := newFP8Case(12, 32, 24)
	for _, tc := range []struct {
		gelu, bias bool
		yScale     float32
	}{{true, true, 0.004}, {false, false, 0.002}, {true, false, 0.5}} {
		bias := make([]float32, c.n)
		var biasIn []float32
		if tc.bias {
			bias, biasIn = c.bias, c.bias
		}
		sess := openFP8E4M3(t, lib, fp8E4M3Model(1, "QuantizeE4M3F32", "Fp8LinearE4M3F32", map[bool]int64{false: 0, true: 1}[tc.gelu], tc.yScale, tc.bias), Device{Kind: "cpu"}, tc.bias)
		o, err := runFP8E4M3(t, sess, c, c.x, biasIn)
		if err != nil {
			t.Fatalf("gelu %v bias %v: %v", tc.gelu, tc.bias, err)
		}
		want := e4m3Reference(c, o, bias, tc.gelu, tc.yScale)
		off, saturated := 0, 0
		for i := range want {
			if s := e4m3Steps(o.yq[i], want[i]); s > 1 {
				t.Fatalf("gelu %v bias %v: y[%d][%d] code %#x, want %#x", tc.gelu, tc.bias, i/c.n, i%c.n, o.yq[i], want[i])
			} else if s == 1 {
				off++
			}
			if want[i]&0x7f == 0x7e {
				saturated++
				if o.yq[i] != want[i] {
					t.Errorf("gelu %v: y[%d][%d] saturates: code %#x, want %#x", tc.gelu, i/c.n, i%c.n, o.yq[i], want[i])
				}
			}
		}
		if off > len(want)/100 {
			t.Errorf("gelu %v bias %v: %d of %d codes one step off (want at most 1%%)", tc.gelu, tc.bias, off, len(want))
		}
		if tc.yScale < 0.01 && saturated == 0 {
			t.Errorf("gelu %v: y_scale %g saturates nothing: the case does not test saturation", tc.gelu, tc.yScale)
		}
		for r, s := range o.ys {
			if s != tc.yScale {
				t.Fatalf("output scale [%d] = %g, want y_scale %g", r, s, tc.yScale)
			}
		}
	}
	sess := openFP8E4M3(t, lib, fp8E4M3Model(1, "QuantizeE4M3F32", "Fp8LinearE4M3F32", 1, 0, true), Device{Kind: "cpu"}, true)
	if _, err := runFP8E4M3(t, sess, c, c.x, c.bias); err == nil || !strings.Contains(err.Error(), "y_scale") {
		t.Fatalf("y_scale 0: err = %v, want the op's refusal naming y_scale", err)
	}
}

// TestGPUFp8LinearE4M3 runs the CUDA Fp8LinearE4M3 (cuBLASLt FP8 GEMM, bias + GELU epilogue, E4M3
// output at a per-tensor D scale) at ESM-2 650M's and 3B's fc1 shapes and holds it to the CPU op
// on the same float16 values: every code within one E4M3 step of the CPU's (cuBLASLt's GELU and
// accumulation order against the CPU's float32 loop), at most 5 % of them one step off, every
// output scale y_scale. y_scale puts the largest |GELU(v)| of the case at 420 (below saturation).
// Needs SEQEMBED_GPU_TESTS=1, a GPU with FP8 tensor cores and SEQEMBED_CUSTOM_OPS.
func TestGPUFp8LinearE4M3(t *testing.T) {
	cpuLib, cudaLib := gpuOpLibs(t)
	for _, shape := range [][3]int{{333, 1280, 5120}, {77, 2560, 10240}, {12, 32, 32}} {
		c := newFP8Case(shape[0], shape[1], shape[2])
		x16, b16 := halves(c.x), halves(c.bias)
		for i := range c.x {
			c.x[i] = float16.FromBits(x16[i]).Float32()
		}
		for i := range c.bias {
			c.bias[i] = float16.FromBits(b16[i]).Float32()
		}
		// The largest |GELU(v)|, from a CPU run of the plain Fp8Linear.
		plain := openFP8(t, cpuLib, fp8Model(1, "QuantizeE4M3F32", "Fp8LinearF32", 0, true), Device{Kind: "cpu"}, true)
		rows, k, n := int64(c.rows), int64(c.k), int64(c.n)
		q, s, y := make([]uint8, c.rows*c.k), make([]float32, c.rows), make([]float32, c.rows*c.n)
		if err := plain.run(context.Background(), tensors(tensorOf(c.x, rows, k), tensorOf(c.w, n, k), tensorOf(c.wScale, n), tensorOf(c.bias, n)),
			tensors(tensorOf(q, rows, k), tensorOf(s, rows), tensorOf(y, rows, n))); err != nil {
			t.Fatal(err)
		}
		amax := 0.0
		for _, v := range y {
			amax = max(amax, math.Abs(geluTanh(float64(v))))
		}
		yScale := float32(amax / 420)
		cpu := openFP8E4M3(t, cpuLib, fp8E4M3Model(1, "QuantizeE4M3F32", "Fp8LinearE4M3F32", 1, yScale, true), Device{Kind: "cpu"}, true)
		gpu := openFP8E4M3(t, cudaLib, fp8E4M3Model(10, "QuantizeE4M3", "Fp8LinearE4M3", 1, yScale, true), Device{Kind: "cuda"}, true)
		want, err := runFP8E4M3(t, cpu, c, c.x, c.bias)
		if err != nil {
			t.Fatal(err)
		}
		got, err := runFP8E4M3(t, gpu, c, x16, b16)
		if err != nil {
			t.Fatalf("shape %v: %v", shape, err)
		}
		for i := range want.q {
			if got.q[i] != want.q[i] {
				t.Fatalf("shape %v: input code [%d][%d] %#x on the GPU, %#x on the CPU", shape, i/c.k, i%c.k, got.q[i], want.q[i])
			}
		}
		off, nonzero := 0, 0
		for i := range want.yq {
			if st := e4m3Steps(got.yq[i], want.yq[i]); st > 1 {
				t.Fatalf("shape %v: y code [%d][%d] %#x (%g) on the GPU, %#x (%g) on the CPU", shape, i/c.n, i%c.n,
					got.yq[i], e4m3Decode(got.yq[i]), want.yq[i], e4m3Decode(want.yq[i]))
			} else if st == 1 {
				off++
			}
			if want.yq[i]&0x7f != 0 {
				nonzero++
			}
		}
		for r, v := range got.ys {
			if v != yScale {
				t.Fatalf("shape %v: output scale [%d] = %g on the GPU, want %g", shape, r, v, yScale)
			}
		}
		t.Logf("shape %v: y_scale %.4g, %d of %d codes one step apart (%d non-zero)", shape, yScale, off, len(want.yq), nonzero)
		if off > len(want.yq)/20 {
			t.Errorf("shape %v: %d of %d codes one step apart (limit 5 %%)", shape, off, len(want.yq))
		}
	}
}
