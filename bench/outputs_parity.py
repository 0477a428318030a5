#!/usr/bin/env python3
"""Per-residue and per-sequence parity of seqembed's extra outputs against PyTorch (issue #16).

Reads the file `seqembed run` wrote with a model built with per-residue outputs, embeds the same
sequences with the float32 Hugging Face model (fair-esm semantics: last layer after the final
LayerNorm, residues = positions 1..L), and prints one JSON line: per-sequence cosine of the mean
(`embedding`) and per-residue cosine of `residues_lN` (min, p1, median), and exits 1 below --min-cos.

    python3 bench/outputs_parity.py --hf DIR --file out.parquet --layer 33 --min-cos 0.9999
"""
import argparse
import json
import sys

import numpy as np
import pyarrow.parquet as pq
import torch

VOCAB = ["<cls>", "<pad>", "<eos>", "<unk>", "L", "A", "G", "V", "S", "E", "R", "T", "I", "D", "P",
         "K", "Q", "N", "F", "Y", "M", "H", "W", "C", "X", "B", "U", "Z", "O", ".", "-", "<null_1>", "<mask>"]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hf", required=True)
    ap.add_argument("--file", required=True)
    ap.add_argument("--fasta", required=True, help="the FASTA that was embedded (sequences by id)")
    ap.add_argument("--layer", type=int, required=True)
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
    t = pq.read_table(args.file)
    col = f"residues_l{args.layer}"
    ids = t.column("id").to_pylist()[: args.rows]
    emb = t.column("embedding").to_pylist()[: args.rows]
    res = t.column(col).to_pylist()[: args.rows]
    esm = EsmModel.from_pretrained(args.hf, add_pooling_layer=False).eval().cuda()
    seq_cos, res_cos = [], []
    with torch.no_grad():
        for i, r in enumerate(ids):
            s = seqs[r][:1022]
            x = torch.tensor([[0] + [VOCAB.index(c) for c in s] + [2]]).cuda()
            h = esm(input_ids=x, attention_mask=torch.ones_like(x), output_hidden_states=True).hidden_states[args.layer][0, 1:-1].float().cpu().numpy()
            got = np.array(res[i], dtype=np.float64)
            m = h.mean(0)
            e = np.array(emb[i], dtype=np.float64)
            seq_cos.append(float(e @ m / (np.linalg.norm(e) * np.linalg.norm(m))))
            c = (got * h).sum(1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(h, axis=1))
            res_cos.extend(c.tolist())
    seq_cos, res_cos = np.array(seq_cos), np.array(res_cos)
    out = {"rows": len(ids), "residues": len(res_cos), "column": col,
           "seq_min_cos": float(seq_cos.min()), "seq_p1_cos": float(np.percentile(seq_cos, 1)), "seq_median_cos": float(np.median(seq_cos)),
           "res_min_cos": float(res_cos.min()), "res_p1_cos": float(np.percentile(res_cos, 1)), "res_median_cos": float(np.median(res_cos))}
    print(json.dumps(out))
    sys.exit(1 if min(out["seq_min_cos"], out["res_min_cos"]) < args.min_cos else 0)


if __name__ == "__main__":
    main()
