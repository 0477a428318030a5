package batcher_test

import (
	"context"
	"slices"
	"strconv"
	"testing"

	"github.com/seqembed/seqembed/batcher"
	"github.com/seqembed/seqembed/esm2graph"
	"github.com/seqembed/seqembed/gpurun"
	"github.com/seqembed/seqembed/internal/e2etest"
)

// TestWindows: tools/reference_outputs.py's windows (starts 0, s, 2s, … while a window ends
// before the last residue, then n − w), and a short sequence is one window.
func TestWindows(t *testing.T) {
	for _, c := range []struct {
		n, w, s int
		want    []int
	}{
		{10, 1022, 511, []int{0}}, {1022, 1022, 511, []int{0}}, {1023, 1022, 511, []int{0, 1}},
		{1500, 1022, 511, []int{0, 478}}, {1533, 1022, 511, []int{0, 511}}, {1534, 1022, 511, []int{0, 511, 512}},
		{5000, 1022, 511, []int{0, 511, 1022, 1533, 2044, 2555, 3066, 3577, 3978}}, {10, 4, 4, []int{0, 4, 6}},
	} {
		if got := batcher.Windows(c.n, c.w, c.s); !slices.Equal(got, c.want) {
			t.Errorf("Windows(%d, %d, %d) = %v, want %v", c.n, c.w, c.s, got, c.want)
		}
	}
}

// TestChunkMergeMatchesReference: the reference's long records (1500 and 5000 residues, window
// 1022, stride 511) cut by Windows, each window run alone through the tiny graph (built in Go,
// per-residue and bos outputs of layers 0..2) and merged (Merger, MeanRows) match PyTorch's
// chunked outputs within 1e-4: every layer's mean and bos, and the last layer's merged
// per-residue states at the window seams and ends.
func TestChunkMergeMatchesReference(t *testing.T) {
	e2etest.RequireORT(t)
	ref := e2etest.LoadRefOutputs(t)
	L := ref.NumLayers
	var outs []esm2graph.Output
	for l := range L + 1 {
		outs = append(outs, esm2graph.Output{Layer: l, Pooling: esm2graph.PoolPerResidue}, esm2graph.Output{Layer: l, Pooling: esm2graph.PoolBOS})
	}
	r, err := gpurun.New(e2etest.OutputsModel(t, outs, false), gpurun.WithThreads(2))
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	tok, err := batcher.NewTokenizer(r.Manifest().Residues)
	if err != nil {
		t.Fatal(err)
	}
	if len(ref.Long) == 0 {
		t.Fatal("no long records in the reference")
	}
	for _, rec := range ref.Long {
		n, dim := len(rec.Sequence), ref.Dim
		starts := batcher.Windows(n, ref.Window, ref.Stride)
		if len(starts) != rec.Windows {
			t.Fatalf("%s: %d windows, the reference has %d", rec.ID, len(starts), rec.Windows)
		}
		mergers := make([]*batcher.Merger, L+1)
		for l := range mergers {
			mergers[l] = batcher.NewMerger(n, dim)
		}
		bos := make([][][]float32, L+1)
		for _, st := range starts {
			lo, hi := batcher.Window(st, n, ref.Window)
			ids, mask := make([]int64, hi-lo+2), make([]int64, hi-lo+2)
			tok.Encode(ids, []byte(rec.Sequence[lo:hi]))
			for i := range mask {
				mask[i] = 1
			}
			res, err := r.EmbedAll(context.Background(), gpurun.Input{IDs: ids, Mask: mask, Rows: 1, Cols: len(ids)})
			if err != nil {
				t.Fatal(err)
			}
			for i := range res.Outputs {
				o := &res.Outputs[i]
				f32, _ := res.Row(o, 0)
				if o.PerResidue() {
					mergers[o.Layer].Add(lo, f32)
				} else {
					bos[o.Layer] = append(bos[o.Layer], f32)
				}
			}
		}
		worst := 0.0
		check := func(what string, got []float32, want []float64) {
			d := e2etest.MaxAbsDiff(got, want)
			worst = max(worst, d)
			if d > 1e-4 {
				t.Errorf("%s %s: max abs %.3g vs PyTorch", rec.ID, what, d)
			}
		}
		for l := range L + 1 {
			check("mean_l"+strconv.Itoa(l), mergers[l].Mean(nil), rec.Mean[l])
			check("bos_l"+strconv.Itoa(l), batcher.MeanRows(nil, bos[l]...), rec.BOS[l])
		}
		merged := mergers[L].Residues(nil)
		if len(merged) != n*dim {
			t.Fatalf("%s: %d merged values", rec.ID, len(merged))
		}
		for p, want := range rec.LastRows {
			i, _ := strconv.Atoi(p)
			check("residue "+p, merged[i*dim:(i+1)*dim], want)
		}
		t.Logf("%s: %d windows, max abs vs PyTorch %.2g", rec.ID, len(starts), worst)
	}
}
