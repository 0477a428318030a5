#!/usr/bin/env python3
"""Compare two embedding files (Parquet or Arrow IPC, written by seqembed run/sink) row by row, by
(id, seq_sha256): per-row cosine and max abs difference of `embedding`; prints one JSON line
(rows, missing, min/p1/median cosine, max abs) and exits 1 when min cosine < --min-cos.

    python3 bench/compare_parquet.py A.parquet B.parquet --min-cos 0.99999
"""
import argparse
import json
import sys

import numpy as np
import pyarrow.feather as feather
import pyarrow.parquet as pq


def read(path):
    t = feather.read_table(path) if path.endswith((".arrow", ".feather", ".ipc", ".arrows")) else pq.read_table(path)
    ids, shas = t.column("id").to_pylist(), t.column("seq_sha256").to_pylist()
    emb = np.array(t.column("embedding").to_pylist(), dtype=np.float64)
    return {(i, s): e for i, s, e in zip(ids, shas, emb)}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("a")
    ap.add_argument("b")
    ap.add_argument("--min-cos", type=float, default=0.0)
    ap.add_argument("--label", default="")
    args = ap.parse_args()
    a, b = read(args.a), read(args.b)
    keys = sorted(set(a) & set(b))
    cos = np.array([float(a[k] @ b[k] / (np.linalg.norm(a[k]) * np.linalg.norm(b[k]))) for k in keys])
    mx = max(float(np.abs(a[k] - b[k]).max()) for k in keys) if keys else float("nan")
    out = {"label": args.label, "rows": len(keys), "only_a": len(set(a) - set(b)), "only_b": len(set(b) - set(a)),
           "min_cos": float(cos.min()), "p1_cos": float(np.percentile(cos, 1)), "median_cos": float(np.median(cos)), "max_abs": mx}
    print(json.dumps(out))
    sys.exit(1 if out["min_cos"] < args.min_cos or out["only_a"] or out["only_b"] else 0)


if __name__ == "__main__":
    main()
