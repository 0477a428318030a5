"""Build a fused ONNX graph for an ESM-2 model directly from its weights (no tracing).

The graph has the same interface as the TorchScript export of tools/export_esm2.py: int64
``input_ids`` and ``attention_mask`` [batch, length] in, float32 ``embedding`` [batch, dim] out
(mean over residue positions, computed in float32), so the Go worker runs either unchanged.

Every transformer block is written with ONNX Runtime's fused operators:

    LayerNormalization / SkipLayerNormalization (residual + bias + LayerNorm in one kernel),
    MatMul (+ Add for the query/key biases), com.microsoft.RotaryEmbedding (any batch size; see
    interleave_heads for how its fast form is used), fused attention, MatMul +
    com.microsoft.BiasGelu (erf GELU, as ESM).

Two attention forms:

``mha``     padded [batch, length, dim] activations and com.microsoft.MultiHeadAttention with the
            key lengths (int32 [batch]) as its mask. Runs on the CPU and CUDA EPs. On CUDA,
            key lengths allow cuDNN flash attention (ORT_ENABLE_CUDNN_FLASH_ATTENTION=1 or the
            provider option sdpa_kernel) or the unfused kernel.
``packed``  com.microsoft.RemovePadding right after the embedding: every block runs on the real
            tokens only ([tokens, 1, dim]), attention is com.microsoft.PackedMultiHeadAttention
            (cumulative sequence lengths; fused memory-efficient / flash kernels), rotary
            positions come from the token offsets, and RestorePadding puts rows back before
            pooling. Padding costs nothing past the embedding. CUDA only (RemovePadding,
            RestorePadding and PackedMultiHeadAttention have no CPU kernels).

Algebra used (exact up to rounding): ESM scales q by head_size^-0.5 before the rotary step;
the attention op's default scale 1/sqrt(head_size) does the same after it. Attention rows sum
to one, so the value bias is folded into the output projection's bias (bo + Wo·bv).
"""
import numpy as np

CLS, EOS = 0, 2
MS = "com.microsoft"


class _Graph:
    def __init__(self, fp16):
        import onnx
        self.onnx = onnx
        self.TP = onnx.TensorProto
        self.np_dt = np.float16 if fp16 else np.float32
        self.dt = self.TP.FLOAT16 if fp16 else self.TP.FLOAT
        self.nodes, self.inits, self.n = [], [], 0

    def w(self, name, arr, dtype=None):
        """Initializer; float weights in the graph's dtype unless dtype is given."""
        a = np.ascontiguousarray(np.asarray(arr, dtype=dtype or self.np_dt))
        self.inits.append(self.onnx.numpy_helper.from_array(a, name))
        return name

    def op(self, op, inputs, outputs=1, domain=None, skip=(), **attrs):
        """Append a node; returns its output name (or list of names). Outputs whose index is in
        skip are left unnamed (optional outputs nobody reads)."""
        self.n += 1
        base = f"{op}_{self.n}"
        outs = ["" if i in skip else f"{base}_{i}" for i in range(outputs)]
        self.nodes.append(self.onnx.helper.make_node(op, inputs, outs, name=base, domain=domain or "", **attrs))
        return outs[0] if outputs == 1 else outs


def _np(t):
    return t.detach().float().cpu().numpy()


def rotary_group(dim, head_size, max_threads=1024):
    """Width of the 'heads' RotaryEmbedding is given: the widest multiple of head_size that
    divides dim and fits one CUDA block (ORT's kernel runs one thread per element of a head, one
    block per head and token, so real 64-wide heads make tiny blocks and a slow kernel)."""
    best = head_size
    for g in range(head_size, min(dim, max_threads) + 1, head_size):
        if dim % g == 0:
            best = g
    return best


def interleave_heads(dim, head_size):
    """Column order that puts each head's rotate-half pairs (p, p + head_size/2) side by side
    (2p, 2p + 1): ORT's interleaved rotary then rotates exactly ESM's pairs. Applied to both q and
    k (weights and biases), it leaves every q·k product, and so attention, unchanged."""
    half = head_size // 2
    within = [k // 2 if k % 2 == 0 else half + k // 2 for k in range(head_size)]
    return np.array([h * head_size + w for h in range(dim // head_size) for w in within])


def check_supported(cfg):
    bad = []
    if getattr(cfg, "position_embedding_type", "") != "rotary":
        bad.append(f"position_embedding_type={cfg.position_embedding_type!r} (want rotary)")
    if getattr(cfg, "emb_layer_norm_before", False):
        bad.append("emb_layer_norm_before=True")
    if getattr(cfg, "hidden_act", "gelu") != "gelu":
        bad.append(f"hidden_act={cfg.hidden_act!r}")
    if cfg.hidden_size % cfg.num_attention_heads:
        bad.append("hidden_size not a multiple of num_attention_heads")
    if bad:
        raise ValueError("fused export supports ESM-2 (rotary, post-embedding LayerNorm off, erf GELU) only: "
                         + ", ".join(bad))


# Largest number of real tokens in one batch of a packed graph with layout "sequence" (its
# RotaryEmbedding sees one sequence of that many tokens, so the cos/sin cache needs that many rows).
SEQUENCE_LAYOUT_MAX_TOKENS = 1 << 17


# Output poolings (build's outputs): mean over positions 1..L (residues only) [batch, dim]; the
# <cls> row (position 0) [batch, dim]; per-residue [batch, length, dim] aligned with input_ids
# (rows 1..L are the residues; <cls>, <eos> and padding rows zero).
POOLINGS = ("mean", "bos", "per-residue")


def output_name(layer, pooling, num_layers):
    """Graph name of a resolved output: "embedding" for the last layer's mean (the default graph's
    one output), else mean_lN, bos_lN or residues_lN."""
    if pooling == "mean":
        return "embedding" if layer == num_layers else f"mean_l{layer}"
    return f"bos_l{layer}" if pooling == "bos" else f"residues_l{layer}"


def resolve_outputs(outputs, num_layers):
    """[(layer, pooling)] with fair-esm repr_layers (0 = embeddings, num_layers = last layer after
    emb_layer_norm_after, negative from the end) -> the same with layers in 0..num_layers; refuses
    unknown poolings, layers out of range and duplicates."""
    res, seen = [], set()
    for layer, pooling in outputs:
        if pooling not in POOLINGS:
            raise ValueError(f"output pooling {pooling!r} (want mean, bos or per-residue)")
        lay = layer + num_layers + 1 if layer < 0 else layer
        if not 0 <= lay <= num_layers:
            raise ValueError(f"output layer {layer}: the model has layers 0 to {num_layers}")
        name = output_name(lay, pooling, num_layers)
        if name in seen:
            raise ValueError(f"output {pooling}:{layer} given twice ({name})")
        seen.add(name)
        res.append((lay, pooling))
    return res


def parse_outputs(text):
    """'mean:-1,bos:-1,per-residue:20' -> [(-1, 'mean'), (-1, 'bos'), (20, 'per-residue')]."""
    outs = []
    for part in text.split(","):
        if part.strip():
            pooling, sep, layer = part.strip().partition(":")
            if not sep:
                raise ValueError(f"output {part!r}: want pooling:layer (e.g. mean:-1)")
            outs.append((int(layer), pooling.strip()))
    return outs


# seqembed's own operator domain (gpurun/ortops/seqembed_ops.cu, built by scripts/build-ops.sh).
SEQEMBED_OPS = "ai.seqembed"
CUSTOM_OPS_LIBRARY = "libseqembed_ops.so"

E4M3_MAX = 448.0  # largest finite float8 e4m3fn value


def e4m3_encode(x):
    """float8 e4m3fn bit patterns (uint8) of x: round to nearest even, saturated at +-448; the
    same rounding as the ops' FloatToE4M3 and CUDA's __nv_cvt_float_to_fp8(SATFINITE)."""
    x = np.asarray(x, dtype=np.float32)
    sign = (np.signbit(x).astype(np.uint8) << 7).astype(np.uint8)
    a = np.minimum(np.abs(x).astype(np.float64), E4M3_MAX)
    with np.errstate(all="ignore"):
        e = np.frexp(a)[1] - 1  # a's binade: a in [2^e, 2^(e+1))
        sub = (a == 0) | (e < -6)
        mant = np.rint((np.ldexp(a, -e) - 1.0) * 8.0)  # rint: ties to even
        carry = mant == 8
        e, mant = np.where(carry, e + 1, e), np.where(carry, 0, mant)
        normal = (np.clip(e + 7, 0, 15).astype(np.int64) << 3) | np.nan_to_num(mant).astype(np.int64)
        code = np.where(sub, np.rint(np.ldexp(a, 9)), normal)
    return (np.minimum(code, 0x7E).astype(np.uint8) | sign).astype(np.uint8)


def quantize_weight(w):
    """Per-output-channel E4M3 quantisation of a [out, in] weight: (codes uint8 [out, in],
    scales float32 [out]) with w ~= codes * scale[:, None], scale = max |row| / 448 (1 for a zero
    row)."""
    w = np.asarray(w, dtype=np.float32)
    scale = (np.abs(w).max(axis=1) / np.float32(E4M3_MAX)).astype(np.float32)
    scale = np.where(scale > 0, scale, np.float32(1.0)).astype(np.float32)
    return e4m3_encode(w / scale[:, None]), scale

PRECISIONS = ("fp16", "fp8")


def build(esm, fp16, attention, mask_form="lengths", packed_layout="rows", custom_ops=False, outputs=None,
          residues_fp16=False, precision="fp16", fp8_projections="all", fused_gelu=False, fp16_linear=False,
          fused_residual=False, fused_ln_quant=False, cudnn_attention=False):
    """Return an onnx.ModelProto for EsmModel esm (HF transformers, any dtype; weights are read as
    float32 and stored as float16 when fp16). attention is "mha" or "packed". mask_form applies to
    "mha": "lengths" (int32 [batch] key lengths, what the CUDA fused kernels accept) or "2d" (int32
    [batch, length] key padding mask; used for the CPU parity twin). packed_layout applies to
    "packed": "rows" keeps packed activations as [tokens, 1, D] (one position per row, default);
    "sequence" as [1, tokens, D] (one long sequence; up to SEQUENCE_LAYOUT_MAX_TOKENS tokens).
    custom_ops (fp16 only) replaces each q/k bias Add + RotaryEmbedding with seqembed's
    ai.seqembed.BiasRotary (one bandwidth-bound pass; CUDA only, needs CUSTOM_OPS_LIBRARY): one
    position per packed token, or one start position for the padded "mha" batch.
    outputs: None (the single "embedding" output, mean of the last layer) or [(layer, pooling)]
    (see resolve_outputs and POOLINGS; names from output_name), in that order; residues_fp16
    writes per-residue outputs as float16 (pooled outputs are float32 always). Same graph as
    esm2graph's Options.Outputs / ResiduesFP16.
    precision "fp8" (fp16 graphs with custom_ops only, packed or mha) runs the six projections of every
    block as FP8 GEMMs: weights E4M3 with per-output-channel scales (quantize_weight), activations
    quantised per token on the fly (ai.seqembed.QuantizeE4M3, the FFN's erf GELU folded into the
    quantisation of its output), ai.seqembed.Fp8Linear (cuBLASLt, fp16 out, fc1's bias in its
    epilogue, cuBLASLt's fast FP8 accumulation: measured as accurate as the exact one, docs/perf.md);
    embeddings, attention, LayerNorms, residuals and pooling stay as in fp16. fp8_projections "ffn"
    keeps attention's q, k, v and output projections in fp16 (only fc1 and fc2 go FP8).
    fused_gelu (custom_ops, packed or mha) runs each FFN's GELU as its tanh approximation, not ESM's
    erf GELU (an approximation, checked against float32 PyTorch before use, docs/perf.md): with
    precision fp16 fc1 becomes ai.seqembed.Fp16Linear, one cuBLASLt GEMM with the bias and GELU in
    its epilogue instead of MatMul + BiasGelu; with fp8 the QuantizeE4M3 of fc1's output computes
    the tanh GELU (gelu=2, a fraction of the erf's arithmetic) instead of the erf one.
    fp16_linear (fp16, custom_ops) runs every projection that is not FP8 as ai.seqembed.Fp16Linear
    (cuBLASLt with the weight stored [out, in], the "TN" form) instead of ORT's MatMul (cublasGemmEx
    on [in, out] weights): faster at ESM-2's shapes (docs/perf.md, bench/gpu.sh mode gemm); the same
    arithmetic (float32 accumulation).
    fused_residual (with fp16_linear) adds the residual stream inside the GEMM of every fp16 output
    projection and fc2 (Fp16Linear's residual input: cuBLASLt's C with beta = 1) and normalises the
    sum with LayerNormalization instead of SkipLayerNormalization: one pass over [tokens, D] fewer
    per residual, and the sum rounded to float16 once instead of twice.
    fused_ln_quant (precision fp8) computes each residual add + LayerNorm whose only reader is an
    FP8 GEMM together with that GEMM's activation quantisation (ai.seqembed.SkipLayerNormE4M3): the
    float16 LayerNorm output is never written, QuantizeE4M3 never reads it.
    cudnn_attention (packed, custom_ops) runs attention as ai.seqembed.RaggedAttention (cuDNN's SDPA
    forward on the packed tokens; the ops library built with SEQEMBED_OPS_CUDNN, scripts/build-ops.sh)
    instead of com.microsoft.PackedMultiHeadAttention (FlashAttention-2): cuDNN's Hopper kernel ran
    our batches 1.36x faster (bench/cudnn_attn_probe.cpp, docs/perf.md)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r}: want one of {PRECISIONS}")
    fp8 = precision == "fp8"
    if fp8_projections not in ("all", "ffn"):
        raise ValueError(f"fp8_projections {fp8_projections!r}: want all or ffn")
    fp8_attn = fp8 and fp8_projections == "all"
    if fp8 and not (fp16 and custom_ops):
        raise ValueError("precision fp8 needs fp16 and custom_ops (seqembed's CUDA ops)")
    if fused_gelu and not (fp16 and custom_ops):
        raise ValueError("fused_gelu needs fp16 and custom_ops (seqembed's CUDA ops)")
    if fp16_linear and not (fp16 and custom_ops):
        raise ValueError("fp16_linear needs fp16 and custom_ops (seqembed's CUDA ops)")
    if fused_residual and not fp16_linear:
        raise ValueError("fused_residual needs fp16_linear")
    if fused_ln_quant and not fp8:
        raise ValueError("fused_ln_quant needs precision fp8")
    if fused_ln_quant and fused_residual:  # SkipLayerNormE4M3 adds the residual itself
        raise ValueError("fused_ln_quant and fused_residual do not combine")
    if custom_ops and not fp16:
        raise ValueError("custom_ops needs fp16 (the CUDA BiasRotary op is float16)")
    if cudnn_attention and not (custom_ops and attention == "packed"):
        raise ValueError("cudnn_attention needs attention packed and custom_ops (seqembed's CUDA ops)")
    if attention not in ("mha", "packed"):
        raise ValueError(f"attention {attention!r}: want mha or packed")
    cfg = esm.config
    check_supported(cfg)
    D, H, L = cfg.hidden_size, cfg.num_attention_heads, cfg.num_hidden_layers
    if outputs:
        outputs = resolve_outputs(outputs, L)
    elif residues_fp16:
        raise ValueError("residues_fp16 applies to per-residue outputs, and there are none")
    hd, eps = D // H, float(cfg.layer_norm_eps)
    g = _Graph(fp16)
    onnx, TP = g.onnx, g.TP
    i64 = lambda name, v: g.w(name, np.array(v, dtype=np.int64), np.int64)  # noqa: E731
    f32 = lambda name, v: g.w(name, np.array(v, dtype=np.float32), np.float32)  # noqa: E731
    ax_last, ax1 = i64("axes_last", [-1]), i64("axes_1", [1])
    if packed_layout not in ("rows", "sequence"):
        raise ValueError(f"packed_layout {packed_layout!r}: want rows or sequence")
    tok_ax = ax1 if packed_layout == "rows" else i64("axes_0", [0])  # where packed tensors get their unit axis
    ids, mask = "input_ids", "attention_mask"

    # Embeddings, as HF EsmEmbeddings with token_dropout: zero <mask> rows, scale by
    # (1 - 0.15*0.8) / (1 - observed mask ratio), then zero padded rows.
    x = g.op("Gather", [g.w("word_embeddings", _np(esm.embeddings.word_embeddings.weight)), ids], axis=0)
    if getattr(cfg, "token_dropout", False):
        is_mask = g.op("Equal", [ids, i64("mask_token_id", cfg.mask_token_id)])
        x = g.op("Where", [g.op("Unsqueeze", [is_mask, ax_last]), g.w("zero", 0.0), x])
        n_mask = g.op("ReduceSum", [g.op("Cast", [is_mask], to=TP.FLOAT), ax_last], keepdims=1)
        n_tok = g.op("ReduceSum", [g.op("Cast", [mask], to=TP.FLOAT), ax_last], keepdims=1)
        ratio = g.op("Div", [n_mask, n_tok])
        scale = g.op("Div", [f32("keep_ratio_train", 1.0 - 0.15 * 0.8), g.op("Sub", [f32("one_f32", 1.0), ratio])])
        x = g.op("Mul", [x, g.op("Cast", [g.op("Unsqueeze", [scale, ax_last])], to=g.dt)])
    x = g.op("Mul", [x, g.op("Cast", [g.op("Unsqueeze", [mask, ax_last])], to=g.dt)])
    # Representation layers: 0 the embeddings (padded), i < L block i's residual sum, L the final LN.
    states = [x] + [None] * L
    lengths = g.op("Cast", [g.op("ReduceSum", [mask, ax1], keepdims=0)], to=TP.INT32)  # [batch]

    # Rotary: q and k columns are interleaved per head (interleave_heads) and RotaryEmbedding runs
    # interleaved on groups of rotary_group(D, hd) columns; the cos/sin tables repeat the head's
    # hd/2 frequencies once per real head in a group.
    perm, group = interleave_heads(D, hd), rotary_group(D, hd)
    inv_freq = 1.0 / (10000 ** (np.arange(0, hd, 2, dtype=np.float64) / hd))
    rows = cfg.max_position_embeddings
    if attention == "packed" and packed_layout == "sequence":
        rows = max(rows, SEQUENCE_LAYOUT_MAX_TOKENS)  # ORT checks sequence length <= cache rows
    ang = np.outer(np.arange(rows, dtype=np.float64), inv_freq)
    if not custom_ops:  # BiasRotary takes pair j's angle from column j % (hd/2): no tiling
        ang = np.tile(ang, group // hd)
    cos, sin = g.w("rotary_cos", np.cos(ang)), g.w("rotary_sin", np.sin(ang))

    if attention == "packed":
        # Packed activations are [tokens, 1, D]: a "batch" of one-token rows, so RotaryEmbedding
        # takes one position per token (position_ids [tokens, 1]) and its cos/sin cache need only
        # cover max_position_embeddings (its sequence length is 1, not the token count).
        xp, offs, cu, _ = g.op("RemovePadding", [x, lengths], outputs=4, domain=MS)  # [tokens, D]
        x = g.op("Unsqueeze", [xp, tok_ax])  # [tokens, 1, D] (rows) or [1, tokens, D] (sequence)
        # Position of each packed token = its offset in the padded batch modulo the padded length.
        ntok = g.op("Shape", [xp], start=0, end=1)
        width = g.op("Cast", [g.op("Shape", [ids], start=1, end=2)], to=TP.INT32)
        first = g.op("Slice", [g.op("Reshape", [offs, i64("flat", [-1])]), i64("start0", [0]), ntok])
        pos = g.op("Unsqueeze", [g.op("Cast", [g.op("Mod", [first, width])], to=TP.INT64), tok_ax])  # like x
    else:
        pos = i64("position_start", [0])  # positions 0..length-1 in every row
        if mask_form == "2d":
            key_mask = g.op("Cast", [mask], to=TP.INT32)
        elif mask_form == "lengths":
            key_mask = lengths
        else:
            raise ValueError(f"mask_form {mask_form!r}")

    layers = esm.encoder.layer
    ln = g.op("LayerNormalization", [x, g.w("l0_ln1_g", _np(layers[0].attention.LayerNorm.weight)),
                                     g.w("l0_ln1_b", _np(layers[0].attention.LayerNorm.bias))], axis=-1, epsilon=eps)
    resid = x
    def quant(t, gelu=0):  # per-token E4M3 codes and scales of t (after GELU: 1 erf, 2 tanh)
        return g.op("QuantizeE4M3", [t], outputs=2, domain=SEQEMBED_OPS, gelu=gelu)

    def fp8_linear(tq, name, w_out_in, bias=None):  # tq: (codes, scales); w [out, in]
        wq, ws = quantize_weight(w_out_in)
        ins = [tq[0], tq[1], g.w(name, wq, np.uint8), g.w(name + "_scale", ws, np.float32)]
        if bias is not None:
            ins.append(g.w(name + "_bias", bias))
        return g.op("Fp8Linear", ins, domain=SEQEMBED_OPS, fast_accum=1)

    def linear(t, name, w_out_in, bias=None, gelu=0):  # fp16 projection: Fp16Linear, or MatMul on [in, out]
        if fp16_linear or gelu:
            ins = [t, g.w(name, w_out_in)] + ([g.w(name.replace("w", "b", 1), bias)] if bias is not None else [])
            return g.op("Fp16Linear", ins, domain=SEQEMBED_OPS, gelu=gelu)
        if bias is not None:  # the MatMul form's bias lives in the SkipLayerNormalization or BiasGelu after it
            raise ValueError(f"{name}: a bias on the MatMul form would be dropped")
        return g.op("MatMul", [t, g.w(name, np.ascontiguousarray(w_out_in.T))])

    def residual_ln(t, fused, resid, bias_name, bias, ln_names, ln, keep_sum, quantized=False):
        # (LayerNorm ln with weight names ln_names of t + bias + resid, the sum): fused, t is already the
        # sum (out_linear added the bias and the residual); else SkipLayerNormalization adds them,
        # keep_sum False leaving its sum output unnamed. quantized (fused_ln_quant): the LayerNorm as
        # E4M3 (codes, scales) from SkipLayerNormE4M3 instead.
        norm = [g.w(ln_names[0], _np(ln.weight)), g.w(ln_names[1], _np(ln.bias))]
        if quantized:
            q, sc, total = g.op("SkipLayerNormE4M3", [t, resid] + norm + [g.w(bias_name, bias)], outputs=3,
                                domain=SEQEMBED_OPS, epsilon=eps)
            return (q, sc), total
        if fused:
            return g.op("LayerNormalization", [t] + norm, axis=-1, epsilon=eps), t
        out, _, _, total = g.op("SkipLayerNormalization", [t, resid] + norm + [g.w(bias_name, bias)], outputs=4,
                                skip=(1, 2) if keep_sum else (1, 2, 3), domain=MS, epsilon=eps)
        return out, total

    def out_linear(t, name, w_out_in, bias, resid):  # an fp16 projection feeding the residual stream
        if not fused_residual:
            return linear(t, name, w_out_in)
        ins = [t, g.w(name, w_out_in), g.w(name.replace("w", "b", 1), bias), resid]
        return g.op("Fp16Linear", ins, domain=SEQEMBED_OPS, gelu=0)

    lnq_next = None  # the next block's input LayerNorm as E4M3, when a block's end made it (fused_ln_quant)
    for i, lay in enumerate(layers):
        att, p = lay.attention, f"l{i}_"
        if fp8_attn:
            lnq, lnq_next = lnq_next or quant(ln), None
            q = fp8_linear(lnq, p + "wq", _np(att.self.query.weight)[perm])
            k = fp8_linear(lnq, p + "wk", _np(att.self.key.weight)[perm])
            v = fp8_linear(lnq, p + "wv", _np(att.self.value.weight))
        else:
            q = linear(ln, p + "wq", _np(att.self.query.weight)[perm])
            k = linear(ln, p + "wk", _np(att.self.key.weight)[perm])
            v = linear(ln, p + "wv", _np(att.self.value.weight))
        bq, bk = g.w(p + "bq", _np(att.self.query.bias)[perm]), g.w(p + "bk", _np(att.self.key.bias)[perm])
        if custom_ops:
            q = g.op("BiasRotary", [q, bq, pos, cos, sin], domain=SEQEMBED_OPS)
            k = g.op("BiasRotary", [k, bk, pos, cos, sin], domain=SEQEMBED_OPS)
        else:
            q = g.op("RotaryEmbedding", [g.op("Add", [q, bq]), pos, cos, sin], domain=MS, interleaved=1)
            k = g.op("RotaryEmbedding", [g.op("Add", [k, bk]), pos, cos, sin], domain=MS, interleaved=1)
        if cudnn_attention:  # [tokens, 1, D] (or [1, tokens, D]) in and out: the op reads rows of D
            ctx = g.op("RaggedAttention", [q, k, v, offs, cu], domain=SEQEMBED_OPS, num_heads=H)
        elif attention == "packed":
            sq = [g.op("Squeeze", [t, tok_ax]) for t in (q, k, v)]
            ctx = g.op("Unsqueeze", [g.op("PackedMultiHeadAttention", sq + ["", offs, cu], domain=MS, num_heads=H), tok_ax])
        else:
            ctx = g.op("MultiHeadAttention", [q, k, v, "", key_mask], domain=MS, num_heads=H)
        wo = _np(att.output.dense.weight)  # [out, in]
        bo = _np(att.output.dense.bias) + wo @ _np(att.self.value.bias)  # value bias folded in
        if fp8_attn:
            o = fp8_linear(quant(ctx), p + "wo", wo)
        else:
            o = out_linear(ctx, p + "wo", wo, bo, resid)
        ln2, resid = residual_ln(o, fused_residual and not fp8_attn, resid, p + "bo", bo, (p + "ln2_g", p + "ln2_b"),
                                 lay.LayerNorm, True, quantized=fused_ln_quant)
        if fp8:
            h = fp8_linear(ln2 if fused_ln_quant else quant(ln2), p + "w1", _np(lay.intermediate.dense.weight),
                           _np(lay.intermediate.dense.bias))
            y = fp8_linear(quant(h, gelu=2 if fused_gelu else 1), p + "w2", _np(lay.output.dense.weight))
        elif fused_gelu:
            h = linear(ln2, p + "w1", _np(lay.intermediate.dense.weight), _np(lay.intermediate.dense.bias), gelu=1)
            y = out_linear(h, p + "w2", _np(lay.output.dense.weight), _np(lay.output.dense.bias), resid)
        else:
            h = g.op("BiasGelu", [linear(ln2, p + "w1", _np(lay.intermediate.dense.weight)),
                                  g.w(p + "b1", _np(lay.intermediate.dense.bias))], domain=MS)
            y = out_linear(h, p + "w2", _np(lay.output.dense.weight), _np(lay.output.dense.bias), resid)
        if i + 1 < L:
            nxt = layers[i + 1].attention.LayerNorm
            gname, bname = f"l{i + 1}_ln1_g", f"l{i + 1}_ln1_b"
        else:
            nxt, gname, bname = esm.encoder.emb_layer_norm_after, "final_ln_g", "final_ln_b"
        # The last block's residual sum is not needed: leave that output unnamed.
        end_q = fused_ln_quant and fp8_attn and i + 1 < L  # the next block's q/k/v read only the codes
        ln, resid = residual_ln(y, fused_residual and not fp8, resid, p + "b2", _np(lay.output.dense.bias),
                                (gname, bname), nxt, i + 1 < L, quantized=end_q)
        if end_q:
            lnq_next, ln = ln, None
        states[i + 1] = resid
    states[L] = ln
    if outputs:
        outs = _outputs_head(g, outputs, states, ids, mask, offs if attention == "packed" else None, tok_ax,
                             ax_last, ax1, D, L, residues_fp16)
        return _model(g, attention, outs, custom_ops)
    hidden = ln
    if attention == "packed":
        hidden = g.op("RestorePadding", [g.op("Squeeze", [ln, tok_ax]), offs], domain=MS)  # [B, S, D], zero rows

    # Mean over residues (not <cls>, <eos> or padding), in float32.
    keep = g.op("And", [g.op("Cast", [mask], to=TP.BOOL),
                        g.op("And", [g.op("Not", [g.op("Equal", [ids, i64("cls_id", CLS)])]),
                                     g.op("Not", [g.op("Equal", [ids, i64("eos_id", EOS)])])])])
    wt = g.op("Unsqueeze", [g.op("Cast", [keep], to=TP.FLOAT), ax_last])
    total = g.op("ReduceSum", [g.op("Mul", [g.op("Cast", [hidden], to=TP.FLOAT), wt]), ax1], keepdims=0)
    count = g.op("Max", [g.op("ReduceSum", [wt, ax1], keepdims=0), f32("one_count", 1.0)])
    g.nodes.append(onnx.helper.make_node("Div", [total, count], ["embedding"], name="pool"))

    return _model(g, attention, [onnx.helper.make_tensor_value_info("embedding", TP.FLOAT, ["batch", D])], custom_ops)


def _outputs_head(g, outputs, states, ids, mask, offs, tok_ax, ax_last, ax1, D, L, residues_fp16):
    """Pooling of outputs (in order) from the representation layers states; returns the graph
    outputs. Each layer an output needs is made padded [batch, length, D] once (packed graphs, offs
    given: RestorePadding; layer 0 is padded already), cast to float32 once, and multiplied by the
    residue weights once when a mean or per-residue output needs it. Pooling is in float32."""
    onnx, TP = g.onnx, g.TP
    i64 = lambda name, v: g.w(name, np.array(v, dtype=np.int64), np.int64)  # noqa: E731
    keep = g.op("And", [g.op("Cast", [mask], to=TP.BOOL),
                        g.op("And", [g.op("Not", [g.op("Equal", [ids, i64("cls_id", CLS)])]),
                                     g.op("Not", [g.op("Equal", [ids, i64("eos_id", EOS)])])])])
    wt = g.op("Unsqueeze", [g.op("Cast", [keep], to=TP.FLOAT), ax_last])  # [B, S, 1]
    count = g.op("Max", [g.op("ReduceSum", [wt, ax1], keepdims=0),
                         g.w("one_count", np.array(1.0, dtype=np.float32), np.float32)])
    padded, as_float, weighted, bos_index = {}, {}, {}, []

    def layer(lay):  # [B, S, D] in the graph's dtype
        if lay not in padded:
            padded[lay] = states[lay]
            if offs is not None and lay > 0:
                padded[lay] = g.op("RestorePadding", [g.op("Squeeze", [states[lay], tok_ax]), offs], domain=MS)
        return padded[lay]

    def as_f32(lay):
        if lay not in as_float:
            as_float[lay] = g.op("Cast", [layer(lay)], to=TP.FLOAT)
        return as_float[lay]

    def residues(lay):  # <cls>, <eos> and padding rows zero
        if lay not in weighted:
            weighted[lay] = g.op("Mul", [as_f32(lay), wt])
        return weighted[lay]

    outs = []
    for lay, pooling in outputs:
        name = output_name(lay, pooling, L)
        if pooling == "mean":
            total = g.op("ReduceSum", [residues(lay), ax1], keepdims=0)
            g.nodes.append(onnx.helper.make_node("Div", [total, count], [name], name="pool_" + name))
            outs.append(onnx.helper.make_tensor_value_info(name, TP.FLOAT, ["batch", D]))
        elif pooling == "bos":
            if not bos_index:
                # A 0-d index (Gather drops the axis: [B, D]); g.w would make it [1]
                # (np.ascontiguousarray returns at least 1-d, as for every other scalar here).
                g.inits.append(onnx.numpy_helper.from_array(np.array(0, dtype=np.int64), "bos_index"))
                bos_index.append("bos_index")
            bos = g.op("Gather", [layer(lay), bos_index[0]], axis=1)
            g.nodes.append(onnx.helper.make_node("Cast", [bos], [name], name="pool_" + name, to=TP.FLOAT))
            outs.append(onnx.helper.make_tensor_value_info(name, TP.FLOAT, ["batch", D]))
        else:
            dt = TP.FLOAT16 if residues_fp16 else TP.FLOAT
            g.nodes.append(onnx.helper.make_node("Cast", [residues(lay)], [name], name="pool_" + name, to=dt))
            outs.append(onnx.helper.make_tensor_value_info(name, dt, ["batch", "length", D]))
    return outs


def manifest_outputs(outputs, num_layers, dim, residues_fp16=False):
    """model.json's "outputs" for build's outputs (None: the one embedding), as esm2graph writes."""
    res = []
    for lay, pooling in resolve_outputs(outputs or [(num_layers, "mean")], num_layers):
        per = pooling == "per-residue"
        res.append({"name": output_name(lay, pooling, num_layers), "layer": lay, "pooling": pooling,
                    "dtype": "float16" if per and residues_fp16 else "float32",
                    "shape": ["batch", "length", dim] if per else ["batch", dim]})
    return res


def _model(g, attention, outputs, custom_ops):
    """The ModelProto of g's nodes and initializers with the given graph outputs."""
    onnx, TP = g.onnx, g.TP
    inputs = [onnx.helper.make_tensor_value_info(n, TP.INT64, ["batch", "length"]) for n in ("input_ids", "attention_mask")]
    graph = onnx.helper.make_graph(g.nodes, f"esm2-{attention}", inputs, outputs, g.inits)
    opsets = [onnx.helper.make_opsetid("", 17), onnx.helper.make_opsetid(MS, 1)]
    if custom_ops:
        opsets.append(onnx.helper.make_opsetid(SEQEMBED_OPS, 1))
    model = onnx.helper.make_model(graph, opset_imports=opsets,
                                   producer_name="seqembed tools/esm2_graph.py")
    model.ir_version = 8
    return model


def save(model, path):
    """Write model to path; weights over ~1.8 GB go to path + '.data' (protobuf's 2 GB limit)."""
    import onnx
    big = sum(t.ByteSize() for t in model.graph.initializer) > 1_800_000_000
    if big:
        onnx.save_model(model, path, save_as_external_data=True, all_tensors_to_one_file=True,
                        location=path.rsplit("/", 1)[-1] + ".data", size_threshold=1024)
    else:
        onnx.save_model(model, path)
