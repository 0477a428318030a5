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

Modes (--mode, or --compile for --mode compile): 'eager' (the default, what docs/perf.md measured
first), 'compile' (torch.compile(model, dynamic=True), default inductor mode: the peer a strong
user would pick; 'reduce-overhead' re-records CUDA graphs per shape and was slower on these
dynamic shapes) or 'both' (eager, then compiled, on the same weights in one process). Before the
compiled pass the compiled model runs a warm-up that exercises the shape classes that can cost a
recompile (the first batches, a one-row batch, an unpadded batch, the last batch and a spread
between; --compile-warmup all runs the whole pass instead); its wall time is reported as
compile_seconds, apart from the timed pass, with the number of graphs compiled and any recompile
during the timed pass (recompiles_timed: 0 means the timed pass ran at steady state). For the
compiled model HF's rotary cos/sin cache, which re-computes its tables in Python whenever the
length changes (one recompile per new length under torch.compile), is replaced by slices of
tables built once for all positions: the same values, no Python-side state (--static-rotary).

    python3 bench/torch_baseline.py --preset t33_650M --fasta bench-data/db8000.fasta.xz \
        --max-batch-tokens 16384 --order both --json-out $OUT/torch.json
    python3 bench/torch_baseline.py --preset t6_8M --fasta db8000.fasta --order sorted --mode both
"""
import argparse
import gzip
import json
import lzma
import os
import sys
import time
import types

import numpy as np
import torch
import torch._dynamo  # noqa: F401 (torch.compile's config; a local import would shadow torch in main)

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


def warmup_batches(batches, lens, first, spread=4):
    """Indices of the batches a compiled model warms up on: the first `first` batches (the
    longest, where the first compile happens), the first one-row batch, the first unpadded and the
    first padded batch of several rows (HF may take another path without padding), the last batch
    and `spread` batches evenly between: each class of shape that can fail a guard of the
    compiled graph."""
    n = len(batches)
    pick = list(range(min(first, n)))
    one_row = next((i for i, b in enumerate(batches) if len(b) == 1), None)
    widths = [len({int(lens[j]) for j in b}) for b in batches]
    unpadded = next((i for i, b in enumerate(batches) if len(b) > 1 and widths[i] == 1), None)
    padded = next((i for i in range(n) if widths[i] > 1), None)
    pick += [i for i in (one_row, unpadded, padded, n - 1) if i is not None]
    pick += [round(k * (n - 1) / (spread + 1)) for k in range(1, spread + 1)] if n > 1 else []
    return sorted({i for i in pick if 0 <= i < n})


def static_rotary(esm):
    """Swaps HF's per-length rotary cache (RotaryEmbedding._update_cos_sin_tables recomputes cos/sin
    in Python whenever the length changes; torch.compile then guards on the last length and
    recompiles for each new one) for slices of tables built once for every position, with the
    same formula on the same inv_freq: the same values, no Python-side state. Returns how many
    modules were changed (0 when this transformers version has no such cache)."""
    n_pos = esm.config.max_position_embeddings
    changed = 0
    for m in esm.modules():
        if not (isinstance(getattr(m, "inv_freq", None), torch.Tensor) and hasattr(m, "_update_cos_sin_tables")):
            continue
        inv = m.inv_freq
        t = torch.arange(n_pos, device=inv.device).type_as(inv)
        emb = torch.cat((torch.outer(t, inv),) * 2, dim=-1)
        m.register_buffer("_cos_full", emb.cos()[None, None, :, :], persistent=False)
        m.register_buffer("_sin_full", emb.sin()[None, None, :, :], persistent=False)

        def update(self, x, seq_dimension=2):
            n = x.shape[seq_dimension]
            return self._cos_full[:, :, :n, :], self._sin_full[:, :, :n, :]
        m._update_cos_sin_tables = types.MethodType(update, m)
        changed += 1
    return changed


COMPILES = [0]  # dynamo compile events seen by the callback below


def count_compiles():
    """Counts dynamo's compiles through its compile-end callback (torch >= 2.6), a second witness
    beside its counters; False where this torch has no such hook."""
    try:
        from torch._dynamo.callback import on_compile_end
    except Exception:  # noqa: BLE001 - older or newer torch: the counters alone
        return False

    @on_compile_end
    def _seen(*_args, **_kw):
        COMPILES[0] += 1
    return True


def dynamo_counts():
    """torch._dynamo's running counts: frames compiled (each recompile is one more), graphs,
    graph breaks, and the compile callbacks seen."""
    try:
        from torch._dynamo.utils import counters
    except Exception:  # noqa: BLE001 - a torch without dynamo: nothing to count
        return {"frames": 0, "graphs": 0, "graph_breaks": 0, "callbacks": COMPILES[0]}
    return {"frames": int(counters["frames"].get("ok", 0)), "graphs": int(counters["stats"].get("unique_graphs", 0)),
            "graph_breaks": int(sum(counters["graph_break"].values())), "callbacks": COMPILES[0]}


def compare(a, b):
    cos = (a * b).sum(1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-30)
    return {"max_abs": float(np.abs(a - b).max()), "min_cosine": float(cos.min())}


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
    ap.add_argument("--mode", choices=["eager", "compile", "both"], default="eager",
                    help="eager PyTorch (default), torch.compile(dynamic=True), or both in one process")
    ap.add_argument("--compile", dest="mode", action="store_const", const="compile", help="same as --mode compile")
    ap.add_argument("--compile-mode", default="default",
                    help="torch.compile mode (default 'default'; 'reduce-overhead' re-records CUDA graphs per shape)")
    ap.add_argument("--compile-warmup", choices=["shapes", "all"], default="shapes",
                    help="compiled warm-up: one batch of each shape class (default) or the whole pass")
    ap.add_argument("--static-rotary", choices=["compile", "always", "never"], default="compile",
                    help="replace HF's per-length rotary cache by precomputed tables (default: for the compiled model)")
    ap.add_argument("--warmup-batches", type=int, default=3)
    ap.add_argument("--limit", type=int, help="use only the first N records")
    ap.add_argument("--json-out", help="write all results to this JSON file (rewritten after each result)")
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
    modes = ["eager", "compile"] if args.mode == "both" else [args.mode]
    doc = {"env": env, "args": {k: v for k, v in vars(args).items() if k != "name"},
           "truncated": truncated, "results": []}

    def save():
        if args.json_out:  # after every result, so a later failure (or kill) keeps what was measured
            with open(args.json_out + ".part", "w") as f:
                json.dump(doc, f, indent=2)
                f.write("\n")
            os.replace(args.json_out + ".part", args.json_out)

    embs = {}
    rotary_patched = 0
    with torch.inference_mode():
        for mode in modes:
            run_model, extra = model, {"compile_seconds": None}
            if mode == "compile" or args.static_rotary == "always":
                if args.static_rotary != "never" and not rotary_patched:
                    rotary_patched = static_rotary(esm)
                    print(f"static rotary tables: {rotary_patched} modules", flush=True)
            if mode == "compile":
                try:  # a hit recompile limit falls back to eager silently: make it an error instead
                    torch._dynamo.config.fail_on_recompile_limit_hit = True
                except AttributeError:
                    print("note: this torch has no fail_on_recompile_limit_hit; watch recompiles_timed", flush=True)
                hooked = count_compiles()
                run_model = torch.compile(model, dynamic=True, mode=args.compile_mode)
                extra = {"compile_mode": args.compile_mode, "dynamic": True, "compile_warmup": args.compile_warmup,
                         "static_rotary": rotary_patched}
            for order in orders:
                idx_order = range(len(seqs)) if order == "file" else sorted(range(len(seqs)), key=lambda i: -lens[i])
                batches = pack(idx_order, lens, args.max_batch_tokens)
                out = np.zeros((len(seqs), esm.config.hidden_size), dtype=np.float32)
                if mode == "compile" and args.compile_warmup == "all":
                    warm = batches
                elif mode == "compile":
                    warm = [batches[i] for i in warmup_batches(batches, lens, args.warmup_batches)]
                else:
                    warm = batches[:args.warmup_batches]
                c0 = dynamo_counts()
                t0 = time.perf_counter()
                run_pass(run_model, warm, seqs, lut, out)
                torch.cuda.synchronize()
                warm_secs = time.perf_counter() - t0
                c1 = dynamo_counts()
                torch.cuda.reset_peak_memory_stats()
                t0 = time.perf_counter()
                run_pass(run_model, batches, seqs, lut, out)
                torch.cuda.synchronize()
                secs = time.perf_counter() - t0
                c2 = dynamo_counts()
                real = int(lens.sum()) + 2 * len(seqs)
                padded = sum(len(b) * (int(lens[b].max()) + 2) for b in batches)
                res = {"order": order, "mode": mode, "model": name, "dtype": args.dtype, "attn": attn_used,
                       "max_batch_tokens": args.max_batch_tokens, "sequences": len(seqs),
                       "residues": int(lens.sum()), "batches": len(batches),
                       "padding_efficiency": round(real / padded, 4), "seconds": round(secs, 3),
                       "residues_per_s": round(int(lens.sum()) / secs, 1),
                       "sequences_per_s": round(len(seqs) / secs, 2),
                       "peak_gpu_mem_gib": round(torch.cuda.max_memory_allocated() / 2**30, 3),
                       "warmup_batches": len(warm), "warmup_seconds": round(warm_secs, 3), **extra}
                if mode == "compile":
                    # Compile cost: the warm-up's wall time less what its batches take at steady state
                    # (the timed pass's time, pro rata of padded tokens).
                    warm_share = sum(len(b) * (int(lens[b].max()) + 2) for b in warm) / padded
                    res["compile_seconds"] = round(max(0.0, warm_secs - warm_share * secs), 3)
                    res["frames_compiled"] = c1["frames"] - c0["frames"]
                    res["graphs_compiled"] = c1["graphs"] - c0["graphs"]
                    res["graph_breaks"] = c2["graph_breaks"]
                    res["compile_events"] = c1["callbacks"] - c0["callbacks"] if hooked else None
                    res["recompiles_timed"] = max(c2["frames"] - c1["frames"], c2["graphs"] - c1["graphs"],
                                                  c2["callbacks"] - c1["callbacks"])
                    if res["recompiles_timed"]:
                        print(f"WARNING: {res['recompiles_timed']} recompiles during the timed pass: not steady "
                              "state (try --compile-warmup all; TORCH_LOGS=recompiles says why)", flush=True)
                if mode == "compile" and ("eager", order) in embs:
                    res["vs_eager"] = compare(out, embs[("eager", order)])
                print(json.dumps(res), flush=True)
                doc["results"].append(res)
                embs[(mode, order)] = out
                save()

    if ("eager", "file") in embs and ("eager", "sorted") in embs:
        # Same records, different batch composition: should agree up to dtype noise.
        doc["orders_agree"] = compare(embs[("eager", "file")], embs[("eager", "sorted")])
        print(f"file vs sorted embeddings: {json.dumps(doc['orders_agree'])}")
    if args.embeddings_out:
        first = (modes[0], orders[0])
        np.savez(args.embeddings_out, ids=np.array(ids), embeddings=embs[first])
        print(f"embeddings ({first[0]}, {first[1]} run) -> {args.embeddings_out}")
    save()

    print(f"\n{'mode':<8} {'order':<7} {'seqs':>7} {'batches':>7} {'pad_eff':>7} {'seconds':>8} {'res/s':>11} "
          f"{'seq/s':>9} {'peak GiB':>8} {'compile s':>9}")
    for r in doc["results"]:
        cs = "" if r["compile_seconds"] is None else f"{r['compile_seconds']:.1f}"
        print(f"{r['mode']:<8} {r['order']:<7} {r['sequences']:>7} {r['batches']:>7} {r['padding_efficiency']:>7.3f} "
              f"{r['seconds']:>8.2f} {r['residues_per_s']:>11.0f} {r['sequences_per_s']:>9.1f} "
              f"{r['peak_gpu_mem_gib']:>8.2f} {cs:>9}")


if __name__ == "__main__":
    main()
