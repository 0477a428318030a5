#!/usr/bin/env python3
"""Attention kernels at a model's head shape on real length-sorted token-budget batches (bench/gpu.sh
mode attn): how fast a varlen (ragged, unpadded) attention other than ONNX Runtime's could run our
packed batches, before building one as a custom op (#15).

The FASTA's lengths (truncated at --max-length, +2 for BOS/EOS) are sorted longest first and packed
greedily under --max-batch-tokens, as seqembed's packed path packs them (no padding). For each
kernel every batch runs on random float16 q, k, v of [tokens, heads, head_dim] (bidirectional, no
mask beyond the sequence bounds); the time is the sum over batches of CUDA-event times, each batch
run --repeat times after --warmup runs (median). Reported per kernel: microseconds per batch (mean),
useful TFLOP/s (4 · Σ L² · heads · head_dim over the time), and for the varlen kernels the largest
|difference| from the first that ran, on the first batch, as a check that they compute the same thing.

Kernels (each skipped with its error when this torch cannot run it):
  flash-varlen   torch's FlashAttention-2 varlen forward (aten._flash_attention_forward with
                 cu_seqlens): the algorithm ONNX Runtime's PackedMultiHeadAttention runs here
  cudnn-varlen   torch's cuDNN SDPA forward with cu_seqlens (aten._cudnn_attention_forward,
                 ragged THD layout): cuDNN's Hopper kernels on the same unpadded batches
  cudnn-padded   scaled_dot_product_attention with only the cuDNN backend on each batch padded to
                 its longest sequence, no mask (sorted batches pad little; the padded rows' work is
                 counted as waste: TFLOP/s are of the useful FLOPs, the outputs not compared)
  flash-padded   the same padded batches through the flash backend

    python3 bench/attn_probe.py --fasta db8000.fasta --heads 20 --head-dim 64 --json-out attn.json
"""
import argparse
import json
import statistics
import sys

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from torch_baseline import read_fasta  # the bench's one FASTA reader (.gz/.xz too)


def lengths(path, max_length):
    """Token counts of the FASTA's records: residues truncated at max_length, plus BOS and EOS."""
    return [min(len(seq), max_length) + 2 for _, seq in read_fasta(path)]


def pack(lens, budget):
    batches, cur, tok = [], [], 0
    for n in sorted(lens, reverse=True):
        if cur and tok + n > budget:
            batches.append(cur)
            cur, tok = [], 0
        cur.append(n)
        tok += n
    if cur:
        batches.append(cur)
    return batches


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fasta", required=True)
    ap.add_argument("--heads", type=int, required=True)
    ap.add_argument("--head-dim", type=int, default=64)
    ap.add_argument("--max-batch-tokens", type=int, default=16384)
    ap.add_argument("--max-length", type=int, default=1022)
    ap.add_argument("--batches", type=int, default=40, help="batches timed, spread evenly over the pass")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--kernels", help="comma list of the kernels to run (default all)")
    ap.add_argument("--json-out")
    a = ap.parse_args()

    dev = torch.device("cuda")
    allb = pack(lengths(a.fasta, a.max_length), a.max_batch_tokens)
    step = max(1, len(allb) // a.batches)
    batches = allb[::step][: a.batches]
    H, D = a.heads, a.head_dim
    scale = D ** -0.5
    gen = torch.Generator(device=dev).manual_seed(0)
    data = []
    for b in batches:
        T = sum(b)
        q, k, v = (torch.randn(T, H, D, device=dev, dtype=torch.float16, generator=gen) for _ in range(3))
        cu = torch.tensor([0] + list(torch.tensor(b).cumsum(0).tolist()), device=dev, dtype=torch.int32)
        data.append((b, q, k, v, cu))

    def flash_varlen(b, q, k, v, cu):
        return torch.ops.aten._flash_attention_forward(q, k, v, cu, cu, max(b), max(b), 0.0, False, False,
                                                       scale=scale)[0]

    def cudnn_varlen(b, q, k, v, cu):  # [T, H, D], as torch's nested-tensor path passes it
        return torch.ops.aten._cudnn_attention_forward(q, k, v, None, cu, cu, max(b), max(b), False, 0.0, False,
                                                       False, scale=scale)[0]

    def padded_kernel(backend):
        cache = {}

        def call(b, q, k, v, cu):
            if id(q) not in cache:  # padded copies made once per batch, outside the timing
                S, pads = max(b), []
                for x in (q, k, v):
                    p = x.new_zeros(len(b), S, H, D)
                    off = 0
                    for i, n in enumerate(b):
                        p[i, :n] = x[off:off + n]
                        off += n
                    pads.append(p.transpose(1, 2))
                cache[id(q)] = pads
            qp, kp, vp = cache[id(q)]
            with sdpa_kernel([backend]):
                return F.scaled_dot_product_attention(qp, kp, vp, scale=scale)

        return call

    kernels = [("flash-varlen", flash_varlen, False), ("cudnn-varlen", cudnn_varlen, False),
               ("cudnn-padded", padded_kernel(SDPBackend.CUDNN_ATTENTION), True),
               ("flash-padded", padded_kernel(SDPBackend.FLASH_ATTENTION), True)]

    if a.kernels:
        want = set(a.kernels.split(","))
        kernels = [kn for kn in kernels if kn[0] in want]
    flops = sum(4 * sum(n * n for n in b) * H * D for b in batches)
    print(f"attn: {len(batches)} of {len(allb)} batches, heads {H}, head_dim {D}, "
          f"{sum(sum(b) for b in batches)} tokens, {flops / 1e9:.1f} GFLOP", flush=True)
    results, ref = [], None
    for name, fn, pad in kernels:
        try:
            first = fn(*data[0])
            torch.cuda.synchronize()
        except Exception as e:  # noqa: BLE001 (reported, not fatal: the probe compares what runs)
            msg = f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
            print(f"attn kernel={name} error={msg!r}", flush=True)
            results.append({"kernel": name, "error": msg})
            continue
        diff = None  # padded runs attend to the padding too: their outputs are not compared
        if not pad:
            if ref is None:
                ref = first
            else:
                diff = float((first.float() - ref.float()).abs().max())
        total_us = 0.0
        for d in data:
            for _ in range(a.warmup):
                fn(*d)
            times = []
            for _ in range(a.repeat):
                s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                s.record()
                fn(*d)
                e.record()
                e.synchronize()
                times.append(s.elapsed_time(e) * 1000)
            total_us += statistics.median(times)
        r = {"kernel": name, "us_per_batch": total_us / len(data), "tflops": flops / (total_us * 1e-6) / 1e12,
             "max_abs_vs_first": diff}
        results.append(r)
        print(f"attn kernel={name} us_per_batch={r['us_per_batch']:.1f} tflops={r['tflops']:.1f} "
              f"max_abs_vs_first={diff}", flush=True)
    try:  # torch refuses to name a cuDNN other than its own (the ORT bundle's on LD_LIBRARY_PATH)
        cudnn = torch.backends.cudnn.version()
    except RuntimeError as e:
        cudnn = str(e).splitlines()[0][:200]
    doc = {"heads": H, "head_dim": D, "max_batch_tokens": a.max_batch_tokens, "batches_timed": len(batches),
           "batches": len(allb), "gflop": flops / 1e9, "device": torch.cuda.get_device_name(), "torch": torch.__version__,
           "cudnn": cudnn, "kernels": results}
    if a.json_out:
        with open(a.json_out, "w") as f:
            json.dump(doc, f)
    if not any("tflops" in r for r in results):
        sys.exit("attn_probe.py: no kernel ran")


if __name__ == "__main__":
    main()
