package gpurun

import (
	"context"
	"fmt"
)

// Result is every output of one batch (EmbedAll), in the manifest's order.
type Result struct {
	Rows, Dim int
	// Lengths are each row's residues: its mask's ones less <cls> and <eos> (0 for padding rows).
	Lengths []int
	// Offsets[i] is the first residue of row i in a per-residue output's values; Offsets[Rows] the
	// total (len Rows+1).
	Offsets []int
	Outputs []OutputValues
}

// OutputValues is one output of a batch. Pooled outputs: F32 holds Rows × Dim values. Per-residue
// outputs: the rows' residues one after another (row i's are residues Offsets[i] to Offsets[i+1]
// of Dim values each), in F32, or in F16 (IEEE half bits) for float16 outputs.
type OutputValues struct {
	OutputSpec
	F32 []float32
	F16 []uint16
}

// Row is row i's values of v in res: Dim values for a pooled output (F32), Lengths[i] × Dim for a
// per-residue one (F32 or F16, whichever the output has; the other is nil).
func (res *Result) Row(v *OutputValues, i int) ([]float32, []uint16) {
	lo, hi := i*res.Dim, (i+1)*res.Dim
	if v.PerResidue() {
		lo, hi = res.Offsets[i]*res.Dim, res.Offsets[i+1]*res.Dim
	}
	if v.F16 != nil {
		return nil, v.F16[lo:hi]
	}
	return v.F32[lo:hi], nil
}

// Output is the output named name, or nil.
func (res *Result) Output(name string) *OutputValues {
	for i := range res.Outputs {
		if res.Outputs[i].Name == name {
			return &res.Outputs[i]
		}
	}
	return nil
}

// Outputs are the model's outputs (the manifest's, or its one pooled output for older manifests).
func (r *Runner) Outputs() []OutputSpec { return r.man.Outputs }

// EmbedAll runs one batch and returns every output of the model, per-residue outputs cut to each
// row's residues (positions 1 to its length). A model of one pooled output takes Embed's path
// (CUDA graphs included); others run one plain ORT run into Go memory. ctx and errors are as
// Embed's.
func (r *Runner) EmbedAll(ctx context.Context, in Input) (*Result, error) {
	dim := r.man.EmbeddingDim
	res := &Result{Rows: in.Rows, Dim: dim}
	if r.man.SingleOutput() {
		out, err := r.Embed(ctx, in, nil)
		if err != nil {
			return nil, err
		}
		res.Outputs = []OutputValues{{OutputSpec: r.man.Outputs[0], F32: out}}
		return res, nil
	}
	n := in.Rows * in.Cols
	if in.Rows <= 0 || in.Cols <= 0 || len(in.IDs) < n || len(in.Mask) < n {
		return nil, fmt.Errorf("%w: batch %d×%d with %d ids and %d mask values", ErrShape, in.Rows, in.Cols, len(in.IDs), len(in.Mask))
	}
	r.mu.Lock()
	closed := r.closed
	r.mu.Unlock()
	if closed {
		return nil, ErrClosed
	}
	if err := ctx.Err(); err != nil {
		return nil, r.runErr(ctx, in, err)
	}
	res = NewResult(in, dim)
	rows, cols, d := int64(in.Rows), int64(in.Cols), int64(dim)
	bufs := make([]outBuf, len(r.man.Outputs))
	for i, o := range r.man.Outputs {
		switch {
		case !o.PerResidue():
			bufs[i] = outBuf{f32: make([]float32, in.Rows*dim), shape: []int64{rows, d}}
		case o.DType == "float16":
			bufs[i] = outBuf{f16: make([]uint16, n*dim), shape: []int64{rows, cols, d}}
		default:
			bufs[i] = outBuf{f32: make([]float32, n*dim), shape: []int64{rows, cols, d}}
		}
	}
	run := func() error {
		if r.opts.device.Kind == "cuda" {
			if err := captureMu.rlock(ctx); err != nil {
				return err
			}
			defer captureMu.runlock()
		}
		return r.sess.runTokensOutputs(ctx, in, bufs)
	}
	if err := run(); err != nil {
		return nil, r.runErr(ctx, in, err)
	}
	res.Outputs = make([]OutputValues, len(bufs))
	for i, o := range r.man.Outputs {
		v := OutputValues{OutputSpec: o}
		switch {
		case !o.PerResidue():
			v.F32 = bufs[i].f32
		case o.DType == "float16":
			v.F16 = residueRows(bufs[i].f16, res, in.Cols)
		default:
			v.F32 = residueRows(bufs[i].f32, res, in.Cols)
		}
		res.Outputs[i] = v
	}
	return res, nil
}

// NewResult is the Result of batch in without its outputs: Rows, Dim, each row's Lengths (its
// mask's ones less <cls> and <eos>) and their Offsets. in must hold Rows × Cols mask values.
func NewResult(in Input, dim int) *Result {
	res := &Result{Rows: in.Rows, Dim: dim, Lengths: make([]int, in.Rows), Offsets: make([]int, in.Rows+1)}
	for i := range in.Rows {
		ones := 0
		for _, m := range in.Mask[i*in.Cols : (i+1)*in.Cols] {
			if m != 0 {
				ones++
			}
		}
		res.Lengths[i] = max(ones-2, 0)
		res.Offsets[i+1] = res.Offsets[i] + res.Lengths[i]
	}
	return res
}

// residueRows compacts a [rows, cols, dim] per-residue output to each row's positions 1 to its
// length, in place.
func residueRows[T float32 | uint16](buf []T, res *Result, cols int) []T {
	dim := res.Dim
	for i, l := range res.Lengths {
		copy(buf[res.Offsets[i]*dim:], buf[(i*cols+1)*dim:(i*cols+1+l)*dim])
	}
	return buf[: res.Offsets[res.Rows]*dim : res.Offsets[res.Rows]*dim]
}

// embedPrimary is Embed for a model of several outputs: its "embedding" (the manifest's output).
func (r *Runner) embedPrimary(ctx context.Context, in Input, dst []float32) ([]float32, error) {
	if r.man.Output == "" {
		return dst, fmt.Errorf("%w: model %s has no %q output (outputs %d): use EmbedAll", ErrRun, r.man.Name, "embedding", len(r.man.Outputs))
	}
	res, err := r.EmbedAll(ctx, in)
	if err != nil {
		return dst, err
	}
	return append(dst, res.Output(r.man.Output).F32...), nil
}

// Append appends src's rows after res's (the same model's outputs, as when a batch run in parts
// is put back together): rows, lengths, offsets and every output's values. An empty res (no
// Outputs) takes src's layout.
func (res *Result) Append(src *Result) {
	if len(res.Outputs) == 0 {
		res.Dim = src.Dim
		res.Outputs = make([]OutputValues, len(src.Outputs))
		for i, o := range src.Outputs {
			res.Outputs[i].OutputSpec = o.OutputSpec
		}
	}
	if len(res.Offsets) == 0 {
		res.Offsets = []int{0}
	}
	base := res.Offsets[len(res.Offsets)-1]
	for i := range src.Rows {
		if len(src.Offsets) != src.Rows+1 { // a single-output Result has no lengths
			break
		}
		res.Lengths = append(res.Lengths, src.Lengths[i])
		res.Offsets = append(res.Offsets, base+src.Offsets[i+1])
	}
	res.Rows += src.Rows
	for i, o := range src.Outputs {
		res.Outputs[i].F32 = append(res.Outputs[i].F32, o.F32...)
		res.Outputs[i].F16 = append(res.Outputs[i].F16, o.F16...)
	}
}
