#!/usr/bin/env python3
"""Export an ESM-2 model to ONNX with its mean-pooling head, for seqembed.

The graph takes ``input_ids`` and ``attention_mask`` (int64, [batch, length], ESM alphabet, <cls> ...
<eos> then <pad>) and returns ``embedding`` (float32, [batch, dim]): the mean of the last hidden
state over residue positions only (no <cls>, <eos> or padding), computed inside the graph in float32.

Models come from ``--hf NAME`` (a local path or a hub name, where a hub is reachable) or from an
ESM-2 size preset with seeded random weights (``--preset``), which is how GPU runs are made on a
machine with no network. The script writes ``OUT/model.onnx`` (plus ``model.onnx.data`` when the
weights do not fit a 2 GB protobuf) and ``OUT/model.json``, the manifest the Go worker reads, then
checks ONNX Runtime against PyTorch at several lengths and batch sizes before it reports success.

``--fused mha|packed`` writes the graph directly from the weights with ONNX Runtime's fused
operators instead of tracing (tools/esm2_graph.py: fused attention, rotary, SkipLayerNorm,
BiasGelu; ``packed`` also removes padding inside the graph and needs the CUDA EP). Its CPU check
runs an float32 twin of the same graph (the ``mha`` form with a 2-D key mask, which the CPU EP
runs) against PyTorch; the written fp16 / packed file itself is checked on the GPU by
gpurun's TestGPUGoldenParity against the float32 golden vectors.

    python3 tools/export_esm2.py --preset tiny --out testdata/esm2-tiny \
        --golden testdata/golden-input.fasta --golden-out testdata/esm2-tiny/golden.json
"""
import argparse
import hashlib
import json
import os
import sys
import time

import numpy as np
import torch

# ESM-2 architecture presets (fair-esm names). "tiny" is ours: small enough to commit.
PRESETS = {
    "tiny": dict(num_hidden_layers=2, hidden_size=64, num_attention_heads=4, intermediate_size=256),
    "t6_8M": dict(num_hidden_layers=6, hidden_size=320, num_attention_heads=20, intermediate_size=1280),
    "t12_35M": dict(num_hidden_layers=12, hidden_size=480, num_attention_heads=20, intermediate_size=1920),
    "t30_150M": dict(num_hidden_layers=30, hidden_size=640, num_attention_heads=20, intermediate_size=2560),
    "t33_650M": dict(num_hidden_layers=33, hidden_size=1280, num_attention_heads=20, intermediate_size=5120),
    "t36_3B": dict(num_hidden_layers=36, hidden_size=2560, num_attention_heads=40, intermediate_size=10240),
}

# The ESM alphabet (fair-esm / HF EsmTokenizer order). The Go tokeniser hard-codes the same ids.
VOCAB = ["<cls>", "<pad>", "<eos>", "<unk>", "L", "A", "G", "V", "S", "E", "R", "T", "I", "D", "P",
         "K", "Q", "N", "F", "Y", "M", "H", "W", "C", "X", "B", "U", "Z", "O", ".", "-", "<null_1>",
         "<mask>"]
RESIDUES = "LAGVSERTIDPKQNFYMHWCXBUZO"
CLS, PAD, EOS, MASK = 0, 1, 2, 32
MAX_RESIDUES = 1022
# --fused auto: up to this hidden size the padded "mha" graph with CUDA graphs beats the packed
# graph (8M: 1.35x raw, 1.46x end to end; 35M: even raw, 1.07x end to end); above it packed wins
# (650M: 1.08x over mha with graphs). Measured on an H200, docs/perf.md 2026-11-25 (the script
# that ran it, bench/gpu_graphs.sh, is in git history; bench/gpu.sh runs such comparisons now).
AUTO_MHA_MAX_HIDDEN = 480  # positions 1026 minus <cls>, <eos> and fair-esm's margin


def esm_config(preset):
    from transformers import EsmConfig
    return EsmConfig(
        vocab_size=len(VOCAB), mask_token_id=MASK, pad_token_id=PAD,
        max_position_embeddings=1026, position_embedding_type="rotary",
        emb_layer_norm_before=False, token_dropout=True, layer_norm_eps=1e-5,
        hidden_act="gelu", hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
        **PRESETS[preset])


class Pooled(torch.nn.Module):
    """EsmModel plus masked mean pooling over residues, in float32."""

    def __init__(self, esm):
        super().__init__()
        self.esm = esm

    def forward(self, input_ids, attention_mask):
        h = self.esm(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        keep = (attention_mask != 0) & (input_ids != CLS) & (input_ids != EOS)
        w = keep.to(torch.float32).unsqueeze(-1)
        s = (h.to(torch.float32) * w).sum(dim=1)
        n = w.sum(dim=1).clamp(min=1.0)
        return s / n


def reset_rotary_caches(model):
    # HF's RotaryEmbedding caches cos/sin per length in Python; a cache hit during tracing would
    # bake one length into the graph, so start every export with empty caches.
    for m in model.modules():
        if hasattr(m, "_seq_len_cached"):
            m._seq_len_cached = None


def load_model(args):
    from transformers import EsmModel
    kw = {"attn_implementation": args.attn}
    if args.hf:
        esm = EsmModel.from_pretrained(args.hf, add_pooling_layer=False, **kw)
        name = args.name or os.path.basename(args.hf.rstrip("/"))
    else:
        torch.manual_seed(args.seed)
        cfg = esm_config(args.preset)
        cfg._attn_implementation = args.attn
        esm = EsmModel(cfg, add_pooling_layer=False)
        # Random init gives tiny weights; scale the embeddings so the output is not near-constant.
        with torch.no_grad():
            esm.embeddings.word_embeddings.weight.normal_(0.0, 1.0)
        if getattr(args, "outlier_channels", 0):  # callers such as bench/torch_baseline.py pass no such field
            outlier_channels(esm, args.outlier_channels, args.seed)
        name = args.name or f"esm2-{args.preset}"
    esm.eval()
    return esm, name


def outlier_channels(esm, sigma, seed):
    """Give random weights the activation outliers of trained transformers, for FP8 accuracy
    checks, without changing what the model computes: every channel c entering a projection is
    scaled by f_c = exp(sigma * z_c), z_c ~ N(0, 1) (log-normal, heavy-tailed: at sigma 1.5 about one
    channel in 100 is 33x larger), and the projection's input column c by 1 / f_c. The channels are
    the outputs of each block's two LayerNorms (gain and bias; into q, k, v and into fc1) and of the
    value projection (its rows and bias; attention is linear in v, into the output projection).
    fc2's input (after GELU) is left as is. The float32 model is the same function (up to rounding),
    so the check measures how per-token FP8 scales cope with heavy-tailed channels."""
    gen = torch.Generator().manual_seed(seed + 1)

    def factors(n):
        return torch.exp(sigma * torch.randn(n, generator=gen))

    with torch.no_grad():
        for lay in esm.encoder.layer:
            att = lay.attention
            f = factors(att.LayerNorm.weight.shape[0])
            att.LayerNorm.weight.mul_(f)
            att.LayerNorm.bias.mul_(f)
            for lin in (att.self.query, att.self.key, att.self.value):
                lin.weight.div_(f[None, :])
            f = factors(att.self.value.weight.shape[0])
            att.self.value.weight.mul_(f[:, None])
            att.self.value.bias.mul_(f)
            att.output.dense.weight.div_(f[None, :])
            f = factors(lay.LayerNorm.weight.shape[0])
            lay.LayerNorm.weight.mul_(f)
            lay.LayerNorm.bias.mul_(f)
            lay.intermediate.dense.weight.div_(f[None, :])


def check_e4m3(model):
    """The graph builder's E4M3 rounding against PyTorch's float8_e4m3fn cast on one layer's
    weights (in range, so saturation does not enter): exits on any differing code."""
    import esm2_graph
    w = model.esm.encoder.layer[0].intermediate.dense.weight.detach().float().cpu()
    codes, scale = esm2_graph.quantize_weight(w.numpy())
    want = (w / torch.from_numpy(scale)[:, None]).to(torch.float8_e4m3fn).view(torch.uint8).numpy()
    bad = int((codes != want).sum())
    print(f"fp8: E4M3 rounding vs torch.float8_e4m3fn on {codes.size} weights: {bad} differ", file=sys.stderr)
    if bad:
        sys.exit(f"fp8: {bad} E4M3 codes differ from PyTorch's cast")


# HF EsmModel parameter names -> fair-esm ESM-2 names (fair-esm's esm/model/esm2.py; its
# checkpoints prefix them with "encoder.sentence_encoder.", which fair-esm's loader strips).
FAIRESM_LAYER = {
    "attention.self.query": "self_attn.q_proj",
    "attention.self.key": "self_attn.k_proj",
    "attention.self.value": "self_attn.v_proj",
    "attention.output.dense": "self_attn.out_proj",
    "attention.LayerNorm": "self_attn_layer_norm",
    "intermediate.dense": "fc1",
    "output.dense": "fc2",
    "LayerNorm": "final_layer_norm",
}


def fairesm_state_dict(esm):
    """The fair-esm names and tensors of EsmModel esm's weights (float32)."""
    out = {"embed_tokens.weight": esm.embeddings.word_embeddings.weight,
           "emb_layer_norm_after.weight": esm.encoder.emb_layer_norm_after.weight,
           "emb_layer_norm_after.bias": esm.encoder.emb_layer_norm_after.bias}
    for i, lay in enumerate(esm.encoder.layer):
        mods = dict(lay.named_modules())
        for hf, fe in FAIRESM_LAYER.items():
            for p in ("weight", "bias"):
                out[f"layers.{i}.{fe}.{p}"] = getattr(mods[hf], p)
        hd = esm.config.hidden_size // esm.config.num_attention_heads
        out[f"layers.{i}.self_attn.rot_emb.inv_freq"] = 1.0 / (10000 ** (torch.arange(0, hd, 2).float() / hd))
    return {"encoder.sentence_encoder." + k: v.detach().float().cpu().clone() for k, v in out.items()}


def save_fairesm(esm, path):
    cfg = esm.config
    torch.save({"model": fairesm_state_dict(esm),
                "cfg": {"model": {"encoder_layers": cfg.num_hidden_layers, "encoder_embed_dim": cfg.hidden_size,
                                  "encoder_ffn_embed_dim": cfg.intermediate_size,
                                  "encoder_attention_heads": cfg.num_attention_heads,
                                  "token_dropout": bool(cfg.token_dropout)}}}, path)


def encode(seqs, length=None):
    rows = [[CLS] + [VOCAB.index(c) for c in s] + [EOS] for s in seqs]
    L = length or max(len(r) for r in rows)
    ids = np.full((len(rows), L), PAD, dtype=np.int64)
    mask = np.zeros((len(rows), L), dtype=np.int64)
    for i, r in enumerate(rows):
        ids[i, :len(r)] = r
        mask[i, :len(r)] = 1
    return ids, mask


def random_seqs(rng, n, lo, hi):
    std = "LAGVSERTIDPKQNFYMHWC"
    return ["".join(rng.choice(list(std), size=int(rng.integers(lo, hi + 1)))) for _ in range(n)]


def export(model, path, dtype, opset, device):
    reset_rotary_caches(model)
    ids, mask = encode(["MKTAYIAKQRQISFVKSHFSRQ", "MKV"], length=40)
    args = (torch.from_numpy(ids).to(device), torch.from_numpy(mask).to(device))
    dyn = {"input_ids": {0: "batch", 1: "length"}, "attention_mask": {0: "batch", 1: "length"},
           "embedding": {0: "batch"}}
    t0 = time.time()
    common = dict(input_names=["input_ids", "attention_mask"], output_names=["embedding"],
                  dynamic_axes=dyn, opset_version=opset)
    try:
        # The TorchScript exporter traces HF's Python-side rotary cache correctly (caches reset).
        torch.onnx.export(model, args, path, do_constant_folding=True, dynamo=False, **common)
    except Exception as e:  # torch builds without the TorchScript exporter
        print(f"export: TorchScript exporter failed ({e}); trying dynamo", file=sys.stderr)
        reset_rotary_caches(model)
        torch.onnx.export(model, args, path, dynamo=True, external_data=True, **common)
    print(f"export: {path} in {time.time() - t0:.1f}s", file=sys.stderr)


def optimize(path, num_heads, hidden, fp16):
    """ORT transformer optimizer: LayerNorm/SkipLayerNorm, GELU/BiasGelu fusions. Its
    RotaryEmbedding fusion breaks ESM at batch > 1 and attention fusion does not match this
    graph yet, so both stay off. Rewrites path in place and returns the fused-op statistics."""
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model
    fo = FusionOptions("bert")
    fo.enable_rotary_embeddings = False
    fo.enable_attention = False
    t0 = time.time()
    m = optimize_model(path, model_type="bert", num_heads=num_heads, hidden_size=hidden,
                       optimization_options=fo, opt_level=0, use_gpu=True)
    stats = m.get_fused_operator_statistics()
    m.save_model_to_file(path)
    print(f"optimize: {time.time() - t0:.1f}s, fused {stats}", file=sys.stderr)
    return {k: v for k, v in stats.items() if v}


def check_fused_twin(model, device, rng, max_bytes=1_800_000_000):
    """CPU check of the fused graph builder: a float32 'mha' twin with a 2-D key mask (the form the
    CPU EP runs) against PyTorch. Models whose float32 weights exceed max_bytes are skipped (the
    twin would need external data); the GPU golden test covers them."""
    import onnxruntime as ort
    import esm2_graph
    nbytes = sum(p.numel() for p in model.esm.parameters()) * 4
    if nbytes > max_bytes:
        print(f"parity: float32 twin ({nbytes / 2**30:.1f} GiB) not checked on the CPU; "
              "run gpurun's TestGPUGoldenParity on the written file", file=sys.stderr)
        return None
    twin = esm2_graph.build(model.esm, fp16=False, attention="mha", mask_form="2d")
    sess = ort.InferenceSession(twin.SerializeToString(), providers=["CPUExecutionProvider"])
    return compare_cases(model, sess, device, rng, "fused float32 twin")


def check_outputs_twin(esm, outputs, tol=1e-3):
    """CPU check of --outputs: a float32 'mha' twin with the outputs against HF's hidden_states
    (fair-esm repr_layers), pooled as tools/reference_outputs.py does, on a padded batch of 3;
    exits on a miss (max abs > tol)."""
    import onnxruntime as ort
    import esm2_graph
    nbytes = sum(p.numel() for p in esm.parameters()) * 4
    if nbytes > 1_800_000_000:
        print("outputs: float32 twin too large for the CPU check; skipped", file=sys.stderr)
        return
    twin = esm2_graph.build(esm, fp16=False, attention="mha", mask_form="2d", outputs=outputs)
    sess = ort.InferenceSession(twin.SerializeToString(), providers=["CPUExecutionProvider"])
    seqs = ["MKTAYIAKQRQISFVKSHFSRQ", "A", "GSHMLEDPVDAFQLSVEEKKKQLTSEEVAYALRENTR"]
    ids, mask = encode(seqs)
    names = [o.name for o in sess.get_outputs()]
    got = dict(zip(names, sess.run(names, {"input_ids": ids, "attention_mask": mask})))
    L, worst = esm.config.num_hidden_layers, 0.0
    dev = next(esm.parameters()).device
    for i, seq in enumerate(seqs):
        t = torch.tensor([[CLS] + [VOCAB.index(c) for c in seq] + [EOS]], device=dev)
        with torch.no_grad():
            hs = [h.float().cpu() for h in
                  esm(input_ids=t, attention_mask=torch.ones_like(t), output_hidden_states=True).hidden_states]
        n = len(seq)
        for lay, pooling in outputs:
            h = hs[lay][0].numpy()
            name = esm2_graph.output_name(lay, pooling, L)
            want = {"mean": h[1:-1].mean(0), "bos": h[0], "per-residue": h[1:-1]}[pooling]
            g = got[name][i] if pooling != "per-residue" else got[name][i, 1:n + 1]
            worst = max(worst, float(np.abs(g.astype(np.float32) - want).max()))
    print(f"outputs: float32 twin vs PyTorch hidden_states max abs {worst:.3g}", file=sys.stderr)
    if worst > tol:
        sys.exit(f"outputs parity failed: max abs {worst:.3g} > {tol}")


def sha256(path):
    h = hashlib.sha256()
    for p in [path, path + ".data"]:
        if os.path.exists(p):
            with open(p, "rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    h.update(chunk)
    return h.hexdigest()


def torch_embed(model, seqs, device, batch_cap=8):
    out = []
    with torch.no_grad():
        for i in range(0, len(seqs), batch_cap):
            ids, mask = encode(seqs[i:i + batch_cap])
            out.append(model(torch.from_numpy(ids).to(device), torch.from_numpy(mask).to(device))
                       .float().cpu().numpy())
    return np.concatenate(out)


def check_parity(model, path, device, fp16, rng):
    """ONNX Runtime (CPU) against PyTorch on the same weights: batch sizes 1..8, padded lengths."""
    import onnxruntime as ort
    if fp16:
        print("parity: fp16 graph not checked on the CPU EP here (checked by the Go GPU tests)", file=sys.stderr)
        return None
    so = ort.SessionOptions()
    sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    return compare_cases(model, sess, device, rng, "export")


def compare_cases(model, sess, device, rng, what):
    """ORT session vs PyTorch (one sequence at a time, unpadded) at batch sizes 1..8, lengths
    5..1022, padded to 64-multiples; exits on a miss (max abs > 1e-3 or cosine < 0.9999)."""
    worst_abs, worst_cos = 0.0, 1.0
    for n, lo, hi in [(1, 5, 5), (3, 10, 60), (8, 30, 200), (4, 300, 600), (2, 1000, 1022)]:
        seqs = random_seqs(rng, n, lo, hi)
        ids, mask = encode(seqs, length=((max(map(len, seqs)) + 2 + 63) // 64) * 64)
        got = sess.run(["embedding"], {"input_ids": ids, "attention_mask": mask})[0]
        want = torch_embed(model, seqs, device, batch_cap=1)
        worst_abs = max(worst_abs, float(np.abs(got - want).max()))
        cos = (got * want).sum(1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(want, axis=1))
        worst_cos = min(worst_cos, float(cos.min()))
    print(f"parity ({what}): max abs {worst_abs:.3g}, min cosine {worst_cos:.8f}", file=sys.stderr)
    if worst_abs > 1e-3 or worst_cos < 0.9999:
        sys.exit(f"parity check failed ({what}): max abs {worst_abs}, min cosine {worst_cos}")
    return {"max_abs": worst_abs, "min_cosine": worst_cos}


def read_fasta(path):
    recs, rid, seq = [], None, []
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line.startswith(">"):
                if rid is not None:
                    recs.append((rid, "".join(seq)))
                rid, seq = line[1:].split()[0], []
            elif line:
                seq.append(line)
    if rid is not None:
        recs.append((rid, "".join(seq)))
    return recs


def golden(model, device, fasta, out_path, tmpdir):
    """Token ids from HF EsmTokenizer and float32 PyTorch embeddings (one sequence at a time, unpadded)."""
    from transformers import EsmTokenizer
    vocab = os.path.join(tmpdir, "vocab.txt")
    with open(vocab, "w") as f:
        f.write("\n".join(VOCAB) + "\n")
    tok = EsmTokenizer(vocab)
    recs = []
    for rid, s in read_fasta(fasta):
        s = s[:MAX_RESIDUES]
        ids = tok(s)["input_ids"]
        emb = torch_embed(model, [s], device, batch_cap=1)[0]
        recs.append({"id": rid, "sequence": s, "token_ids": ids,
                     "embedding": [float(x) for x in emb]})
    with open(out_path, "w") as f:
        json.dump({"tokenizer": "transformers.EsmTokenizer", "records": recs}, f)
    print(f"golden: {len(recs)} records -> {out_path}", file=sys.stderr)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--hf", help="HF model name or local directory (facebook/esm2_t33_650M_UR50D)")
    src.add_argument("--preset", choices=sorted(PRESETS), help="ESM-2 architecture with random weights")
    ap.add_argument("--out", required=True, help="output directory (model.onnx, model.json)")
    ap.add_argument("--name", help="model name in the manifest (default esm2-PRESET or the HF name)")
    ap.add_argument("--seed", type=int, default=0, help="weight seed for --preset (default 0)")
    ap.add_argument("--fp16", action="store_true", help="export weights and activations in float16 "
                    "(inputs int64, pooled output float32); needs a CUDA device")
    ap.add_argument("--attn", default="eager", choices=["eager", "sdpa"], help="attention implementation traced")
    ap.add_argument("--opset", type=int, default=17)
    ap.add_argument("--max-length", type=int, default=MAX_RESIDUES, help="max residues per sequence (default 1022)")
    ap.add_argument("--golden", help="FASTA whose PyTorch embeddings and HF token ids are written to --golden-out")
    ap.add_argument("--golden-out", help="golden JSON path")
    ap.add_argument("--no-check", action="store_true", help="skip the ONNX Runtime parity check")
    ap.add_argument("--optimize", action="store_true", help="run ORT's transformer optimizer (LayerNorm and "
                    "GELU fusions; rotary fusion off) on the exported graph")
    ap.add_argument("--fused", choices=["auto", "mha", "packed"], help="write the fused graph from the weights "
                    "(tools/esm2_graph.py) instead of tracing: fused attention with key lengths ('mha', CPU "
                    "and CUDA; static shapes, so the worker replays CUDA graphs), padding removed inside the "
                    "graph ('packed', CUDA only), or 'auto': the faster on an H200 (docs/perf.md), mha up to "
                    f"hidden size {AUTO_MHA_MAX_HIDDEN} (ESM-2 8M, 35M: launch-bound), packed above")
    ap.add_argument("--packed-layout", choices=["rows", "sequence"], default="rows", help="--fused packed: "
                    "packed activations as [tokens, 1, dim] (rows, default) or [1, tokens, dim] (sequence)")
    ap.add_argument("--custom-ops", action="store_true", help="--fused mha|packed --fp16: bias + rotary as seqembed's "
                    "ai.seqembed.BiasRotary (build the library into --out with scripts/build-ops.sh "
                    "OUT/libseqembed_ops.so)")
    ap.add_argument("--precision", choices=["fp16", "fp8"], default="fp16", help="--fused packed|mha --fp16 "
                    "--custom-ops: fp8 runs every block's six projections as FP8 GEMMs (E4M3 weights with "
                    "per-output-channel scales, activations quantised per token; needs a GPU with FP8 tensor "
                    "cores: Ada, Hopper). Check it on your weights: seqembed check-precision")
    ap.add_argument("--fp8-projections", choices=["all", "ffn"], default="all", help="--precision fp8: which "
                    "projections run as FP8 GEMMs: all six of every block (default) or only the FFN's two (fc1, "
                    "fc2: two thirds of the GEMM work; attention's q, k, v, o stay fp16) for more accuracy")
    ap.add_argument("--fused-gelu", action="store_true", help="--fused packed|mha --fp16 --custom-ops: the FFN's "
                    "GELU as the tanh approximation, not ESM's erf GELU (check it with seqembed check-precision). "
                    "precision fp16: each fc1 as one cuBLASLt GEMM with bias and GELU in its epilogue "
                    "(ai.seqembed.Fp16Linear) instead of MatMul + BiasGelu; fp8: the tanh GELU computed in the "
                    "QuantizeE4M3 of fc1's output (cheaper than the erf)")
    ap.add_argument("--fp16-linear", action="store_true", help="--fused packed|mha --fp16 --custom-ops: every "
                    "float16 projection as ai.seqembed.Fp16Linear (cuBLASLt, weights [out, in]) instead of ORT's MatMul: faster at ESM-2's shapes, the same arithmetic")
    ap.add_argument("--fused-residual", action="store_true", help="--fp16-linear: every float16 output projection "
                    "and fc2 adds the residual stream inside its GEMM (cuBLASLt's C), and a LayerNormalization "
                    "replaces SkipLayerNormalization: one pass over the activations fewer per residual")
    ap.add_argument("--fused-ln-quant", action="store_true", help="--precision fp8: every residual add + "
                    "LayerNorm that only an FP8 GEMM reads also quantises its output (ai.seqembed.SkipLayerNormE4M3), "
                    "instead of writing float16 for a QuantizeE4M3 to read")
    ap.add_argument("--cudnn-attention", action="store_true", help="--fused packed --custom-ops: attention as "
                    "ai.seqembed.RaggedAttention (cuDNN's SDPA on the packed tokens) instead of ORT's "
                    "PackedMultiHeadAttention; the ops library must be built with SEQEMBED_OPS_CUDNN (scripts/build-ops.sh)")
    ap.add_argument("--outlier-channels", type=float, default=0.0, metavar="SIGMA", help="--preset only: "
                    "give the activations entering the projections heavy-tailed channels (log-normal factors "
                    "exp(SIGMA*z), undone in the weights that read them: the same function), as trained models "
                    "have; for FP8 accuracy checks")
    ap.add_argument("--outputs", help="--fused only: the graph's outputs, comma-separated pooling:layer pairs, "
                    "e.g. mean:-1,bos:-1,per-residue:20 (poolings mean, bos, per-residue; layers as fair-esm "
                    "repr_layers: 0 = embeddings, N = last layer after the final LayerNorm, negative from the end). "
                    "Names: embedding (mean of the last layer), mean_lN, bos_lN, residues_lN. Default: embedding only")
    ap.add_argument("--residues-fp16", action="store_true", help="--outputs: write per-residue outputs as float16")
    ap.add_argument("--save-pretrained", metavar="DIR", help="also write the weights as a Hugging Face directory "
                    "(config.json + model.safetensors, save_pretrained): what `seqembed model` reads")
    ap.add_argument("--save-fairesm", metavar="FILE", help="also write the weights as a fair-esm checkpoint "
                    "(torch.save of {'model': state_dict with encoder.sentence_encoder.* keys, 'cfg': {'model': ...}})")
    args = ap.parse_args()
    if args.custom_ops and (not args.fused or not args.fp16):
        sys.exit("--custom-ops needs --fused mha|packed --fp16")
    if args.precision == "fp8" and not (args.fused and args.fp16 and args.custom_ops):
        sys.exit("--precision fp8 needs --fused packed|mha|auto --fp16 --custom-ops")
    if args.fused_gelu and not (args.fused and args.fp16 and args.custom_ops):
        sys.exit("--fused-gelu needs --fused packed|mha|auto --fp16 --custom-ops")
    if args.fp16_linear and not (args.fused and args.fp16 and args.custom_ops):
        sys.exit("--fp16-linear needs --fused packed|mha|auto --fp16 --custom-ops")
    if args.fused_residual and not args.fp16_linear:
        sys.exit("--fused-residual needs --fp16-linear")
    if args.fused_ln_quant and args.precision != "fp8":
        sys.exit("--fused-ln-quant needs --precision fp8")
    if args.fused_ln_quant and args.fused_residual:
        sys.exit("--fused-ln-quant and --fused-residual do not combine (SkipLayerNormE4M3 adds the residual itself)")
    if args.outlier_channels and not args.preset:
        sys.exit("--outlier-channels applies to --preset (random weights) only")
    if args.fused and args.optimize:
        sys.exit("--fused graphs are already fused; drop --optimize")
    if (args.outputs or args.residues_fp16) and not args.fused:
        sys.exit("--outputs and --residues-fp16 need --fused mha|packed|auto")
    if args.residues_fp16 and not args.outputs:
        sys.exit("--residues-fp16 needs --outputs with a per-residue output")

    device = "cuda" if torch.cuda.is_available() else "cpu"
    model, name = load_model(args)
    if args.fused == "auto":
        args.fused = "mha" if model.config.hidden_size <= AUTO_MHA_MAX_HIDDEN else "packed"
        print(f"--fused auto: {args.fused} (hidden size {model.config.hidden_size})", file=sys.stderr)
    if args.fp16 and device != "cuda" and not args.fused:
        sys.exit("--fp16 needs a CUDA device for the traced export (or use --fused)")
    os.makedirs(args.out, exist_ok=True)
    if args.save_pretrained:
        model.save_pretrained(args.save_pretrained, safe_serialization=True)
        print(f"save_pretrained: {args.save_pretrained}", file=sys.stderr)
    if args.save_fairesm:
        save_fairesm(model, args.save_fairesm)
        print(f"fair-esm checkpoint: {args.save_fairesm}", file=sys.stderr)
    pooled = Pooled(model).to(device)
    if args.golden:
        # Golden vectors always come from the float32 model: the reference an fp16 export is held to.
        golden(pooled, device, args.golden, args.golden_out, args.out)
        os.remove(os.path.join(args.out, "vocab.txt"))
    path = os.path.join(args.out, "model.onnx")
    rng = np.random.default_rng(args.seed)
    fused, parity = None, None
    outputs, out_info = None, None
    if args.fused:
        import esm2_graph
        if args.outputs:
            outputs = esm2_graph.resolve_outputs(esm2_graph.parse_outputs(args.outputs), model.config.num_hidden_layers)
        out_info = esm2_graph.manifest_outputs(outputs, model.config.num_hidden_layers, model.config.hidden_size,
                                               args.residues_fp16)
        t0 = time.time()
        graph = esm2_graph.build(model, fp16=args.fp16, attention=args.fused, packed_layout=args.packed_layout,
                                 custom_ops=args.custom_ops, outputs=outputs, residues_fp16=args.residues_fp16,
                                 precision=args.precision, fp8_projections=args.fp8_projections,
                                 fused_gelu=args.fused_gelu, fp16_linear=args.fp16_linear,
                                 fused_residual=args.fused_residual, fused_ln_quant=args.fused_ln_quant,
                                 cudnn_attention=args.cudnn_attention)
        if args.precision == "fp8":
            check_e4m3(pooled)
        esm2_graph.save(graph, path)
        fused = {}
        for n in graph.graph.node:
            if n.domain in ("com.microsoft", "ai.seqembed") or n.op_type in ("LayerNormalization", "MatMul", "Add"):
                fused[n.op_type] = fused.get(n.op_type, 0) + 1
        print(f"fused graph ({args.fused}): {path} in {time.time() - t0:.1f}s, ops {fused}", file=sys.stderr)
        del graph
        if not args.no_check:
            parity = check_fused_twin(pooled, device, rng)
            if outputs:
                check_outputs_twin(model, outputs)
    else:
        if args.fp16:
            pooled.esm.half()
        export(pooled, path, "float16" if args.fp16 else "float32", args.opset, device)
        if args.optimize:
            fused = optimize(path, model.config.num_attention_heads, model.config.hidden_size, args.fp16)
        parity = None if args.no_check else check_parity(pooled, path, device, args.fp16, rng)

    cfg = model.config
    manifest = {
        "name": name,
        "architecture": "esm2",
        "source": args.hf or f"preset:{args.preset}:seed{args.seed}",
        "model_file": "model.onnx",
        "sha256": sha256(path),
        "embedding_dim": cfg.hidden_size,
        "num_layers": cfg.num_hidden_layers,
        "num_heads": cfg.num_attention_heads,
        "alphabet": "esm",
        "residues": RESIDUES,
        "tokens": {"cls": CLS, "pad": PAD, "eos": EOS, "mask": MASK, "unk": 3},
        "max_length": args.max_length,
        "inputs": ["input_ids", "attention_mask"],
        # Multi-output graphs (--outputs) without a last-layer mean have no "embedding": "" and "".
        "output": "embedding" if not outputs or any(o["name"] == "embedding" for o in out_info) else "",
        "pooling": "mean" if not outputs or any(o["name"] == "embedding" for o in out_info) else "",
        "dtype": "float16" if args.fp16 else "float32",
        # fp8: the projections are FP8 GEMMs (activations and outputs stay "dtype").
        "precision": args.precision if args.fp16 else "fp32",
        # fp8 only: which projections are FP8 GEMMs (all, ffn)
        **({"fp8_projections": args.fp8_projections} if args.precision == "fp8" else {}),
        # --fused-gelu only: the FFN's GELU is the tanh approximation (ESM's is erf): cuBLASLt's epilogue
        # in fp16, QuantizeE4M3 gelu=2 in fp8
        **({"ffn_gelu": "tanh"} if args.fused_gelu else {}),
        "opset": args.opset,
        "parity": parity,
        "optimized": fused,
        "attention": args.fused or "traced",
        # Packed graphs use CUDA-only contrib ops (RemovePadding, PackedMultiHeadAttention).
        "requires": ["cuda"] if args.fused == "packed" or args.custom_ops else [],
        "custom_ops": "libseqembed_ops.so" if args.custom_ops else "",
        "exported": {"torch": torch.__version__, "transformers": __import__("transformers").__version__},
    }
    if outputs:  # after "pooling", as esm2graph writes it; absent for the one-embedding graph
        keys = list(manifest)
        at = keys.index("pooling") + 1
        manifest = {**{k: manifest[k] for k in keys[:at]}, "outputs": out_info, **{k: manifest[k] for k in keys[at:]}}
    with open(os.path.join(args.out, "model.json"), "w") as f:
        json.dump(manifest, f, indent=2)
        f.write("\n")
    print(json.dumps({k: manifest[k] for k in ("name", "embedding_dim", "dtype", "sha256")}))


if __name__ == "__main__":
    main()
