#!/usr/bin/env python3
"""Parity of seqembed's outputs against PyTorch, read with pyarrow (issue #16).

Reads the file `seqembed run` wrote (Parquet or Arrow IPC) with pyarrow, prints its schema and the
seqembed.* metadata, embeds the same sequences with the float32 Hugging Face model (fair-esm
semantics: layer N = hidden_states[N], the last one after the final LayerNorm; residues = positions
1..L, bos = position 0, mean over 1..L) and checks every output column it finds: `embedding` (the
last layer's mean), mean_lN and bos_lN per sequence, residues_lN per residue. Prints one JSON line
(min, p1, median cosine per column) and exits 1 below --min-cos.

    python3 bench/outputs_parity.py --hf DIR --file out.parquet --fasta in.fasta --min-cos 0.9999
"""
import argparse
import json
import re
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

VOCAB = ["<cls>", "<pad>", "<eos>", "<unk>", "L", "A", "G", "V", "S", "E", "R", "T", "I", "D", "P",
         "K", "Q", "N", "F", "Y", "M", "H", "W", "C", "X", "B", "U", "Z", "O", ".", "-", "<null_1>", "<mask>"]


def read(path):
    if path.endswith(".parquet"):
        return pq.read_table(path)
    with pa.memory_map(path) as src:
        try:
            return pa.ipc.open_file(src).read_all()
        except pa.ArrowInvalid:
            return pa.ipc.open_stream(src).read_all()


def cos_rows(a, b):
    return (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hf", required=True)
    ap.add_argument("--file", required=True)
    ap.add_argument("--fasta", required=True, help="the FASTA that was embedded (sequences by id)")
    ap.add_argument("--rows", type=int, default=200)
    ap.add_argument("--min-cos", type=float, default=0.9999)
    args = ap.parse_args()
    from transformers import EsmModel
    seqs, rid = {}, None
    for line in open(args.fasta):
        line = line.strip()
        if line.startswith(">"):
            rid = line[1:].split()[0]
            seqs[rid] = ""
        elif rid:
            seqs[rid] += line.rstrip("*")
    t = read(args.file)
    meta = {k.decode(): v.decode() for k, v in (t.schema.metadata or {}).items() if k.startswith(b"seqembed.")}
    print("pyarrow schema:", file=sys.stderr)
    for f in t.schema:
        print(f"  {f.name}: {f.type}", file=sys.stderr)
    print("metadata:", json.dumps(meta), file=sys.stderr)
    checks = {"embedding": ("mean", None)}
    for name in t.column_names:
        m = re.fullmatch(r"(mean|bos|residues)_l(\d+)", name)
        if m:
            checks[name] = (m.group(1), int(m.group(2)))
    ids = t.column("id").to_pylist()[: args.rows]
    cols = {name: t.column(name).slice(0, len(ids)) for name in checks}
    esm = EsmModel.from_pretrained(args.hf, add_pooling_layer=False).eval().cuda()
    last = esm.config.num_hidden_layers
    got_cos = {name: [] for name in checks}
    residues = 0
    with torch.no_grad():
        for i, r in enumerate(ids):
            s = seqs[r][:1022]
            x = torch.tensor([[0] + [VOCAB.index(c) for c in s] + [2]]).cuda()
            hs = esm(input_ids=x, attention_mask=torch.ones_like(x), output_hidden_states=True).hidden_states
            residues += len(s)
            for name, (pool, layer) in checks.items():
                h = hs[last if layer is None else layer][0].float().cpu().numpy().astype(np.float64)
                v = cols[name][i].as_py()
                if pool == "residues":
                    got_cos[name].extend(cos_rows(np.array(v, dtype=np.float64), h[1:-1]).tolist())
                else:
                    want = h[0] if pool == "bos" else h[1:-1].mean(0)
                    got_cos[name].append(float(cos_rows(np.array(v, dtype=np.float64), want)))
    out = {"rows": len(ids), "residues": residues, "types": {n: str(cols[n].type) for n in checks}, "metadata": meta}
    worst = 1.0
    for name, c in got_cos.items():
        c = np.array(c)
        out[name] = {"n": len(c), "min_cos": float(c.min()), "p1_cos": float(np.percentile(c, 1)), "median_cos": float(np.median(c))}
        worst = min(worst, float(c.min()))
    print(json.dumps(out))
    sys.exit(1 if worst < args.min_cos else 0)


if __name__ == "__main__":
    main()
