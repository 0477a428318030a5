package esm2graph

import (
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"math"
	"slices"
	"strconv"
	"strings"

	"github.com/seqembed/seqembed/esm2graph/onnxpb"
	"github.com/seqembed/seqembed/internal/half"
)

// Domains and the custom-op library (tools/esm2_graph.py MS, SEQEMBED_OPS, CUSTOM_OPS_LIBRARY).
const (
	domainMS         = "com.microsoft"
	domainSeqembed   = "ai.seqembed"
	CustomOpsLibrary = "libseqembed_ops.so"
	producerName     = "seqembed esm2graph"
	opsetVersion     = 17
	irVersion        = 8
)

// graph accumulates nodes and initializers the way tools/esm2_graph.py's _Graph does, so that
// node names (OP_N), output names (OP_N_i) and initializer order come out the same.
type graph struct {
	ctx   context.Context
	ck    *Checkpoint
	fp16  bool
	dt    onnxpb.DataType
	nodes []onnxpb.Node
	inits []*onnxpb.Tensor
	n     int
}

// op appends a node with outputs outputs (those whose index is in skip left unnamed) and returns
// their names. Attributes are sorted by name, as onnx.helper.make_node does.
func (g *graph) op(op string, inputs []string, outputs int, domain string, skip []int, attrs ...onnxpb.Attribute) []string {
	g.n++
	base := op + "_" + strconv.Itoa(g.n)
	outs := make([]string, outputs)
	for i := range outs {
		if !slices.Contains(skip, i) {
			outs[i] = base + "_" + strconv.Itoa(i)
		}
	}
	slices.SortStableFunc(attrs, func(a, b onnxpb.Attribute) int {
		switch {
		case a.Name < b.Name:
			return -1
		case a.Name > b.Name:
			return 1
		}
		return 0
	})
	g.nodes = append(g.nodes, onnxpb.Node{Name: base, OpType: op, Domain: domain, Inputs: inputs, Outputs: outs, Attrs: attrs})
	return outs
}

// o is a one-output node of the default domain; ms one of com.microsoft.
func (g *graph) o(op string, inputs []string, attrs ...onnxpb.Attribute) string {
	return g.op(op, inputs, 1, "", nil, attrs...)[0]
}

func (g *graph) ms(op string, inputs []string, attrs ...onnxpb.Attribute) string {
	return g.op(op, inputs, 1, domainMS, nil, attrs...)[0]
}

func intAttr(name string, v int64) onnxpb.Attribute { return onnxpb.IntAttr(name, v) }

// init adds an initializer whose size bytes write streams when the model is written.
func (g *graph) init(name string, dt onnxpb.DataType, dims []int64, write func(w io.Writer) error) string {
	n := numel(dims)
	g.inits = append(g.inits, &onnxpb.Tensor{Name: name, DataType: dt, Dims: dims, Size: n * dt.Size(), Data: func(w io.Writer) error {
		if err := g.ctx.Err(); err != nil {
			return err
		}
		return write(w)
	}})
	return name
}

// w is a float initializer in the graph's dtype; load gives its float32 values when it is written
// (one weight in memory at a time).
func (g *graph) w(name string, dims []int64, load func() ([]float32, error)) string {
	return g.init(name, g.dt, dims, func(w io.Writer) error {
		v, err := load()
		if err != nil {
			return err
		}
		return g.writeFloats(w, name, dims, len(v), func(i int) float64 { return float64(v[i]) })
	})
}

// w64 is a float initializer from float64 values (rounded once to the graph's dtype, as numpy's
// astype does from float64).
func (g *graph) w64(name string, dims []int64, load func() []float64) string {
	return g.init(name, g.dt, dims, func(w io.Writer) error {
		v := load()
		return g.writeFloats(w, name, dims, len(v), func(i int) float64 { return v[i] })
	})
}

func (g *graph) writeFloats(w io.Writer, name string, dims []int64, n int, at func(int) float64) error {
	if int64(n) != numel(dims) {
		return fmt.Errorf("%w: initializer %s: %d values for shape %v", ErrCheckpoint, name, n, dims)
	}
	buf := make([]byte, 0, 1<<16)
	flush := func() error {
		_, err := w.Write(buf)
		buf = buf[:0]
		return err
	}
	for i := range n {
		if g.fp16 {
			buf = binary.LittleEndian.AppendUint16(buf, half.FromFloat64(at(i)))
		} else {
			buf = binary.LittleEndian.AppendUint32(buf, math.Float32bits(float32(at(i))))
		}
		if len(buf) >= cap(buf)-4 {
			if err := flush(); err != nil {
				return err
			}
		}
	}
	return flush()
}

// i64 and f32 are small constant initializers of fixed type (dims nil: a scalar).
func (g *graph) i64(name string, dims []int64, v ...int64) string {
	raw := make([]byte, 0, 8*len(v))
	for _, x := range v {
		raw = binary.LittleEndian.AppendUint64(raw, uint64(x))
	}
	g.inits = append(g.inits, &onnxpb.Tensor{Name: name, DataType: onnxpb.Int64, Dims: dims, Raw: raw})
	return name
}

func (g *graph) f32(name string, dims []int64, v ...float32) string {
	raw := make([]byte, 0, 4*len(v))
	for _, x := range v {
		raw = binary.LittleEndian.AppendUint32(raw, math.Float32bits(x))
	}
	g.inits = append(g.inits, &onnxpb.Tensor{Name: name, DataType: onnxpb.Float, Dims: dims, Raw: raw})
	return name
}

// weight loads a checkpoint tensor.
func (g *graph) weight(name string) func() ([]float32, error) {
	return func() ([]float32, error) {
		v, _, err := g.ck.Tensor(name)
		return v, err
	}
}

// linT loads linear layer module's weight [out, in] as MatMul's [in, out], its columns in perm's
// order (nil: as they are).
func (g *graph) linT(module string, perm []int) func() ([]float32, error) {
	return func() ([]float32, error) {
		v, shape, err := g.ck.Tensor(module + ".weight")
		if err != nil {
			return nil, err
		}
		out, in := int(shape[0]), int(shape[1])
		t := make([]float32, len(v))
		for j := range out {
			src := j
			if perm != nil {
				src = perm[j]
			}
			row := v[src*in : (src+1)*in]
			for i, x := range row {
				t[i*out+j] = x
			}
		}
		return t, nil
	}
}

// lin loads linear layer module's weight as stored, [out, in] (Fp16Linear's w), its rows in
// perm's order (nil: as they are).
func (g *graph) lin(module string, perm []int) func() ([]float32, error) {
	return func() ([]float32, error) {
		v, shape, err := g.ck.Tensor(module + ".weight")
		if err != nil || perm == nil {
			return v, err
		}
		in := int(shape[1])
		t := make([]float32, len(v))
		for j, src := range perm {
			copy(t[j*in:(j+1)*in], v[src*in:(src+1)*in])
		}
		return t, nil
	}
}

// fp8Weight adds linear layer module's weight [out, in] (rows in perm's order) as the two
// initializers Fp8Linear reads: E4M3 codes name (uint8 [out, in]) and their per-output-channel
// float32 scales name_scale [out] (quantizeWeight). Each loads the weight when it is written: the
// small scales stay inline in model.onnx and are written before the codes, which go to the
// external data file, so keeping one for the other would hold every weight's codes or rows.
func (g *graph) fp8Weight(name, module string, perm []int, out, in int64) (codes, scales string) {
	codes = g.init(name, onnxpb.Uint8, []int64{out, in}, func(w io.Writer) error {
		v, err := g.lin(module, perm)()
		if err != nil {
			return err
		}
		c, _, err := quantizeWeight(name, v, int(out))
		if err != nil {
			return err
		}
		_, err = w.Write(c)
		return err
	})
	scales = g.init(name+"_scale", onnxpb.Float, []int64{out}, func(w io.Writer) error {
		v, err := g.lin(module, perm)()
		if err != nil {
			return err
		}
		s, err := weightScales(name, v, int(out))
		if err != nil {
			return err
		}
		buf := make([]byte, 0, 4*len(s))
		for _, x := range s {
			buf = binary.LittleEndian.AppendUint32(buf, math.Float32bits(x))
		}
		_, err = w.Write(buf)
		return err
	})
	return codes, scales
}

// bias loads module's bias, in perm's order (nil: as it is).
func (g *graph) bias(module string, perm []int) func() ([]float32, error) {
	return func() ([]float32, error) {
		v, _, err := g.ck.Tensor(module + ".bias")
		if err != nil || perm == nil {
			return v, err
		}
		p := make([]float32, len(v))
		for j := range p {
			p[j] = v[perm[j]]
		}
		return p, nil
	}
}

// foldedOutputBias is bo + Wo·bv: attention rows sum to one, so the value bias passes through
// attention unchanged and can join the output projection's bias.
func (g *graph) foldedOutputBias(layer string) func() ([]float32, error) {
	return func() ([]float32, error) {
		wo, shape, err := g.ck.Tensor(layer + ".attention.output.dense.weight")
		if err != nil {
			return nil, err
		}
		bo, _, err := g.ck.Tensor(layer + ".attention.output.dense.bias")
		if err != nil {
			return nil, err
		}
		bv, _, err := g.ck.Tensor(layer + ".attention.self.value.bias")
		if err != nil {
			return nil, err
		}
		out, in := int(shape[0]), int(shape[1])
		folded := make([]float32, out)
		for j := range out {
			s := float64(bo[j])
			for i, x := range wo[j*in : (j+1)*in] {
				s += float64(x) * float64(bv[i])
			}
			folded[j] = float32(s)
		}
		return folded, nil
	}
}

// RotaryGroup is the width of the column groups RotaryEmbedding is given: the widest multiple of
// headSize that divides dim and fits one CUDA block of 1024 threads (tools/esm2_graph.py
// rotary_group: ORT's kernel runs one block per head and token).
func RotaryGroup(dim, headSize int) int {
	best := headSize
	for g := headSize; g <= min(dim, 1024); g += headSize {
		if dim%g == 0 {
			best = g
		}
	}
	return best
}

// InterleaveHeads is the column order that puts each head's rotate-half pairs (p, p + head/2)
// side by side (2p, 2p+1), so ORT's interleaved rotary rotates exactly ESM's pairs; applied to q
// and k alike it leaves every q·k product unchanged (tools/esm2_graph.py interleave_heads).
func InterleaveHeads(dim, headSize int) []int {
	half := headSize / 2
	perm := make([]int, 0, dim)
	for h := range dim / headSize {
		for k := range headSize {
			w := k / 2
			if k%2 == 1 {
				w = half + k/2
			}
			perm = append(perm, h*headSize+w)
		}
	}
	return perm
}

// buildGraph is tools/esm2_graph.py build() for checkpoint ck and resolved options o: the same
// nodes in the same order with the same names, the same initializers. Weights are not read here:
// each initializer reads its checkpoint tensors when the model is written.
func buildGraph(ctx context.Context, ck *Checkpoint, o Options) *onnxpb.Model {
	cfg := ck.Config
	D, H, L := cfg.HiddenSize, cfg.NumAttentionHeads, cfg.NumHiddenLayers
	hd, eps := D/H, float32(cfg.LayerNormEps)
	d := int64(D)
	g := &graph{ctx: ctx, ck: ck, fp16: o.FP16, dt: onnxpb.Float}
	if o.FP16 {
		g.dt = onnxpb.Float16
	}
	custom, packed := o.CustomOps, o.Attention == AttentionPacked
	one := []int64{1}
	axLast, ax1 := g.i64("axes_last", one, -1), g.i64("axes_1", one, 1)
	tokAx := ax1 // where packed tensors get their unit axis
	if o.PackedLayout != LayoutRows {
		tokAx = g.i64("axes_0", one, 0)
	}
	ids, mask := "input_ids", "attention_mask"
	toFloat, toDT := intAttr("to", int64(onnxpb.Float)), intAttr("to", int64(g.dt))
	keep1, keep0 := intAttr("keepdims", 1), intAttr("keepdims", 0)

	// Embeddings, as HF EsmEmbeddings with token_dropout: zero <mask> rows, scale by
	// (1 - 0.15*0.8) / (1 - observed mask ratio), then zero padded rows.
	x := g.o("Gather", []string{g.w("word_embeddings", []int64{int64(cfg.VocabSize), d}, g.weight(nameEmbed)), ids}, intAttr("axis", 0))
	if cfg.TokenDropout {
		isMask := g.o("Equal", []string{ids, g.i64("mask_token_id", one, int64(cfg.MaskTokenID))})
		un := g.o("Unsqueeze", []string{isMask, axLast})
		x = g.o("Where", []string{un, g.w("zero", one, func() ([]float32, error) { return []float32{0}, nil }), x})
		nMask := g.o("ReduceSum", []string{g.o("Cast", []string{isMask}, toFloat), axLast}, keep1)
		nTok := g.o("ReduceSum", []string{g.o("Cast", []string{mask}, toFloat), axLast}, keep1)
		ratio := g.o("Div", []string{nMask, nTok})
		pMask, pRandom := 0.15, 0.8 // float64 arithmetic, then float32, as numpy does
		keepRatio := g.f32("keep_ratio_train", one, float32(1.0-pMask*pRandom))
		scale := g.o("Div", []string{keepRatio, g.o("Sub", []string{g.f32("one_f32", one, 1), ratio})})
		x = g.o("Mul", []string{x, g.o("Cast", []string{g.o("Unsqueeze", []string{scale, axLast})}, toDT)})
	}
	x = g.o("Mul", []string{x, g.o("Cast", []string{g.o("Unsqueeze", []string{mask, axLast})}, toDT)})
	states := make([]string, L+1) // representation layers: 0 the embeddings (padded), i < L block i's residual sum, L the final LN
	states[0] = x
	lengths := g.o("Cast", []string{g.o("ReduceSum", []string{mask, ax1}, keep0)}, intAttr("to", int64(onnxpb.Int32))) // [batch]

	// Rotary: q and k columns are interleaved per head and RotaryEmbedding runs interleaved on
	// groups of RotaryGroup(D, hd) columns; the cos/sin tables repeat the head's hd/2 frequencies
	// once per real head in a group (BiasRotary takes pair j's angle from column j % (hd/2)).
	perm, group := InterleaveHeads(D, hd), RotaryGroup(D, hd)
	rows := cfg.MaxPositionEmbeddings
	if packed && o.PackedLayout == LayoutSequence {
		rows = max(rows, SequenceLayoutMaxTokens)
	}
	tile := group / hd
	if custom {
		tile = 1
	}
	cols := hd / 2 * tile
	table := func(f func(float64) float64) func() []float64 {
		return func() []float64 {
			invFreq := make([]float64, hd/2) // 1 / 10000^(2j/hd), in float64 as numpy
			for j := range invFreq {
				invFreq[j] = 1 / math.Pow(10000, float64(2*j)/float64(hd))
			}
			out := make([]float64, rows*cols)
			for r := range rows {
				row := out[r*cols : (r+1)*cols]
				for c := range hd / 2 {
					row[c] = f(float64(r) * invFreq[c])
				}
				for c := hd / 2; c < cols; c++ {
					row[c] = row[c-hd/2]
				}
			}
			return out
		}
	}
	cacheDims := []int64{int64(rows), int64(cols)}
	cos, sin := g.w64("rotary_cos", cacheDims, table(math.Cos)), g.w64("rotary_sin", cacheDims, table(math.Sin))

	var pos, keyMask, offs, cu string
	if packed {
		// Packed activations: one position per token; position = offset in the padded batch
		// modulo the padded length.
		outs := g.op("RemovePadding", []string{x, lengths}, 4, domainMS, nil) // [tokens, D]
		xp := outs[0]
		offs, cu = outs[1], outs[2]
		x = g.o("Unsqueeze", []string{xp, tokAx})
		ntok := g.o("Shape", []string{xp}, intAttr("start", 0), intAttr("end", 1))
		width := g.o("Cast", []string{g.o("Shape", []string{ids}, intAttr("start", 1), intAttr("end", 2))}, intAttr("to", int64(onnxpb.Int32)))
		flat := g.o("Reshape", []string{offs, g.i64("flat", one, -1)})
		first := g.o("Slice", []string{flat, g.i64("start0", one, 0), ntok})
		pos = g.o("Unsqueeze", []string{g.o("Cast", []string{g.o("Mod", []string{first, width})}, intAttr("to", int64(onnxpb.Int64))), tokAx})
	} else {
		pos = g.i64("position_start", one, 0) // positions 0..length-1 in every row
		if o.MaskForm == Mask2D {
			keyMask = g.o("Cast", []string{mask}, intAttr("to", int64(onnxpb.Int32)))
		} else {
			keyMask = lengths
		}
	}

	epsAttr := onnxpb.FloatAttr("epsilon", eps)
	f := int64(cfg.IntermediateSize)
	vec, vecF := []int64{d}, []int64{f}
	// seqembed's ops, by their CUDA names; the CPU twin (tests) uses their float32 CPU forms.
	sop := func(name string) string {
		if o.twin {
			return name + "F32"
		}
		return name
	}
	// linear is one projection y = t·Wᵀ of module's weight W [out, in] (tools/esm2_graph.py
	// linear): Fp16Linear on W as stored, rows in perm's order (FP16Linear, or always with gelu:
	// the FFN's first projection with its bias and GELU in the epilogue, FusedGELU), else ONNX's
	// MatMul on Wᵀ [in, out].
	linear := func(t, name, module string, in, out int64, perm []int, gelu bool) string {
		if o.FP16Linear || gelu {
			ins := []string{t, g.w(name, []int64{out, in}, g.lin(module, perm))}
			act := int64(0)
			if gelu {
				ins, act = append(ins, g.w(strings.Replace(name, "w", "b", 1), []int64{out}, g.bias(module, nil))), 1
			}
			return g.op(sop("Fp16Linear"), ins, 1, domainSeqembed, nil, intAttr("gelu", act))[0]
		}
		return g.o("MatMul", []string{t, g.w(name, []int64{in, out}, g.linT(module, perm))})
	}
	// FP8 (Precision fp8): per-token E4M3 codes and scales of t (after GELU: gelu 1 erf, 2 tanh),
	// and a projection as Fp8Linear on them with per-output-channel E4M3 weights (fc1's bias in
	// its epilogue); tools/esm2_graph.py quant and fp8_linear.
	fp8 := o.Precision == PrecisionFP8
	fp8Attn := fp8 && o.FP8Projections == FP8All
	quant := func(t string, gelu int64) [2]string {
		outs := g.op(sop("QuantizeE4M3"), []string{t}, 2, domainSeqembed, nil, intAttr("gelu", gelu))
		return [2]string{outs[0], outs[1]}
	}
	fp8Linear := func(tq [2]string, name, module string, in, out int64, perm []int, bias bool) string {
		codes, scales := g.fp8Weight(name, module, perm, out, in)
		ins := []string{tq[0], tq[1], codes, scales}
		if bias {
			ins = append(ins, g.w(name+"_bias", []int64{out}, g.bias(module, nil)))
		}
		return g.op(sop("Fp8Linear"), ins, 1, domainSeqembed, nil, intAttr("fast_accum", 1))[0]
	}
	// residualLN is LayerNorm(t + bias + resid) with its weights and the sum (tools/esm2_graph.py
	// residual_ln): SkipLayerNormalization, the sum's output unnamed unless keepSum; quantized
	// (FusedLNQuant), SkipLayerNormE4M3, the LayerNorm as E4M3 codes and scales only.
	residualLN := func(t, resid, gName, bName, lnModule, biasName string, bias func() ([]float32, error), keepSum, quantized bool) (ln string, lnq [2]string, sum string) {
		ins := []string{t, resid, g.w(gName, vec, g.weight(lnModule+".weight")), g.w(bName, vec, g.weight(lnModule+".bias")), g.w(biasName, vec, bias)}
		if quantized {
			outs := g.op(sop("SkipLayerNormE4M3"), ins, 3, domainSeqembed, nil, epsAttr)
			return "", [2]string{outs[0], outs[1]}, outs[2]
		}
		skip := []int{1, 2}
		if !keepSum {
			skip = append(skip, 3)
		}
		outs := g.op("SkipLayerNormalization", ins, 4, domainMS, skip, epsAttr)
		return outs[0], [2]string{}, outs[3]
	}
	lay := func(i int) string { return "encoder.layer." + strconv.Itoa(i) }
	ln := g.o("LayerNormalization", []string{x, g.w("l0_ln1_g", vec, g.weight(lay(0)+".attention.LayerNorm.weight")),
		g.w("l0_ln1_b", vec, g.weight(lay(0)+".attention.LayerNorm.bias"))}, intAttr("axis", -1), epsAttr)
	resid := x
	var lnqNext [2]string // the next block's input LayerNorm as E4M3, when a block's end made it (FusedLNQuant)
	for i := range L {
		p, m := "l"+strconv.Itoa(i)+"_", lay(i)
		var q, k, v string
		if fp8Attn {
			lnq := lnqNext
			if lnq[0] == "" {
				lnq = quant(ln, 0)
			}
			lnqNext = [2]string{}
			q = fp8Linear(lnq, p+"wq", m+".attention.self.query", d, d, perm, false)
			k = fp8Linear(lnq, p+"wk", m+".attention.self.key", d, d, perm, false)
			v = fp8Linear(lnq, p+"wv", m+".attention.self.value", d, d, nil, false)
		} else {
			q = linear(ln, p+"wq", m+".attention.self.query", d, d, perm, false)
			k = linear(ln, p+"wk", m+".attention.self.key", d, d, perm, false)
			v = linear(ln, p+"wv", m+".attention.self.value", d, d, nil, false)
		}
		bq := g.w(p+"bq", vec, g.bias(m+".attention.self.query", perm))
		bk := g.w(p+"bk", vec, g.bias(m+".attention.self.key", perm))
		if custom {
			q = g.op(sop("BiasRotary"), []string{q, bq, pos, cos, sin}, 1, domainSeqembed, nil)[0]
			k = g.op(sop("BiasRotary"), []string{k, bk, pos, cos, sin}, 1, domainSeqembed, nil)[0]
		} else {
			q = g.ms("RotaryEmbedding", []string{g.o("Add", []string{q, bq}), pos, cos, sin}, intAttr("interleaved", 1))
			k = g.ms("RotaryEmbedding", []string{g.o("Add", []string{k, bk}), pos, cos, sin}, intAttr("interleaved", 1))
		}
		var ctxOut string
		if o.CudnnAttention { // [tokens, 1, D] (or [1, tokens, D]) in and out: the op reads rows of D
			ctxOut = g.op(sop("RaggedAttention"), []string{q, k, v, offs, cu}, 1, domainSeqembed, nil, intAttr("num_heads", int64(H)))[0]
		} else if packed {
			sq := []string{g.o("Squeeze", []string{q, tokAx}), g.o("Squeeze", []string{k, tokAx}), g.o("Squeeze", []string{v, tokAx})}
			att := g.ms("PackedMultiHeadAttention", append(sq, "", offs, cu), intAttr("num_heads", int64(H)))
			ctxOut = g.o("Unsqueeze", []string{att, tokAx})
		} else {
			ctxOut = g.ms("MultiHeadAttention", []string{q, k, v, "", keyMask}, intAttr("num_heads", int64(H)))
		}
		var proj string
		if fp8Attn {
			proj = fp8Linear(quant(ctxOut, 0), p+"wo", m+".attention.output.dense", d, d, nil, false)
		} else {
			proj = linear(ctxOut, p+"wo", m+".attention.output.dense", d, d, nil, false)
		}
		ln2, ln2q, sum := residualLN(proj, resid, p+"ln2_g", p+"ln2_b", m+".LayerNorm", p+"bo", g.foldedOutputBias(m), true, o.FusedLNQuant)
		resid = sum
		var h, y string
		switch {
		case fp8:
			if !o.FusedLNQuant {
				ln2q = quant(ln2, 0)
			}
			h = fp8Linear(ln2q, p+"w1", m+".intermediate.dense", d, f, nil, true)
			gelu := int64(1) // erf
			if o.FusedGELU {
				gelu = 2 // tanh
			}
			y = fp8Linear(quant(h, gelu), p+"w2", m+".output.dense", f, d, nil, false)
		case o.FusedGELU:
			h = linear(ln2, p+"w1", m+".intermediate.dense", d, f, nil, true)
			y = linear(h, p+"w2", m+".output.dense", f, d, nil, false)
		default:
			h = g.ms("BiasGelu", []string{linear(ln2, p+"w1", m+".intermediate.dense", d, f, nil, false),
				g.w(p+"b1", vecF, g.bias(m+".intermediate.dense", nil))})
			y = linear(h, p+"w2", m+".output.dense", f, d, nil, false)
		}
		next, gname, bname := lay(i+1)+".attention.LayerNorm", "l"+strconv.Itoa(i+1)+"_ln1_g", "l"+strconv.Itoa(i+1)+"_ln1_b"
		if i+1 == L {
			// The last block's residual sum is not needed: leave that output unnamed.
			next, gname, bname = nameFinalLN, "final_ln_g", "final_ln_b"
		}
		endQ := o.FusedLNQuant && fp8Attn && i+1 < L // the next block's q, k, v read only the codes
		ln, lnqNext, resid = residualLN(y, resid, gname, bname, next, p+"b2", g.bias(m+".output.dense", nil), i+1 < L, endQ)
		states[i+1] = resid
	}
	states[L] = ln
	if len(o.Outputs) > 0 {
		return g.model(o, outputsHead(g, o, states, ids, mask, offs, tokAx, axLast, ax1, packed))
	}
	hidden := ln
	if packed {
		hidden = g.ms("RestorePadding", []string{g.o("Squeeze", []string{ln, tokAx}), offs}) // [B, S, D], zero rows
	}

	// Mean over residues (not <cls>, <eos> or padding), in float32.
	isMaskBool := g.o("Cast", []string{mask}, intAttr("to", int64(onnxpb.Bool)))
	notCLS := g.o("Not", []string{g.o("Equal", []string{ids, g.i64("cls_id", one, clsID)})})
	notEOS := g.o("Not", []string{g.o("Equal", []string{ids, g.i64("eos_id", one, eosID)})})
	keep := g.o("And", []string{isMaskBool, g.o("And", []string{notCLS, notEOS})})
	wt := g.o("Unsqueeze", []string{g.o("Cast", []string{keep}, toFloat), axLast})
	total := g.o("ReduceSum", []string{g.o("Mul", []string{g.o("Cast", []string{hidden}, toFloat), wt}), ax1}, keep0)
	count := g.o("Max", []string{g.o("ReduceSum", []string{wt, ax1}, keep0), g.f32("one_count", one, 1)})
	g.nodes = append(g.nodes, onnxpb.Node{Name: "pool", OpType: "Div", Inputs: []string{total, count}, Outputs: []string{"embedding"}})
	return g.model(o, []onnxpb.ValueInfo{{Name: "embedding", ElemType: onnxpb.Float, Shape: []onnxpb.Dim{{Param: "batch"}, {Value: d}}}})
}

// outputsHead writes the pooling of o.Outputs (in order) from the representation layers states
// and returns the graph outputs. Each layer an output needs is made padded [batch, length, dim]
// once (packed graphs: RestorePadding; layer 0 is padded already), cast to float32 once, and
// multiplied by the residue weights once when a mean or per-residue output needs it; pooling is
// in float32 as the default graph's.
func outputsHead(g *graph, o Options, states []string, ids, mask, offs, tokAx, axLast, ax1 string, packed bool) []onnxpb.ValueInfo {
	L, d, one := len(states)-1, int64(g.ck.Config.HiddenSize), []int64{1}
	toFloat := intAttr("to", int64(onnxpb.Float))
	isMaskBool := g.o("Cast", []string{mask}, intAttr("to", int64(onnxpb.Bool)))
	notCLS := g.o("Not", []string{g.o("Equal", []string{ids, g.i64("cls_id", one, clsID)})})
	notEOS := g.o("Not", []string{g.o("Equal", []string{ids, g.i64("eos_id", one, eosID)})})
	keep := g.o("And", []string{isMaskBool, g.o("And", []string{notCLS, notEOS})})
	wt := g.o("Unsqueeze", []string{g.o("Cast", []string{keep}, toFloat), axLast}) // [B, S, 1]
	count := g.o("Max", []string{g.o("ReduceSum", []string{wt, ax1}, intAttr("keepdims", 0)), g.f32("one_count", one, 1)})
	padded, asFloat, weighted, bosIndex := map[int]string{}, map[int]string{}, map[int]string{}, ""
	layer := func(l int) string { // [B, S, D] in the graph's dtype
		if padded[l] == "" {
			padded[l] = states[l]
			if packed && l > 0 {
				padded[l] = g.ms("RestorePadding", []string{g.o("Squeeze", []string{states[l], tokAx}), offs})
			}
		}
		return padded[l]
	}
	float := func(l int) string {
		if asFloat[l] == "" {
			asFloat[l] = g.o("Cast", []string{layer(l)}, toFloat)
		}
		return asFloat[l]
	}
	residues := func(l int) string { // cls, eos and padding rows zero
		if weighted[l] == "" {
			weighted[l] = g.o("Mul", []string{float(l), wt})
		}
		return weighted[l]
	}
	var outs []onnxpb.ValueInfo
	pooled := []onnxpb.Dim{{Param: "batch"}, {Value: d}}
	for _, out := range o.Outputs {
		name := out.Name(L)
		switch out.Pooling {
		case PoolMean:
			total := g.o("ReduceSum", []string{residues(out.Layer), ax1}, intAttr("keepdims", 0))
			g.nodes = append(g.nodes, onnxpb.Node{Name: "pool_" + name, OpType: "Div", Inputs: []string{total, count}, Outputs: []string{name}})
			outs = append(outs, onnxpb.ValueInfo{Name: name, ElemType: onnxpb.Float, Shape: pooled})
		case PoolBOS:
			if bosIndex == "" {
				bosIndex = g.i64("bos_index", nil, 0) // a scalar: Gather then drops the axis ([B, D])
			}
			bos := g.o("Gather", []string{layer(out.Layer), bosIndex}, intAttr("axis", 1))
			g.nodes = append(g.nodes, onnxpb.Node{Name: "pool_" + name, OpType: "Cast", Inputs: []string{bos}, Outputs: []string{name}, Attrs: []onnxpb.Attribute{toFloat}})
			outs = append(outs, onnxpb.ValueInfo{Name: name, ElemType: onnxpb.Float, Shape: pooled})
		case PoolPerResidue:
			dt := onnxpb.Float
			if o.ResiduesFP16 {
				dt = onnxpb.Float16
			}
			g.nodes = append(g.nodes, onnxpb.Node{Name: "pool_" + name, OpType: "Cast", Inputs: []string{residues(out.Layer)}, Outputs: []string{name},
				Attrs: []onnxpb.Attribute{intAttr("to", int64(dt))}})
			outs = append(outs, onnxpb.ValueInfo{Name: name, ElemType: dt, Shape: []onnxpb.Dim{{Param: "batch"}, {Param: "length"}, {Value: d}}})
		}
	}
	return outs
}

// model wraps g's nodes and initializers as the model of options o with the given outputs.
func (g *graph) model(o Options, outputs []onnxpb.ValueInfo) *onnxpb.Model {
	ids, mask := "input_ids", "attention_mask"
	tokens := []onnxpb.Dim{{Param: "batch"}, {Param: "length"}}
	opsets := []onnxpb.OpsetID{{Domain: "", Version: opsetVersion}, {Domain: domainMS, Version: 1}}
	if o.CustomOps {
		opsets = append(opsets, onnxpb.OpsetID{Domain: domainSeqembed, Version: 1})
	}
	return &onnxpb.Model{
		IRVersion: irVersion, ProducerName: producerName, Opsets: opsets,
		Graph: onnxpb.Graph{
			Name: "esm2-" + o.Attention, Nodes: g.nodes, Initializers: g.inits,
			Inputs:  []onnxpb.ValueInfo{{Name: ids, ElemType: onnxpb.Int64, Shape: tokens}, {Name: mask, ElemType: onnxpb.Int64, Shape: tokens}},
			Outputs: outputs,
		},
	}
}

// opCounts counts the fused and matrix ops as tools/export_esm2.py does for the manifest's
// "optimized": com.microsoft and ai.seqembed ops, LayerNormalization, MatMul and Add, in
// first-seen order.
func opCounts(nodes []onnxpb.Node) OpCounts {
	var c OpCounts
	for _, n := range nodes {
		if n.Domain != domainMS && n.Domain != domainSeqembed && n.OpType != "LayerNormalization" && n.OpType != "MatMul" && n.OpType != "Add" {
			continue
		}
		i := slices.IndexFunc(c, func(x OpCount) bool { return x.Op == n.OpType })
		if i < 0 {
			c = append(c, OpCount{Op: n.OpType})
			i = len(c) - 1
		}
		c[i].N++
	}
	return c
}
