package esm2graph

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/seqembed/seqembed/esm2graph/onnxpb"
	"github.com/seqembed/seqembed/internal/testutil"
)

// countOps counts a model's nodes by op type.
func countOps(m *onnxpb.Model) map[string]int {
	c := map[string]int{}
	for _, n := range m.Graph.Nodes {
		c[n.OpType]++
	}
	return c
}

func initializer(t testing.TB, m *onnxpb.Model, name string) *onnxpb.Tensor {
	t.Helper()
	i := slices.IndexFunc(m.Graph.Initializers, func(x *onnxpb.Tensor) bool { return x.Name == name })
	if i < 0 {
		t.Fatalf("no initializer %s", name)
	}
	return m.Graph.Initializers[i]
}

func float64s(t testing.TB, x *onnxpb.Tensor) []float64 {
	t.Helper()
	v, err := x.Float64s()
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// buildTwin builds o's float32 CPU twin (Options.twin) with lib, the ops library's CPU build
// (testutil.CPUOps), beside it.
func buildTwin(t *testing.T, ck *Checkpoint, o Options, lib string) (string, Manifest) {
	t.Helper()
	o.twin = true
	dir, man := build(t, ck, o)
	data, err := os.ReadFile(lib)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, CustomOpsLibrary), data, 0o755); err != nil {
		t.Fatal(err)
	}
	return dir, man
}

// twinSetup is what the CPU twin tests share: the ops library's CPU build, the tiny checkpoint
// (seed 6) and the test sequences.
func twinSetup(t *testing.T) (lib string, ck *Checkpoint, seqs [][]int64) {
	t.Helper()
	requireORT(t)
	return testutil.CPUOps(t), load(t, writeHFDir(t, tinyConfig, randomWeights(tinyConfig, 6))), testSeqs()
}

// TestFastPathGraphs: FusedGELU, FP16Linear and CudnnAttention write tools/esm2_graph.py's graph
// for --fused-gelu, --fp16-linear and --cudnn-attention: the projections as ai.seqembed.Fp16Linear
// on the weights as stored ([out, in], q and k rows in the interleaved order: the MatMul graph's
// [in, out] weights transposed), fc1 with its bias and gelu 1 under FusedGELU (no BiasGelu),
// attention as RaggedAttention on the packed tokens with the head count, and the manifest saying
// the GELU is tanh's and counting the new ops.
func TestFastPathGraphs(t *testing.T) {
	ck := load(t, writeHFDir(t, tinyConfig, randomWeights(tinyConfig, 5)))
	L, D, F, H := tinyConfig.NumHiddenLayers, int64(tinyConfig.HiddenSize), int64(tinyConfig.IntermediateSize), tinyConfig.NumAttentionHeads
	base := Options{Attention: AttentionPacked, FP16: true, CustomOps: true}
	plainDir, _ := build(t, ck, base)
	plain := decodeModel(t, plainDir)
	cases := []struct {
		name              string
		gelu, lin, cudnn  bool
		fp16Linear, gelu1 int // Fp16Linear nodes, those with gelu 1
		matMul, biasGelu  int
	}{
		{"fused gelu", true, false, false, L, L, 5 * L, 0},
		{"fp16 linear", false, true, false, 6 * L, 0, 0, L},
		{"all three", true, true, true, 6 * L, L, 0, 0},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			o := base
			o.FusedGELU, o.FP16Linear, o.CudnnAttention = c.gelu, c.lin, c.cudnn
			dir, man := build(t, ck, o)
			m := decodeModel(t, dir)
			ops := countOps(m)
			attn, packedAttn := 0, L
			if c.cudnn {
				attn, packedAttn = L, 0
			}
			if ops["Fp16Linear"] != c.fp16Linear || ops["MatMul"] != c.matMul || ops["BiasGelu"] != c.biasGelu ||
				ops["RaggedAttention"] != attn || ops["PackedMultiHeadAttention"] != packedAttn || ops["BiasRotary"] != 2*L {
				t.Fatalf("ops %v", ops)
			}
			gelu1 := 0
			for _, n := range m.Graph.Nodes {
				switch n.OpType {
				case "Fp16Linear":
					if n.Domain != domainSeqembed {
						t.Errorf("%s in domain %q", n.Name, n.Domain)
					}
					g := attr(n, "gelu")
					if g == int64(1) {
						gelu1++
						if len(n.Inputs) != 3 || n.Inputs[2] == "" {
							t.Errorf("%s (gelu 1) has no bias: %v", n.Name, n.Inputs)
						}
					} else if g != int64(0) || len(n.Inputs) != 2 {
						t.Errorf("%s: gelu %v, inputs %v", n.Name, g, n.Inputs)
					}
				case "RaggedAttention":
					if attr(n, "num_heads") != int64(H) || len(n.Inputs) != 5 || n.Domain != domainSeqembed {
						t.Errorf("%+v", n)
					}
				}
			}
			if gelu1 != c.gelu1 {
				t.Errorf("%d Fp16Linear with gelu 1, want %d", gelu1, c.gelu1)
			}
			// Weights: Fp16Linear's [out, in] is the MatMul graph's [in, out] transposed.
			type shaped struct {
				name    string
				in, out int64
			}
			check := []shaped{{"l0_w1", D, F}, {"l1_w1", D, F}}
			if c.lin {
				check = append(check, shaped{"l0_wq", D, D}, shaped{"l0_wk", D, D}, shaped{"l0_wv", D, D}, shaped{"l1_wo", D, D}, shaped{"l1_w2", F, D})
			}
			for _, w := range check {
				got, want := initializer(t, m, w.name), initializer(t, plain, w.name)
				if !slices.Equal(got.Dims, []int64{w.out, w.in}) || !slices.Equal(want.Dims, []int64{w.in, w.out}) {
					t.Fatalf("%s: dims %v, MatMul graph's %v", w.name, got.Dims, want.Dims)
				}
				gv, wv := float64s(t, got), float64s(t, want)
				for j := range w.out {
					for i := range w.in {
						if gv[j*w.in+i] != wv[i*w.out+j] {
							t.Fatalf("%s[%d, %d] = %g, MatMul graph's [%d, %d] %g", w.name, j, i, gv[j*w.in+i], i, j, wv[i*w.out+j])
						}
					}
				}
			}
			if c.gelu {
				if got, want := float64s(t, initializer(t, m, "l0_b1")), float64s(t, initializer(t, plain, "l0_b1")); !slices.Equal(got, want) {
					t.Error("l0_b1 differs from the BiasGelu graph's")
				}
			}
			wantGelu := ""
			if c.gelu {
				wantGelu = "tanh"
			}
			if man.FFNGelu != wantGelu || !slices.Equal(man.Requires, []string{"cuda"}) || man.CustomOps != CustomOpsLibrary {
				t.Errorf("manifest ffn_gelu %q requires %v custom_ops %q", man.FFNGelu, man.Requires, man.CustomOps)
			}
			counted := map[string]int{}
			for _, x := range man.Optimized {
				counted[x.Op] = x.N
			}
			if counted["Fp16Linear"] != c.fp16Linear || counted["RaggedAttention"] != attn {
				t.Errorf("manifest optimized %v", man.Optimized)
			}
		})
	}
}

// TestFastPathOptionErrors: the fast-path options and precision fp8 need seqembed's ops, cuDNN
// attention the packed form, the FP8 options precision fp8; an unknown precision or FP8
// projection set is refused.
func TestFastPathOptionErrors(t *testing.T) {
	ck := load(t, writeHFDir(t, tinyConfig, randomWeights(tinyConfig, 5)))
	for _, o := range []Options{
		{Attention: AttentionPacked, FP16: true, FusedGELU: true},
		{Attention: AttentionPacked, FP16: true, FP16Linear: true},
		{Attention: AttentionPacked, FP16: true, CudnnAttention: true},
		{Attention: AttentionMHA, FP16: true, CustomOps: true, CudnnAttention: true},
		{Attention: AttentionPacked, FP16: true, Precision: PrecisionFP8},
		{Attention: AttentionPacked, FP16: true, CustomOps: true, FP8Projections: FP8FFN},
		{Attention: AttentionPacked, FP16: true, CustomOps: true, FusedLNQuant: true},
		{Attention: AttentionPacked, FP16: true, CustomOps: true, Precision: "int4"},
		{Attention: AttentionPacked, FP16: true, CustomOps: true, Precision: PrecisionFP8, FP8Projections: "some"},
	} {
		_, err := Build(t.Context(), ck, filepath.Join(t.TempDir(), "m"), o)
		if !errors.Is(err, ErrOption) {
			t.Errorf("%+v: err = %v, want ErrOption", o, err)
		}
	}
}

// TestFastPathCPUTwin: the float32 CPU twin of the mha graph with FusedGELU and FP16Linear (the
// ops' F32 forms, BiasRotaryF32 and Fp16LinearF32, from the library's CPU build) embeds within
// 1e-4 of the float64 reference with tanh's GELU: the projections read their [out, in] weights
// the right way round, q and k in the interleaved order, fc1's bias and GELU in its epilogue.
// Without FusedGELU the same twin matches the erf reference.
func TestFastPathCPUTwin(t *testing.T) {
	lib, ck, seqs := twinSetup(t)
	for _, c := range []struct {
		name string
		gelu bool
	}{{"fp16 linear + fused gelu", true}, {"fp16 linear", false}} {
		t.Run(c.name, func(t *testing.T) {
			dir, man := buildTwin(t, ck, Options{Attention: AttentionMHA, Device: DeviceCPU, CustomOps: true, FP16Linear: true, FusedGELU: c.gelu}, lib)
			if len(man.Requires) != 0 || man.CustomOps != CustomOpsLibrary {
				t.Fatalf("twin manifest requires %v custom_ops %q", man.Requires, man.CustomOps)
			}
			ops := countOps(decodeModel(t, dir))
			if ops["Fp16LinearF32"] != 6*tinyConfig.NumHiddenLayers || ops["BiasRotaryF32"] != 2*tinyConfig.NumHiddenLayers || ops["MatMul"] != 0 {
				t.Fatalf("twin ops %v", ops)
			}
			got := embed(t, runner(t, dir), seqs, 128)
			var worst, otherGELU float64
			for i, s := range seqs {
				worst = max(worst, maxAbs(got[i], referenceWith(t, ck, s, false, c.gelu)))
				otherGELU = max(otherGELU, maxAbs(got[i], referenceWith(t, ck, s, false, !c.gelu)))
			}
			if worst > 1e-4 {
				t.Errorf("twin vs float64 reference: max abs %.3g (limit 1e-4)", worst)
			}
			if otherGELU < 2e-4 {
				t.Errorf("the other GELU's reference is only %.3g off: the weights do not tell the two GELUs apart", otherGELU)
			}
			t.Logf("twin vs float64 reference max abs %.3g (vs the other GELU's reference %.3g)", worst, otherGELU)
		})
	}
}
