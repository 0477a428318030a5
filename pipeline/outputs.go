package pipeline

import (
	"fmt"
	"strings"

	"github.com/seqembed/seqembed/arrowout"
	"github.com/seqembed/seqembed/gpurun"
)

// outputPlan maps a model's graph outputs (gpurun.Manifest.Outputs) to the output columns: its
// "embedding" output (the last layer's mean) is the embedding column, every other output an
// extra column of layout version 3 (arrowout.Meta.Outputs), named as the graph names it
// (mean_lN, bos_lN, residues_lN).
type outputPlan struct {
	embedding int    // index of the embedding output in the manifest's outputs
	extra     []int  // indexes of the extra columns' outputs, in column order
	names     string // arrowout.Meta.Outputs
	fp16      bool   // the per-residue outputs are float16 (arrowout.Meta.ResiduesFP16)
}

// planOutputs reads man's outputs. A model of several outputs must have an embedding output
// (the embedding column is always written), every other output must be named mean_lN, bos_lN or
// residues_lN with its layer and pooling, and its per-residue outputs must share one dtype.
func planOutputs(man *gpurun.Manifest) (outputPlan, error) {
	var p outputPlan
	p.embedding = man.OutputIndex(man.Output)
	if man.Output == "" || p.embedding < 0 {
		return p, fmt.Errorf("%w: model %s has no embedding output (the last layer's mean, written to the embedding column): rebuild it with mean:-1 among its outputs",
			ErrSetup, man.Name)
	}
	var names []string
	dtype := ""
	for i, o := range man.Outputs {
		if i == p.embedding {
			continue
		}
		c, err := arrowout.ParseOutputColumn(o.Name)
		if err != nil || c.Layer != o.Layer || c.Pooling != o.Pooling {
			return p, fmt.Errorf("%w: model %s: output %q (layer %d, pooling %s) is not named mean_lN, bos_lN or residues_lN for its layer and pooling",
				ErrSetup, man.Name, o.Name, o.Layer, o.Pooling)
		}
		if o.PerResidue() {
			if dtype != "" && dtype != o.DType {
				return p, fmt.Errorf("%w: model %s: per-residue outputs of dtypes %s and %s (the column type is one for all)", ErrSetup, man.Name, dtype, o.DType)
			}
			dtype = o.DType
		}
		p.extra = append(p.extra, i)
		names = append(names, o.Name)
	}
	p.names, p.fp16 = strings.Join(names, ","), dtype == "float16"
	return p, nil
}

// meta is the output streams' Meta for man under p.
func (p outputPlan) meta(man *gpurun.Manifest) arrowout.Meta {
	return arrowout.Meta{Model: man.Name, ModelSHA256: man.SHA256, Pooling: man.Pooling, Dim: man.EmbeddingDim,
		Outputs: p.names, ResiduesFP16: p.fp16}
}

// fill sets out's extra outputs to res's (the batch's rows that were embedded, in order), which
// must hold one row per row of out with out's lengths; res is nil for a model without extra outputs.
func (p outputPlan) fill(out *arrowout.Batch, res *gpurun.Result) error {
	out.Outputs = out.Outputs[:0]
	if len(p.extra) == 0 {
		return nil
	}
	if res == nil || res.Rows != out.Rows() {
		rows := 0
		if res != nil {
			rows = res.Rows
		}
		return fmt.Errorf("pipeline: %d rows of extra outputs for %d rows", rows, out.Rows())
	}
	for i, l := range res.Lengths {
		if int32(l) != out.Lengths[i] {
			return fmt.Errorf("pipeline: row %d (id %q): %d residues in the outputs, %d in the record", i, out.IDs[i], l, out.Lengths[i])
		}
	}
	for _, i := range p.extra {
		v := &res.Outputs[i]
		out.Outputs = append(out.Outputs, arrowout.OutputData{PerResidue: v.PerResidue(), F32: v.F32, F16: v.F16})
	}
	return nil
}
