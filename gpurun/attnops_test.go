package gpurun

import (
	"context"
	"math"
	"os"
	"strings"
	"testing"

	"github.com/seqembed/seqembed/internal/half"
)

// attnModel is one RaggedAttention node (op: RaggedAttentionF32 or RaggedAttention) o = attention
// of q, k, v over the sequences cu_seqlens marks, heads num_heads; float is the ONNX element type of
// q, k, v and o (1 float32, 10 float16); scale 0 leaves the attribute out (1/sqrt(head size)).
func attnModel(float int64, op string, heads int64, scale float32) []byte {
	const int32 = 6
	node := pbString(nil, 1, "q")
	for _, in := range []string{"k", "v", "token_offset", "cu_seqlens"} {
		node = pbString(node, 1, in)
	}
	node = pbString(pbString(pbString(pbString(node, 2, "o"), 3, "attn"), 4, op), 7, "ai.seqembed")
	node = pbMessage(node, 5, intAttr("num_heads", heads))
	if scale != 0 {
		node = pbMessage(node, 5, floatAttr("scale", scale))
	}
	graph := pbString(pbMessage(nil, 1, node), 2, "attn-test")
	for _, in := range []string{"q", "k", "v"} {
		graph = pbMessage(graph, 11, valueInfo(in, float, "tokens", "dim"))
	}
	graph = pbMessage(graph, 11, valueInfo("token_offset", int32, "batch", "seq"))
	graph = pbMessage(graph, 11, valueInfo("cu_seqlens", int32, "batch1"))
	graph = pbMessage(graph, 12, valueInfo("o", float, "tokens", "dim"))
	return opTestModel(graph)
}

// attnCase is a packed batch: sequences of the given lengths, heads × head, random-looking q, k, v
// rounded to float16 (so the CPU and CUDA ops see the same values).
type attnCase struct {
	lens          []int
	heads, head   int
	q, k, v       []float32
	cu            []int32
	tokens, width int
}

func newAttnCase(lens []int, heads, head int) attnCase {
	c := attnCase{lens: lens, heads: heads, head: head, cu: []int32{0}}
	for _, n := range lens {
		c.tokens += n
		c.cu = append(c.cu, int32(c.tokens))
		c.width = max(c.width, n)
	}
	d := heads * head
	c.q, c.k, c.v = make([]float32, c.tokens*d), make([]float32, c.tokens*d), make([]float32, c.tokens*d)
	for i := range c.q {
		c.q[i] = toHalf(1.5 * math.Sin(float64(i)*0.731+0.3))
		c.k[i] = toHalf(1.5 * math.Cos(float64(i)*0.377+1.1))
		c.v[i] = toHalf(2 * math.Sin(float64(i)*0.193+2.3))
	}
	return c
}

// reference is attention in float64: per sequence, head and query row, softmax(scale q·k) v.
func (c attnCase) reference(scale float64) []float64 {
	d := c.heads * c.head
	out := make([]float64, c.tokens*d)
	for b, n := range c.lens {
		lo := int(c.cu[b])
		for h := range c.heads {
			for t := lo; t < lo+n; t++ {
				s, mx, sum := make([]float64, n), math.Inf(-1), 0.0
				for j := range n {
					dot := 0.0
					for e := range c.head {
						dot += float64(c.q[t*d+h*c.head+e]) * float64(c.k[(lo+j)*d+h*c.head+e])
					}
					s[j] = dot * scale
					mx = max(mx, s[j])
				}
				for j := range n {
					s[j] = math.Exp(s[j] - mx)
					sum += s[j]
				}
				for j := range n {
					for e := range c.head {
						out[t*d+h*c.head+e] += s[j] / sum * float64(c.v[(lo+j)*d+h*c.head+e])
					}
				}
			}
		}
	}
	return out
}

// run feeds c (float32, or float16 when f16) through sess and returns o as float32.
func (c attnCase) run(t *testing.T, sess *session, f16 bool, cu []int32, width int) ([]float32, error) {
	t.Helper()
	rows, d := int64(c.tokens), int64(c.heads*c.head)
	offsets := make([]int32, (len(cu)-1)*width) // token_offset: the op reads only its shape [B, S]
	tail := tensors(tensorOf(offsets, int64(len(cu)-1), int64(width)), tensorOf(cu, int64(len(cu))))
	if !f16 {
		o := make([]float32, c.tokens*c.heads*c.head)
		err := sess.run(context.Background(), append(tensors(tensorOf(c.q, rows, d), tensorOf(c.k, rows, d), tensorOf(c.v, rows, d)), tail...),
			tensors(tensorOf(o, rows, d)))
		return o, err
	}
	o16 := make([]uint16, c.tokens*c.heads*c.head)
	err := sess.run(context.Background(), append(tensors(tensorOf(halves(c.q), rows, d), tensorOf(halves(c.k), rows, d),
		tensorOf(halves(c.v), rows, d)), tail...), tensors(tensorOf(o16, rows, d)))
	o := make([]float32, len(o16))
	for i, h := range o16 {
		o[i] = half.ToFloat32(h)
	}
	return o, err
}

// TestCustomOpsRaggedAttentionCPU holds RaggedAttentionF32 to attention in float64 over packed
// sequences of several lengths (one token, ESM-2's head size 64, a sequence alone), with the default
// and an explicit scale, and checks that bad cu_seqlens and attributes are refused with the op's
// errors rather than read out of bounds.
func TestCustomOpsRaggedAttentionCPU(t *testing.T) {
	lib := buildCPUOps(t)
	if err := acquireEnv(LibraryPath()); err != nil {
		t.Fatal(err)
	}
	defer releaseEnv()
	io := []string{"q", "k", "v", "token_offset", "cu_seqlens"}
	for _, tc := range []struct {
		lens        []int
		heads, head int
		scale       float32
	}{
		{[]int{5, 1, 17, 9}, 2, 8, 0}, {[]int{33, 12}, 4, 64, 0}, {[]int{7}, 3, 4, 0.5},
	} {
		c := newAttnCase(tc.lens, tc.heads, tc.head)
		sess := openOpTest(t, lib, "attn.onnx", attnModel(1, "RaggedAttentionF32", int64(tc.heads), tc.scale), Device{Kind: "cpu"}, io, []string{"o"})
		got, err := c.run(t, sess, false, c.cu, c.width)
		if err != nil {
			t.Fatalf("%v: %v", tc.lens, err)
		}
		scale := 1 / math.Sqrt(float64(tc.head))
		if tc.scale != 0 {
			scale = float64(tc.scale)
		}
		worst := 0.0
		for i, w := range c.reference(scale) {
			worst = max(worst, math.Abs(float64(got[i])-w))
		}
		if worst > 1e-5 {
			t.Fatalf("lens %v heads %d × %d: worst |Δ| %.3g from float64", tc.lens, tc.heads, tc.head, worst)
		}
		t.Logf("lens %v heads %d × %d: worst |Δ| %.2g from float64", tc.lens, tc.heads, tc.head, worst)
	}

	c := newAttnCase([]int{5, 1, 17, 9}, 2, 8)
	sess := openOpTest(t, lib, "attn.onnx", attnModel(1, "RaggedAttentionF32", 2, 0), Device{Kind: "cpu"}, io, []string{"o"})
	for _, bad := range []struct {
		cu    []int32
		width int
		want  string
	}{
		{[]int32{0, 5, 6, 23, 31}, 17, "end at the number of rows"},
		{[]int32{1, 5, 6, 23, 32}, 17, "start at 0"},
		{[]int32{0, 6, 5, 23, 32}, 17, "must not decrease"},
		{[]int32{0, 5, 6, 23, 32}, 16, "exceed token_offset's S"},
	} {
		if _, err := c.run(t, sess, false, bad.cu, bad.width); err == nil || !strings.Contains(err.Error(), bad.want) {
			t.Errorf("cu_seqlens %v, S %d: err = %v, want %q", bad.cu, bad.width, err, bad.want)
		}
	}
	three := openOpTest(t, lib, "attn3.onnx", attnModel(1, "RaggedAttentionF32", 3, 0), Device{Kind: "cpu"}, io, []string{"o"})
	if _, err := c.run(t, three, false, c.cu, c.width); err == nil || !strings.Contains(err.Error(), "divide the last dimension") {
		t.Errorf("3 heads over 16 columns: err = %v, want the op's num_heads error", err)
	}
}

// TestGPURaggedAttention (SEQEMBED_RAGGED_ATTENTION=1, with SEQEMBED_CUSTOM_OPS a library built with
// SEQEMBED_OPS_CUDNN): the cuDNN op against its CPU twin on the same float16 values, at ESM-2's head
// size 64 (650M's 20 heads and 3B's 40), sequences up to 1,026 tokens, batches whose row count is
// not a multiple of 8 (rows padded with empty sequences), and one width S seen with 3, then 11, then
// 2 rows (the op's graph for S grows to 16 rows, then serves 2).
func TestGPURaggedAttention(t *testing.T) {
	cpuLib, cudaLib := gpuOpLibs(t)
	if os.Getenv("SEQEMBED_RAGGED_ATTENTION") != "1" {
		t.Skip("set SEQEMBED_RAGGED_ATTENTION=1 with a library built with SEQEMBED_OPS_CUDNN")
	}
	io := []string{"q", "k", "v", "token_offset", "cu_seqlens"}
	for _, tc := range []struct {
		lens  []int
		heads int
	}{
		{[]int{1026, 700, 3, 1, 250}, 20}, {[]int{64, 64, 64, 64, 64, 64, 64, 64}, 20}, {[]int{300, 129, 77}, 40},
		{[]int{300, 5, 280, 17, 64, 99, 300, 1, 2, 150, 33}, 40}, // S 300 again with more rows: the graph is rebuilt
		{[]int{300, 200}, 40}, // and fewer rows reuse the larger one
	} {
		c := newAttnCase(tc.lens, tc.heads, 64)
		cpu := openOpTest(t, cpuLib, "attn_f32.onnx", attnModel(1, "RaggedAttentionF32", int64(tc.heads), 0), Device{Kind: "cpu"}, io, []string{"o"})
		gpu := openOpTest(t, cudaLib, "attn.onnx", attnModel(10, "RaggedAttention", int64(tc.heads), 0), Device{Kind: "cuda"}, io, []string{"o"})
		want, err := c.run(t, cpu, false, c.cu, c.width)
		if err != nil {
			t.Fatal(err)
		}
		got, err := c.run(t, gpu, true, c.cu, c.width)
		if err != nil {
			t.Fatalf("%v heads %d: %v", tc.lens, tc.heads, err)
		}
		worst, omax, vmax := 0.0, 0.0, 0.0
		for i, w := range want {
			worst = max(worst, math.Abs(float64(got[i]-w)))
			omax = max(omax, math.Abs(float64(w)))
			vmax = max(vmax, math.Abs(float64(c.v[i])))
		}
		// cuDNN rounds the probabilities to float16 before P·V (each off by up to 2^-11 of itself, so
		// o by up to 2^-11·Σp|v| <= 2^-11·max|v|) and rounds o to float16 (2^-11·|o|); twice that for
		// the exponent and accumulation in float32. The bound scales with |v|, not |o|: averaging many
		// rows makes |o| small while the probability rounding stays relative to v (8×64 rows: |o| 0.06,
		// |v| 2). A wrong offset, head or length is off by ~|o|, far past it.
		bound := 2 * 0x1p-11 * (vmax + omax)
		if worst > bound {
			t.Fatalf("%v heads %d: worst |Δ| %.3g over the bound %.3g (max |o| %.3g, max |v| %.3g)", tc.lens, tc.heads, worst, bound, omax, vmax)
		}
		t.Logf("%v heads %d: worst |Δ| %.3g, %.2f of the bound (max |o| %.3g, max |v| %.3g)", tc.lens, tc.heads, worst, worst/bound, omax, vmax)
	}
}
