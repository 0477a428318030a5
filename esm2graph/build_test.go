package esm2graph

import (
	"errors"
	"math"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/seqembed/seqembed/esm2graph/onnxpb"
	"github.com/seqembed/seqembed/gpurun"
)

func decodeModel(t testing.TB, dir string) *onnxpb.Model {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(dir, "model.onnx"))
	if err != nil {
		t.Fatal(err)
	}
	m, err := onnxpb.Decode(data)
	if err != nil {
		t.Fatal(err)
	}
	if err := m.LoadExternal(dir); err != nil {
		t.Fatal(err)
	}
	return m
}

// TestMHAOnCPUMatchesReference: the float32 mha graph, both mask forms, built from a synthetic
// Hugging Face checkpoint, loads in ONNX Runtime on the CPU through gpurun (manifest and sha256
// checked), returns [batch, dim] embeddings, matches the pure-Go float64 ESM-2 forward pass
// within 1e-4 (a reference without rotary would miss by far more, so the check sees rotary
// errors), and is padding-invariant: a sequence alone and padded in a batch agree within 1e-5.
func TestMHAOnCPUMatchesReference(t *testing.T) {
	ck := load(t, writeHFDir(t, tinyConfig, randomWeights(tinyConfig, 1)))
	seqs := testSeqs()
	want := make([][]float64, len(seqs))
	var noRotaryGap float64
	for i, s := range seqs {
		want[i] = reference(t, ck, s, false)
		if len(s) > 3 {
			noRotaryGap = max(noRotaryGap, maxAbs(want[i], reference(t, ck, s, true)))
		}
	}
	if noRotaryGap < 1e-2 {
		t.Fatalf("reference without rotary differs by only %.3g: the weights do not exercise attention", noRotaryGap)
	}
	for _, form := range []string{MaskLengths, Mask2D} {
		t.Run(form, func(t *testing.T) {
			dir, man := build(t, ck, Options{Attention: AttentionMHA, MaskForm: form, Device: DeviceCPU})
			if man.Attention != "mha" || man.DType != "float32" || man.EmbeddingDim != 64 || len(man.Requires) != 0 {
				t.Fatalf("manifest %+v", man)
			}
			r := runner(t, dir)
			batch := embed(t, r, seqs, 128)
			var worst float64
			for i, s := range seqs {
				worst = max(worst, maxAbs(batch[i], want[i]))
				alone := embed(t, r, [][]int64{s}, 0)[0]
				if d := maxAbs(alone, batch[i]); d > 1e-5 {
					t.Errorf("sequence %d (%d tokens): alone vs padded to 128 in a batch of %d: max abs %.3g", i, len(s), len(seqs), d)
				}
			}
			if worst > 1e-4 {
				t.Errorf("ORT vs float64 reference: max abs %.3g (limit 1e-4)", worst)
			}
			t.Logf("mask form %s: ORT vs float64 reference max abs %.3g (no-rotary reference is %.3g off)", form, worst, noRotaryGap)
		})
	}
}

// TestGraphStructure: the node sequence, opsets, inputs/outputs and initializers of each graph
// form follow tools/esm2_graph.py (op types per block, optional outputs left unnamed, the
// value bias folded away, BiasRotary replacing Add + RotaryEmbedding, tiled or untiled rotary
// tables), and packed / custom-op manifests require CUDA, which gpurun enforces on the CPU.
func TestGraphStructure(t *testing.T) {
	ck := load(t, writeHFDir(t, tinyConfig, randomWeights(tinyConfig, 2)))
	cases := []struct {
		name          string
		opts          Options
		ops           map[string]int
		inits         []string
		cacheCols     int64
		cacheRows     int64
		requires, cpu bool
	}{
		{"mha", Options{Attention: AttentionMHA}, map[string]int{"MultiHeadAttention": 2, "RotaryEmbedding": 4, "Add": 4,
			"SkipLayerNormalization": 4, "BiasGelu": 2, "MatMul": 12, "LayerNormalization": 1}, []string{"position_start"}, 32, 1026, false, true},
		{"packed rows", Options{Attention: AttentionPacked}, map[string]int{"PackedMultiHeadAttention": 2, "RemovePadding": 1,
			"RestorePadding": 1, "RotaryEmbedding": 4}, []string{"flat", "start0"}, 32, 1026, true, false},
		{"packed sequence", Options{Attention: AttentionPacked, PackedLayout: LayoutSequence}, map[string]int{"PackedMultiHeadAttention": 2},
			[]string{"axes_0", "flat"}, 32, SequenceLayoutMaxTokens, true, false},
		{"mha custom fp16", Options{Attention: AttentionMHA, FP16: true, CustomOps: true}, map[string]int{"BiasRotary": 4, "Add": 0,
			"RotaryEmbedding": 0}, []string{"position_start"}, 8, 1026, true, false},
		{"packed custom fp16", Options{Attention: AttentionPacked, FP16: true, CustomOps: true}, map[string]int{"BiasRotary": 4,
			"PackedMultiHeadAttention": 2}, nil, 8, 1026, true, false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			dir, man := build(t, ck, c.opts)
			m := decodeModel(t, dir)
			if m.IRVersion != 8 || m.ProducerName != "seqembed esm2graph" || m.Graph.Name != "esm2-"+man.Attention {
				t.Errorf("ir %d producer %q graph %q", m.IRVersion, m.ProducerName, m.Graph.Name)
			}
			wantOpsets := []onnxpb.OpsetID{{Domain: "", Version: 17}, {Domain: "com.microsoft", Version: 1}}
			if c.opts.CustomOps {
				wantOpsets = append(wantOpsets, onnxpb.OpsetID{Domain: "ai.seqembed", Version: 1})
			}
			if !slices.Equal(m.Opsets, wantOpsets) {
				t.Errorf("opsets %v, want %v", m.Opsets, wantOpsets)
			}
			counts := map[string]int{}
			produced := map[string]bool{"input_ids": true, "attention_mask": true}
			inits := map[string]*onnxpb.Tensor{}
			for _, it := range m.Graph.Initializers {
				inits[it.Name] = it
				produced[it.Name] = true
			}
			for _, n := range m.Graph.Nodes {
				counts[n.OpType]++
				for _, in := range n.Inputs {
					if in != "" && !produced[in] {
						t.Fatalf("node %s reads %s before it is produced", n.Name, in)
					}
				}
				for _, out := range n.Outputs {
					produced[out] = true
				}
				if n.OpType == "BiasRotary" && n.Domain != "ai.seqembed" {
					t.Errorf("BiasRotary in domain %q", n.Domain)
				}
			}
			for op, n := range c.ops {
				if counts[op] != n {
					t.Errorf("%d %s nodes, want %d (all: %v)", counts[op], op, n, counts)
				}
				if got := man.Optimized.Get(op); (op == "MatMul" || op == "Add" || n > 0 && op != "LayerNormalization") && got != n {
					t.Errorf("manifest optimized[%s] = %d, want %d", op, got, n)
				}
			}
			last := m.Graph.Nodes[len(m.Graph.Nodes)-1]
			if last.Name != "pool" || last.OpType != "Div" || last.Outputs[0] != "embedding" {
				t.Errorf("last node %+v", last)
			}
			for _, n := range m.Graph.Nodes {
				if n.OpType == "SkipLayerNormalization" && (n.Outputs[1] != "" || n.Outputs[2] != "") {
					t.Errorf("%s: optional outputs named: %v", n.Name, n.Outputs)
				}
			}
			for _, name := range append([]string{"word_embeddings", "rotary_cos", "rotary_sin", "l0_wq", "l1_bo", "final_ln_g", "cls_id"}, c.inits...) {
				if inits[name] == nil {
					t.Errorf("no initializer %s", name)
				}
			}
			if inits["l0_bv"] != nil {
				t.Error("value bias not folded")
			}
			cache := inits["rotary_cos"]
			if !slices.Equal(cache.Dims, []int64{c.cacheRows, c.cacheCols}) {
				t.Errorf("rotary cache %v, want [%d %d]", cache.Dims, c.cacheRows, c.cacheCols)
			}
			wantDT := onnxpb.Float
			if c.opts.FP16 {
				wantDT = onnxpb.Float16
			}
			if inits["l0_w1"].DataType != wantDT || inits["one_count"].DataType != onnxpb.Float || inits["cls_id"].DataType != onnxpb.Int64 {
				t.Errorf("initializer types: w1 %d one_count %d cls_id %d", inits["l0_w1"].DataType, inits["one_count"].DataType, inits["cls_id"].DataType)
			}
			if c.requires != slices.Equal(man.Requires, []string{"cuda"}) {
				t.Errorf("requires %v", man.Requires)
			}
			if (man.CustomOps != "") != c.opts.CustomOps {
				t.Errorf("custom_ops %q", man.CustomOps)
			}
			if !c.cpu && !c.opts.CustomOps { // custom-op manifests fail earlier: the library is absent
				requireORT(t)
				if _, err := gpurun.New(dir); !errors.Is(err, gpurun.ErrDevice) {
					t.Errorf("gpurun.New on the CPU: %v, want ErrDevice", err)
				}
			}
		})
	}
}

// TestFP16Weights: an fp16 graph's weights are its float32 twin's rounded to float16 (the
// conversion is the tested half.FromFloat64), q/k columns permuted alike; ORT's CPU kernels run
// the fp16 mha graph too, within float16 precision of the float64 reference (max abs < 5e-3,
// cosine > 0.9999).
func TestFP16Weights(t *testing.T) {
	ck := load(t, writeHFDir(t, tinyConfig, randomWeights(tinyConfig, 3)))
	d32, _ := build(t, ck, Options{Attention: AttentionMHA})
	d16, man := build(t, ck, Options{Attention: AttentionMHA, FP16: true})
	if man.DType != "float16" {
		t.Fatalf("dtype %s", man.DType)
	}
	m32, m16 := decodeModel(t, d32), decodeModel(t, d16)
	if len(m32.Graph.Initializers) != len(m16.Graph.Initializers) {
		t.Fatal("initializer counts differ")
	}
	for i, a := range m32.Graph.Initializers {
		b := m16.Graph.Initializers[i]
		if a.Name != b.Name || !slices.Equal(a.Dims, b.Dims) {
			t.Fatalf("initializer %d: %s %v vs %s %v", i, a.Name, a.Dims, b.Name, b.Dims)
		}
		va, err1 := a.Float64s()
		vb, err2 := b.Float64s()
		if err1 != nil || err2 != nil {
			t.Fatal(err1, err2)
		}
		for j := range va {
			if a.DataType == onnxpb.Float && b.DataType == onnxpb.Float16 {
				if rel := abs(va[j]-vb[j]) / max(abs(va[j]), 1e-4); rel > 1.0/1024 {
					t.Fatalf("%s[%d]: float32 %g, float16 %g", a.Name, j, va[j], vb[j])
				}
			} else if va[j] != vb[j] {
				t.Fatalf("%s[%d]: %g vs %g", a.Name, j, va[j], vb[j])
			}
		}
	}
	seqs := testSeqs()
	for i, got := range embed(t, runner(t, d16), seqs, 128) {
		want := reference(t, ck, seqs[i], false)
		var dot, na, nb float64
		for j := range want {
			dot, na, nb = dot+float64(got[j])*want[j], na+float64(got[j])*float64(got[j]), nb+want[j]*want[j]
		}
		if d, cos := maxAbs(got, want), dot/math.Sqrt(na*nb); d > 5e-3 || cos < 0.9999 {
			t.Errorf("fp16 sequence %d: max abs %.3g, cosine %.7f vs the float64 reference", i, d, cos)
		}
	}
}

func abs(x float64) float64 { return max(x, -x) }

// TestExternalData: with the inline limit at 0 every tensor of 991+ bytes goes to
// model.onnx.data at page-aligned offsets, small ones stay inline, the manifest's sha256 covers
// both files (gpurun verifies it), and ORT's output is the inline model's exactly. Rebuilding
// inline removes the stale .data file.
func TestExternalData(t *testing.T) {
	ck := load(t, writeHFDir(t, tinyConfig, randomWeights(tinyConfig, 4)))
	o, err := Options{Attention: AttentionMHA, Device: DeviceCPU}.resolve(ck)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	m := buildGraph(t.Context(), ck, o)
	old := maxInline
	maxInline = 0
	sum, err := writeModel(m, dir)
	maxInline = old
	if err != nil {
		t.Fatal(err)
	}
	man := manifest(ck, o, m, sum)
	writeJSON(t, filepath.Join(dir, "model.json"), man)
	dm := decodeModel(t, dir)
	var ext, inline int
	for _, it := range dm.Graph.Initializers {
		if it.External {
			ext++
			if it.Location != "model.onnx.data" || it.Offset%4096 != 0 || it.Length < externalThreshold {
				t.Errorf("%s: location %q offset %d length %d", it.Name, it.Location, it.Offset, it.Length)
			}
		} else {
			inline++
		}
	}
	if ext == 0 || inline == 0 {
		t.Fatalf("%d external, %d inline tensors", ext, inline)
	}
	seqs := testSeqs()
	got := embed(t, runner(t, dir), seqs, 0)
	ref, _ := build(t, ck, Options{Attention: AttentionMHA, Device: DeviceCPU})
	want := embed(t, runner(t, ref), seqs, 0)
	for i := range seqs {
		if d := maxAbs(got[i], want[i]); d != 0 {
			t.Errorf("sequence %d: external vs inline model differ by %g", i, d)
		}
	}
	// Rebuild inline into the same directory: the stale .data goes.
	if _, err := Build(t.Context(), ck, dir, Options{Attention: AttentionMHA}); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, "model.onnx.data")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("stale model.onnx.data: %v", err)
	}
	if _, err := gpurun.LoadManifest(dir); err != nil {
		t.Error(err)
	}
}

// TestRotaryHelpers: tools/esm2_graph.py's rotary_group and interleave_heads on the published
// ESM-2 sizes and a small case worked by hand.
func TestRotaryHelpers(t *testing.T) {
	for _, c := range []struct{ dim, head, want int }{{64, 16, 64}, {320, 16, 320}, {480, 24, 480}, {640, 32, 640},
		{1280, 64, 640}, {2560, 64, 640}, {5120, 128, 1024}} {
		if got := RotaryGroup(c.dim, c.head); got != c.want {
			t.Errorf("RotaryGroup(%d, %d) = %d, want %d", c.dim, c.head, got, c.want)
		}
	}
	if got := InterleaveHeads(8, 4); !slices.Equal(got, []int{0, 2, 1, 3, 4, 6, 5, 7}) {
		t.Errorf("InterleaveHeads(8, 4) = %v", got)
	}
}
