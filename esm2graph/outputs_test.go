package esm2graph

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/seqembed/seqembed/internal/refout"

	"github.com/seqembed/seqembed/gpurun"
	"github.com/seqembed/seqembed/internal/half"
)

// refOutputsFile is tools/reference_outputs.py's output for refHFDir's weights (PyTorch, fair-esm
// repr_layers semantics).
const refOutputsFile = "../testdata/esm2-tiny/reference-outputs.json.gz"

func loadRefOutputs(t testing.TB) *refout.Outputs {
	t.Helper()
	requireRef(t, refOutputsFile)
	ref, err := refout.Load(refOutputsFile)
	if err != nil {
		t.Fatal(err)
	}
	return ref
}

// tokens is <cls> seq <eos> in the ESM alphabet.
func tokens(t testing.TB, seq string) []int64 {
	t.Helper()
	ids := []int64{clsID}
	for i := range len(seq) {
		k := strings.IndexByte(residues, seq[i])
		if k < 0 {
			t.Fatalf("residue %q", seq[i])
		}
		ids = append(ids, int64(4+k))
	}
	return append(ids, eosID)
}

// embedAll runs token sequences as one batch padded to cols (0: the longest) through EmbedAll.
func embedAll(t testing.TB, r *gpurun.Runner, seqs [][]int64, cols int) *gpurun.Result {
	t.Helper()
	res, err := r.EmbedAll(context.Background(), padded(seqs, cols))
	if err != nil {
		t.Fatal(err)
	}
	return res
}

func allOutputs(layers int) []Output {
	var outs []Output
	for l := range layers + 1 {
		for _, p := range []string{PoolMean, PoolBOS, PoolPerResidue} {
			outs = append(outs, Output{Layer: l, Pooling: p})
		}
	}
	return outs
}

// TestOutputsMatchReference: the mha graph with every layer (0, 1, 2) × every pooling (mean,
// bos, per-residue), built from the reference checkpoint and run on the CPU in padded batches of
// 4, matches PyTorch's fair-esm-semantics outputs within 1e-4 for every record (per-residue
// states for the records that have them), the manifest lists the outputs, and the last layer's
// mean is the "embedding" output. The float16 per-residue variant matches within float16
// rounding.
func TestOutputsMatchReference(t *testing.T) {
	ref := loadRefOutputs(t)
	requireRef(t, refHFDir)
	ck := load(t, refHFDir)
	L := ck.Config.NumHiddenLayers
	if ref.NumLayers != L || ref.Dim != ck.Config.HiddenSize {
		t.Fatalf("reference of %d layers, dim %d; checkpoint %d, %d", ref.NumLayers, ref.Dim, L, ck.Config.HiddenSize)
	}
	for _, fp16 := range []bool{false, true} {
		t.Run(fmt.Sprintf("residues_fp16=%v", fp16), func(t *testing.T) {
			dir, man := build(t, ck, Options{Attention: AttentionMHA, Device: DeviceCPU, Outputs: allOutputs(L), ResiduesFP16: fp16})
			if man.Output != "embedding" || man.Pooling != "mean" || len(man.Outputs) != 3*(L+1) {
				t.Fatalf("manifest output %q pooling %q outputs %+v", man.Output, man.Pooling, man.Outputs)
			}
			r := runner(t, dir)
			if len(r.Outputs()) != len(man.Outputs) {
				t.Fatalf("runner outputs %+v", r.Outputs())
			}
			perTolerance := 1e-4
			if fp16 {
				perTolerance = 2e-3 // |values| < 4: half of float16's 2^-9 spacing at 2..4 is ~2e-3
			}
			worst := map[string]float64{}
			recs := ref.Records
			for lo := 0; lo < len(recs); lo += 4 {
				var seqs [][]int64
				cols := 0
				for _, rec := range recs[lo:min(lo+4, len(recs))] {
					seqs = append(seqs, tokens(t, rec.Sequence))
					cols = max(cols, (len(rec.Sequence)+2+63)/64*64)
				}
				res := embedAll(t, r, seqs, cols)
				for k, rec := range recs[lo:min(lo+4, len(recs))] {
					if res.Lengths[k] != len(rec.Sequence) {
						t.Fatalf("%s: length %d, want %d", rec.ID, res.Lengths[k], len(rec.Sequence))
					}
					for _, o := range res.Outputs {
						var want []float64
						switch o.Pooling {
						case PoolMean:
							want = rec.Mean[o.Layer]
						case PoolBOS:
							want = rec.BOS[o.Layer]
						default:
							if rec.PerTok == nil {
								continue
							}
							want = rec.PerTok[o.Layer]
						}
						f32, f16 := res.Row(&o, k)
						got := f32
						if f16 != nil {
							got = make([]float32, len(f16))
							for j, h := range f16 {
								got[j] = half.ToFloat32(h)
							}
						}
						if len(got) != len(want) {
							t.Fatalf("%s %s: %d values, want %d", rec.ID, o.Name, len(got), len(want))
						}
						d := maxAbs(got, want)
						worst[o.Name] = max(worst[o.Name], d)
						tol := 1e-4
						if o.PerResidue() {
							tol = perTolerance
						}
						if d > tol {
							t.Errorf("%s (%d residues) %s: max abs %.3g vs PyTorch (limit %g)", rec.ID, len(rec.Sequence), o.Name, d, tol)
						}
					}
				}
			}
			names := slices.Sorted(func(yield func(string) bool) {
				for k := range worst {
					if !yield(k) {
						return
					}
				}
			})
			var b strings.Builder
			for _, n := range names {
				fmt.Fprintf(&b, " %s %.2g", n, worst[n])
			}
			t.Logf("max abs vs PyTorch:%s", b.String())
		})
	}
}

// TestOutputsOptions: layers resolve from the end, names follow the pooling and layer, bad
// outputs are refused, the default graph's manifest has no outputs list (the Python export's keys), a packed
// graph restores the padding of each layer it pools once, and a graph with outputs still serves
// Embed (its "embedding") through gpurun while one without embedding refuses it.
func TestOutputsOptions(t *testing.T) {
	ck := load(t, writeHFDir(t, tinyConfig, randomWeights(tinyConfig, 5)))
	outs, err := ParseOutputs("mean:-1, bos:0,per-residue:-2")
	if err != nil || !slices.Equal(outs, []Output{{-1, PoolMean}, {0, PoolBOS}, {-2, PoolPerResidue}}) {
		t.Fatalf("ParseOutputs: %v %v", outs, err)
	}
	if _, err := ParseOutputs("mean"); !errors.Is(err, ErrOption) {
		t.Errorf("ParseOutputs(mean): %v", err)
	}
	o, err := Options{Outputs: outs}.resolve(ck)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, x := range o.Outputs {
		names = append(names, x.Name(2))
	}
	if !slices.Equal(names, []string{"embedding", "bos_l0", "residues_l1"}) {
		t.Errorf("names %v", names)
	}
	for _, bad := range [][]Output{{{3, PoolMean}}, {{-4, PoolBOS}}, {{1, "max"}}, {{2, PoolMean}, {-1, PoolMean}}} {
		if _, err := (Options{Outputs: bad}).resolve(ck); !errors.Is(err, ErrOption) {
			t.Errorf("outputs %v: %v", bad, err)
		}
	}
	if _, err := (Options{ResiduesFP16: true}).resolve(ck); !errors.Is(err, ErrOption) {
		t.Errorf("residues fp16 without outputs: %v", err)
	}

	if _, man := build(t, ck, Options{Attention: AttentionMHA}); man.Outputs != nil || man.Output != "embedding" || man.Pooling != "mean" {
		t.Errorf("default manifest: outputs %+v, output %q, pooling %q", man.Outputs, man.Output, man.Pooling)
	}
	_, man := build(t, ck, Options{Attention: AttentionMHA, Outputs: []Output{{-1, PoolMean}}})
	if data, _ := json.Marshal(man.Outputs); string(data) != `[{"name":"embedding","layer":2,"pooling":"mean","dtype":"float32","shape":["batch",64]}]` {
		t.Errorf("outputs mean:-1: %s", data)
	}

	pdir, pman := build(t, ck, Options{Attention: AttentionPacked, Outputs: []Output{{0, PoolMean}, {1, PoolBOS}, {1, PoolPerResidue}, {2, PoolMean}}, ResiduesFP16: true})
	m := decodeModel(t, pdir)
	restores := 0
	for _, n := range m.Graph.Nodes {
		if n.OpType == "RestorePadding" {
			restores++
		}
	}
	if restores != 2 { // layers 1 and 2; layer 0 is padded before RemovePadding
		t.Errorf("%d RestorePadding nodes, want 2", restores)
	}
	var gotOuts []string
	for _, v := range m.Graph.Outputs {
		gotOuts = append(gotOuts, v.Name)
	}
	if !slices.Equal(gotOuts, []string{"mean_l0", "bos_l1", "residues_l1", "embedding"}) || pman.Outputs[2].DType != "float16" ||
		len(pman.Outputs[2].Shape) != 3 || pman.Output != "embedding" {
		t.Errorf("packed outputs %v, manifest %+v", gotOuts, pman.Outputs)
	}

	seqs := testSeqs()
	d1, _ := build(t, ck, Options{Attention: AttentionMHA, Device: DeviceCPU})
	d2, _ := build(t, ck, Options{Attention: AttentionMHA, Device: DeviceCPU, Outputs: []Output{{0, PoolBOS}, {-1, PoolMean}}})
	a, b := embed(t, runner(t, d1), seqs, 128), embed(t, runner(t, d2), seqs, 128)
	for i := range seqs {
		if d := maxAbs(a[i], b[i]); d > 1e-6 {
			t.Errorf("sequence %d: embedding of the multi-output graph differs by %.3g", i, d)
		}
	}
	d3, _ := build(t, ck, Options{Attention: AttentionMHA, Device: DeviceCPU, Outputs: []Output{{0, PoolBOS}}})
	r3 := runner(t, d3)
	if _, err := r3.Embed(context.Background(), gpurun.Input{IDs: []int64{0, 5, 2}, Mask: []int64{1, 1, 1}, Rows: 1, Cols: 3}, nil); err == nil {
		t.Error("Embed on a model without embedding: no error")
	}
	if res := embedAll(t, r3, seqs[:2], 0); len(res.Outputs) != 1 || len(res.Outputs[0].F32) != 2*64 {
		t.Errorf("bos-only EmbedAll: %+v", res.Outputs)
	}
}
