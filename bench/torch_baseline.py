#!/usr/bin/env python3
"""PyTorch reference throughput for ESM-2 mean-pooled embeddings (the baseline seqembed is compared to).

Builds the same model as tools/export_esm2.py (``--preset`` with seeded random weights, or ``--hf DIR``
for a local checkpoint), wraps it in its Pooled head, and embeds a FASTA file on one CUDA GPU with
greedy token-budget batching. Orders: 'file' packs consecutive records in file order (naive baseline);
'sorted' sorts by length (longest first) and then packs the same way (what a good pipeline does).
A batch holds rows while rows × (longest len + 2) <= --max-batch-tokens; no bucket rounding.

The timed pass covers tokenisation, pinned H2D copies, the forward pass and the D2H copy of the
pooled float32 embeddings into a numpy array (the D2H of batch i is collected after batch i+1 is
launched, so the CPU never idles the GPU needlessly). The first --warmup-batches batches are run
once beforehand and not counted. Sequences are truncated to --max-length residues like fair-esm;
bytes outside the ESM alphabet become <unk> (seqembed rejects them instead).

    python3 bench/torch_baseline.py --preset t33_650M --fasta bench-data/db8000.fasta.xz \
        --max-batch-tokens 16384 --order both --json-out $OUT/torch.json
"""
import argparse
import gzip
import json
import lzma
import os
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tools"))
import export_esm2 as ex  # noqa: E402

DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}


def read_fasta(path):
    """(id, sequence) records; same parsing as ex.read_fasta, plus .gz/.xz input."""
    opener = gzip.open if path.endswith(".gz") else lzma.open if path.endswith(".xz") else open
    recs, rid, seq = [], None, []
    with opener(path, "rt") as f:
        for line in f:
            line = line.strip()
            if line.startswith(">"):
                if rid is not None:
                    recs.append((rid, "".join(seq)))
                rid, seq = (line[1:].split() or [""])[0], []
            elif line:
                seq.append(line)
    if rid is not None:
        recs.append((rid, "".join(seq)))
    return recs


def make_lut():
    lut = np.full(256, ex.VOCAB.index("<unk>"), dtype=np.int64)
    for tid, tok in enumerate(ex.VOCAB):
        if len(tok) == 1:
            lut[ord(tok)] = tid
    return lut


def pack(order, lens, budget):
    """Greedy packing of indices (in the given order) while rows × (max len + 2) <= budget."""
    batches, cur, cur_max = [], [], 0
    for i in order:
        m = max(cur_max, int(lens[i]) + 2)
        if cur and (len(cur) + 1) * m > budget:
            batches.append(cur)
            cur, m = [], int(lens[i]) + 2
        cur.append(i)
        cur_max = m
    if cur:
        batches.append(cur)
    return batches


def encode_batch(idx, seqs, lut):
    """Pinned int64 input_ids / attention_mask, padded to the longest row (+ <cls>, <eos>)."""
    lens = np.array([len(seqs[i]) for i in idx], dtype=np.int64)
    rows, width = len(idx), int(lens.max()) + 2
    ids_t = torch.full((rows, width), ex.PAD, dtype=torch.int64, pin_memory=True)
    mask_t = torch.empty((rows, width), dtype=torch.int64, pin_memory=True)
    ids = ids_t.numpy()
    for r, i in enumerate(idx):
        n = len(seqs[i])
        ids[r, 0] = ex.CLS
        ids[r, 1:n + 1] = lut[np.frombuffer(seqs[i], dtype=np.uint8)]
        ids[r, n + 1] = ex.EOS
    mask_t.numpy()[:] = np.arange(width)[None, :] < (lens + 2)[:, None]
    return ids_t, mask_t


def run_pass(model, batches, seqs, lut, out):
    """Embed all batches into out[idx]; returns when every result is in host memory."""
    pending = None
    for idx in batches:
        ids, mask = encode_batch(idx, seqs, lut)
        emb = model(ids.to("cuda", non_blocking=True), mask.to("cuda", non_blocking=True))
        host = torch.empty(emb.shape, dtype=torch.float32, pin_memory=True)
        host.copy_(emb, non_blocking=True)
        ev = torch.cuda.Event()
        ev.record()
        if pending is not None:
            collect(pending, out)
        pending = (idx, host, ev)
    if pending is not None:
        collect(pending, out)


def collect(pending, out):
    idx, host, ev = pending
    ev.synchronize()
    out[idx] = host.numpy()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--preset", choices=sorted(ex.PRESETS), help="ESM-2 architecture, seeded random weights")
    src.add_argument("--hf", help="local Hugging Face ESM-2 checkpoint directory")
    ap.add_argument("--seed", type=int, default=0, help="weight seed for --preset (default 0)")
    ap.add_argument("--fasta", required=True, help="FASTA file (plain, .gz or .xz)")
    ap.add_argument("--max-batch-tokens", type=int, default=16384, help="padded tokens per batch (rows × length)")
    ap.add_argument("--max-length", type=int, default=ex.MAX_RESIDUES, help="truncate to this many residues")
    ap.add_argument("--order", choices=["file", "sorted", "both"], default="both")
    ap.add_argument("--dtype", choices=sorted(DTYPES), default="fp16")
    ap.add_argument("--attn", choices=["sdpa", "eager"], default="sdpa")
    ap.add_argument("--warmup-batches", type=int, default=3)
    ap.add_argument("--limit", type=int, help="use only the first N records")
    ap.add_argument("--json-out", help="write all results to this JSON file")
    ap.add_argument("--embeddings-out", help="write ids + float32 embeddings (file order) to this .npz")
    args = ap.parse_args()
    args.name = None  # ex.load_model reads it

    if not torch.cuda.is_available():
        sys.exit("torch_baseline: CUDA is not available; this benchmark needs a GPU")
    import transformers
    env = {"torch": torch.__version__, "transformers": transformers.__version__,
           "cuda": torch.version.cuda, "gpu": torch.cuda.get_device_name(0)}
    print(f"torch {env['torch']} (CUDA {env['cuda']}), transformers {env['transformers']}, GPU {env['gpu']}",
          flush=True)

    recs = read_fasta(args.fasta)[:args.limit]
    if not recs:
        sys.exit(f"torch_baseline: no records in {args.fasta}")
    ids = [r[0] for r in recs]
    seqs = [r[1][:args.max_length].encode("ascii", "replace") for r in recs]
    lens = np.array([len(s) for s in seqs], dtype=np.int64)
    truncated = sum(len(r[1]) > args.max_length for r in recs)
    print(f"{len(recs)} records, {int(lens.sum())} residues after truncation ({truncated} truncated)", flush=True)

    esm, name = ex.load_model(args)
    model = ex.Pooled(esm).to(device="cuda", dtype=DTYPES[args.dtype]).eval()
    attn_used = getattr(esm.config, "_attn_implementation", args.attn)
    print(f"model {name}: {esm.config.num_hidden_layers} layers, dim {esm.config.hidden_size}, "
          f"{args.dtype}, attention {attn_used}", flush=True)
    lut = make_lut()

    orders = ["file", "sorted"] if args.order == "both" else [args.order]
    results, embs = [], {}
    with torch.inference_mode():
        for order in orders:
            idx_order = range(len(seqs)) if order == "file" else sorted(range(len(seqs)), key=lambda i: -lens[i])
            batches = pack(idx_order, lens, args.max_batch_tokens)
            out = np.zeros((len(seqs), esm.config.hidden_size), dtype=np.float32)
            run_pass(model, batches[:args.warmup_batches], seqs, lut, out)
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            t0 = time.perf_counter()
            run_pass(model, batches, seqs, lut, out)
            torch.cuda.synchronize()
            secs = time.perf_counter() - t0
            real = int(lens.sum()) + 2 * len(seqs)
            padded = sum(len(b) * (int(lens[b].max()) + 2) for b in batches)
            res = {"order": order, "model": name, "dtype": args.dtype, "attn": attn_used,
                   "max_batch_tokens": args.max_batch_tokens, "sequences": len(seqs),
                   "residues": int(lens.sum()), "batches": len(batches),
                   "padding_efficiency": round(real / padded, 4), "seconds": round(secs, 3),
                   "residues_per_s": round(int(lens.sum()) / secs, 1),
                   "sequences_per_s": round(len(seqs) / secs, 2),
                   "peak_gpu_mem_gib": round(torch.cuda.max_memory_allocated() / 2**30, 3)}
            print(json.dumps(res), flush=True)
            results.append(res)
            embs[order] = out

    doc = {"env": env, "args": {k: v for k, v in vars(args).items() if k != "name"},
           "truncated": truncated, "results": results}
    if len(embs) == 2:  # same records, different batch composition: should agree up to dtype noise
        a, b = embs["file"], embs["sorted"]
        cos = (a * b).sum(1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-30)
        doc["orders_agree"] = {"max_abs": float(np.abs(a - b).max()), "min_cosine": float(cos.min())}
        print(f"file vs sorted embeddings: {json.dumps(doc['orders_agree'])}")
    if args.embeddings_out:
        np.savez(args.embeddings_out, ids=np.array(ids), embeddings=embs[orders[0]])
        print(f"embeddings ({orders[0]} run) -> {args.embeddings_out}")
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump(doc, f, indent=2)
            f.write("\n")

    print(f"\n{'order':<7} {'seqs':>7} {'batches':>7} {'pad_eff':>7} {'seconds':>8} {'res/s':>11} "
          f"{'seq/s':>9} {'peak GiB':>8}")
    for r in results:
        print(f"{r['order']:<7} {r['sequences']:>7} {r['batches']:>7} {r['padding_efficiency']:>7.3f} "
              f"{r['seconds']:>8.2f} {r['residues_per_s']:>11.0f} {r['sequences_per_s']:>9.1f} "
              f"{r['peak_gpu_mem_gib']:>8.2f}")


if __name__ == "__main__":
    main()
