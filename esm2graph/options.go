package esm2graph

import (
	"fmt"
	"path/filepath"
	"strconv"
	"strings"
)

// Attention forms, mask forms, packed layouts and devices (tools/esm2_graph.py build's arguments).
const (
	AttentionAuto   = "auto"   // mha up to AutoMHAMaxHidden on CUDA, packed above; mha on the CPU
	AttentionMHA    = "mha"    // padded batches, com.microsoft.MultiHeadAttention (CPU and CUDA)
	AttentionPacked = "packed" // padding removed in the graph, PackedMultiHeadAttention (CUDA only)

	MaskLengths = "lengths" // mha key mask as int32 [batch] key lengths (what CUDA's fused kernels take)
	Mask2D      = "2d"      // mha key mask as int32 [batch, length] (the Python export's CPU parity twin)

	LayoutRows     = "rows"     // packed activations [tokens, 1, dim]
	LayoutSequence = "sequence" // packed activations [1, tokens, dim] (up to SequenceLayoutMaxTokens)

	DeviceCUDA = "cuda"
	DeviceCPU  = "cpu"
)

// AutoMHAMaxHidden is tools/export_esm2.py's AUTO_MHA_MAX_HIDDEN: up to this hidden size the
// padded mha graph (with CUDA graphs) beats the packed one on an H200 (ESM-2 8M, 35M), above it
// packed wins (docs/perf.md).
const AutoMHAMaxHidden = 480

// DefaultMaxLength is the manifest's max_length (residues) unless Options say otherwise.
const DefaultMaxLength = 1022

// SequenceLayoutMaxTokens is the most real tokens one batch of a packed graph with layout
// "sequence" may hold (its rotary cache has that many rows).
const SequenceLayoutMaxTokens = 1 << 17

// Options say which graph Build writes.
type Options struct {
	// Attention is AttentionAuto (the default), AttentionMHA or AttentionPacked.
	Attention string
	// Device is the execution provider the graph is for: DeviceCUDA (the default) or DeviceCPU.
	// It decides auto, and CPU graphs may not use CUDA-only ops (packed attention, custom ops).
	Device string
	// MaskForm applies to mha: MaskLengths (the default) or Mask2D.
	MaskForm string
	// PackedLayout applies to packed: LayoutRows (the default) or LayoutSequence.
	PackedLayout string
	// FP16 stores weights and activations as float16 (the pooled output stays float32).
	FP16 bool
	// CustomOps replaces each q/k bias Add + RotaryEmbedding with seqembed's ai.seqembed.BiasRotary
	// CUDA op (float16, so FP16 is needed). The worker needs CustomOpsLibrary to run the graph; see
	// LocateCustomOps and CustomOpsFallback for a caller without it.
	CustomOps bool
	// Name is the manifest's name; default: the checkpoint's base name (without extension).
	Name string
	// Source is the manifest's source; default: the checkpoint's path.
	Source string
	// MaxLength is the manifest's max_length in residues; default DefaultMaxLength. It must leave
	// room for <cls> and <eos> within the model's max_position_embeddings.
	MaxLength int
	// Outputs lists the graph's outputs, in order (see Output); none (the default): the single
	// "embedding" output, mean over residues of the last layer.
	Outputs []Output
	// ResiduesFP16 writes per-residue outputs as float16 (default float32). Pooled outputs are
	// float32 always.
	ResiduesFP16 bool
	// FusedGELU runs each FFN's first projection as seqembed's ai.seqembed.Fp16Linear, one
	// cuBLASLt GEMM with the bias and GELU in its epilogue, instead of a MatMul and a BiasGelu.
	// cuBLASLt's GELU is the tanh approximation, not ESM-2's erf GELU (within 2e-4 of it); the
	// manifest says so ("ffn_gelu": "tanh"). Needs CustomOps (tools/export_esm2.py --fused-gelu).
	FusedGELU bool
	// FP16Linear runs every other projection (q, k, v, the attention output, fc2) as Fp16Linear
	// too, instead of ONNX Runtime's MatMul: the same float32-accumulated arithmetic through
	// cuBLASLt. Needs CustomOps (tools/export_esm2.py --fp16-linear).
	FP16Linear bool
	// CudnnAttention runs attention as ai.seqembed.RaggedAttention, cuDNN's SDPA on the packed
	// tokens, instead of PackedMultiHeadAttention. Needs packed attention, CustomOps and a library
	// built with cuDNN (scripts/build-ops.sh SEQEMBED_OPS_CUDNN=...; a library without it fails the
	// worker's warm-up saying so). tools/export_esm2.py --cudnn-attention.
	CudnnAttention bool
	// Precision is the projections' arithmetic: "" or PrecisionFP16 (the default: the graph's
	// dtype), or PrecisionFP8: every block's projections as ai.seqembed.Fp8Linear (cuBLASLt FP8
	// GEMMs, float16 out) on E4M3 weights with per-output-channel scales written here and
	// activations quantised per token on the fly (ai.seqembed.QuantizeE4M3, the FFN's GELU folded
	// into the quantisation of its output); attention, LayerNorms and pooling stay float16. Needs
	// FP16 and CustomOps, and a GPU with FP8 tensor cores (the worker refuses others; the manifest
	// says "precision": "fp8"). FP8 is less accurate: check it with seqembed check-precision
	// (tools/export_esm2.py --precision fp8).
	Precision string
	// FP8Projections applies to PrecisionFP8: FP8All (the default, all six of every block) or
	// FP8FFN (only fc1 and fc2; q, k, v and the attention output stay float16).
	FP8Projections string
	// FusedLNQuant (PrecisionFP8) computes each residual add + LayerNorm whose only reader is an
	// FP8 GEMM together with that GEMM's activation quantisation (ai.seqembed.SkipLayerNormE4M3).
	FusedLNQuant bool

	// twin (this package's tests) writes a custom-op graph's float32 CPU twin: the ops' F32 forms
	// (BiasRotaryF32, Fp16LinearF32, ...) for the CPU EP and the library's CPU build.
	twin bool
}

// Precisions and FP8 projection sets (Options.Precision, Options.FP8Projections).
const (
	PrecisionFP16 = "fp16"
	PrecisionFP8  = "fp8"
	FP8All        = "all"
	FP8FFN        = "ffn"
)

// Poolings of an Output.
const (
	PoolMean       = "mean"        // mean over positions 1..L (residues only): [batch, dim]
	PoolBOS        = "bos"         // position 0, the <cls> row: [batch, dim]
	PoolPerResidue = "per-residue" // [batch, length, dim], aligned with input_ids: rows 1..L are the residues, <cls>, <eos> and padding rows zero
)

// EmbeddingOutput is the name of the last layer's mean output (the default graph's only one).
const EmbeddingOutput = "embedding"

// Output is one graph output: a representation layer pooled one way. Layer counts as fair-esm's
// repr_layers: 0 is the embedding output (after token-dropout scaling, padded rows zero), i in
// 1..num_layers-1 the residual stream after block i, num_layers the last block's output after the
// final LayerNorm (emb_layer_norm_after); negative layers count from the end (-1 = num_layers).
type Output struct {
	Layer   int
	Pooling string
}

// Name is the output's graph name for a model of numLayers layers (Layer resolved):
// "embedding" for the mean of the last layer, else mean_lN, bos_lN or residues_lN.
func (o Output) Name(numLayers int) string {
	switch o.Pooling {
	case PoolMean:
		if o.Layer == numLayers {
			return EmbeddingOutput
		}
		return "mean_l" + strconv.Itoa(o.Layer)
	case PoolBOS:
		return "bos_l" + strconv.Itoa(o.Layer)
	}
	return "residues_l" + strconv.Itoa(o.Layer)
}

// ParseOutputs reads a comma-separated list of pooling:layer pairs ("mean:-1,bos:-1,per-residue:20";
// poolings mean, bos, per-residue; layers as Output's). Layers are checked by Build.
func ParseOutputs(s string) ([]Output, error) {
	var outs []Output
	for _, part := range strings.Split(s, ",") {
		part = strings.TrimSpace(part)
		if part == "" {
			continue
		}
		p, l, ok := strings.Cut(part, ":")
		n, err := strconv.Atoi(strings.TrimSpace(l))
		if !ok || err != nil {
			return nil, fmt.Errorf("%w: output %q: want pooling:layer (e.g. mean:-1)", ErrOption, part)
		}
		outs = append(outs, Output{Layer: n, Pooling: strings.TrimSpace(p)})
	}
	return outs, nil
}

// resolveOutputs makes layers non-negative and checks poolings, ranges and duplicates.
func resolveOutputs(outs []Output, numLayers int) ([]Output, error) {
	res := make([]Output, 0, len(outs))
	seen := map[string]bool{}
	for _, o := range outs {
		if o.Pooling != PoolMean && o.Pooling != PoolBOS && o.Pooling != PoolPerResidue {
			return nil, fmt.Errorf("%w: output pooling %q (want mean, bos or per-residue)", ErrOption, o.Pooling)
		}
		l := o.Layer
		if l < 0 {
			l += numLayers + 1
		}
		if l < 0 || l > numLayers {
			return nil, fmt.Errorf("%w: output layer %d: the model has layers 0 to %d (or -1 to -%d)", ErrOption, o.Layer, numLayers, numLayers+1)
		}
		r := Output{Layer: l, Pooling: o.Pooling}
		name := r.Name(numLayers)
		if seen[name] {
			return nil, fmt.Errorf("%w: output %s:%d given twice (%s)", ErrOption, o.Pooling, o.Layer, name)
		}
		seen[name] = true
		res = append(res, r)
	}
	return res, nil
}

// AutoAttention is what AttentionAuto picks for a model of hidden size hidden on device: packed
// above AutoMHAMaxHidden on CUDA, mha otherwise (packed attention has no CPU kernels).
func AutoAttention(hidden int, device string) string {
	if device == DeviceCPU || hidden <= AutoMHAMaxHidden {
		return AttentionMHA
	}
	return AttentionPacked
}

// resolve fills in defaults and checks o against the checkpoint.
func (o Options) resolve(ck *Checkpoint) (Options, error) {
	bad := func(format string, args ...any) (Options, error) {
		return o, fmt.Errorf("%w: "+format, append([]any{ErrOption}, args...)...)
	}
	if o.Device == "" {
		o.Device = DeviceCUDA
	}
	if o.Device != DeviceCUDA && o.Device != DeviceCPU {
		return bad("device %q (want cuda or cpu)", o.Device)
	}
	switch o.Attention {
	case "", AttentionAuto:
		o.Attention = AutoAttention(ck.Config.HiddenSize, o.Device)
	case AttentionMHA, AttentionPacked:
	default:
		return bad("attention %q (want auto, mha or packed)", o.Attention)
	}
	switch o.MaskForm {
	case "":
		o.MaskForm = MaskLengths
	case MaskLengths, Mask2D:
		if o.Attention != AttentionMHA {
			return bad("mask form %q applies to mha attention, not %s", o.MaskForm, o.Attention)
		}
	default:
		return bad("mask form %q (want lengths or 2d)", o.MaskForm)
	}
	switch o.PackedLayout {
	case "":
		o.PackedLayout = LayoutRows
	case LayoutRows, LayoutSequence:
		if o.Attention != AttentionPacked {
			return bad("packed layout %q applies to packed attention, not %s", o.PackedLayout, o.Attention)
		}
	default:
		return bad("packed layout %q (want rows or sequence)", o.PackedLayout)
	}
	if o.CustomOps && !o.FP16 && !o.twin {
		return bad("custom ops need fp16 (the CUDA BiasRotary op is float16)")
	}
	if o.Device == DeviceCPU && o.Attention == AttentionPacked {
		return bad("packed attention runs on CUDA only (RemovePadding, PackedMultiHeadAttention have no CPU kernels): use mha for the CPU")
	}
	if o.Device == DeviceCPU && o.CustomOps && !o.twin {
		return bad("custom ops (ai.seqembed.BiasRotary) run on CUDA only")
	}
	for _, need := range []struct {
		on       bool
		name, op string
	}{{o.FusedGELU, "fused GELU", "Fp16Linear"}, {o.FP16Linear, "fp16 linear", "Fp16Linear"}, {o.CudnnAttention, "cuDNN attention", "RaggedAttention"}} {
		if need.on && !o.CustomOps {
			return bad("%s needs custom ops (it runs as seqembed's ai.seqembed.%s, float16 on CUDA)", need.name, need.op)
		}
	}
	if o.CudnnAttention && o.Attention != AttentionPacked {
		return bad("cuDNN attention runs on the packed tokens: it needs packed attention, not %s", o.Attention)
	}
	switch o.Precision {
	case "", PrecisionFP16:
		o.Precision = ""
		if o.FP8Projections != "" || o.FusedLNQuant {
			return bad("fp8 projections and fused LayerNorm quantisation apply to precision fp8")
		}
	case PrecisionFP8:
		if !o.CustomOps {
			return bad("precision fp8 needs custom ops and fp16 (its GEMMs run as seqembed's ai.seqembed.Fp8Linear on CUDA)")
		}
		switch o.FP8Projections {
		case "":
			o.FP8Projections = FP8All
		case FP8All, FP8FFN:
		default:
			return bad("fp8 projections %q (want all or ffn)", o.FP8Projections)
		}
	default:
		return bad("precision %q (want fp16 or fp8)", o.Precision)
	}
	if o.MaxLength == 0 {
		o.MaxLength = min(DefaultMaxLength, ck.Config.MaxPositionEmbeddings-2)
	}
	if o.MaxLength < 1 || o.MaxLength+2 > ck.Config.MaxPositionEmbeddings {
		return bad("max length %d residues: the model has %d positions, room for 1 to %d residues besides <cls> and <eos>",
			o.MaxLength, ck.Config.MaxPositionEmbeddings, ck.Config.MaxPositionEmbeddings-2)
	}
	if len(o.Outputs) > 0 {
		outs, err := resolveOutputs(o.Outputs, ck.Config.NumHiddenLayers)
		if err != nil {
			return o, err
		}
		o.Outputs = outs
	} else if o.ResiduesFP16 {
		return bad("residues fp16 applies to per-residue outputs, and there are none")
	}
	if o.Name == "" {
		o.Name = defaultName(ck.Path)
	}
	if o.Source == "" {
		o.Source = ck.Path
	}
	return o, nil
}

// defaultName is a checkpoint's base name: the directory's, or the file's without its extension
// (a generic file name like model.safetensors gives its directory's name).
func defaultName(path string) string {
	p := filepath.Clean(path)
	base := filepath.Base(p)
	stem := strings.TrimSuffix(base, filepath.Ext(base))
	switch stem {
	case "model", "pytorch_model", "":
		if d := filepath.Base(filepath.Dir(p)); d != "." && d != "/" {
			return d
		}
	}
	if ext := strings.ToLower(filepath.Ext(base)); ext == ".pt" || ext == ".pth" || ext == ".bin" || ext == ".safetensors" {
		return stem
	}
	return base
}
