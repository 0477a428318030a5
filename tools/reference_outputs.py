#!/usr/bin/env python3
"""Reference embeddings of every output form, with fair-esm semantics, from a Hugging Face ESM-2
directory (config.json + model.safetensors, as tools/export_esm2.py --save-pretrained writes).

fair-esm's extract.py semantics: representation layer 0 is the embedding output (after token
dropout scaling, padded rows zeroed), layer i the output of block i, and the last layer has the
final LayerNorm (emb_layer_norm_after) applied; negative layers count from the end (-1 = last).
For a sequence of L residues tokenised as <cls> r1..rL <eos>:

    per_tok  positions 1..L of the layer's hidden states  ([L, dim])
    bos      position 0 (the <cls> row)                   ([dim])
    mean     mean over positions 1..L                     ([dim])

Long sequences (--overlength chunk in the worker): a sequence longer than the window W is cut
into windows of W residues starting at 0, S, 2S, ... while a window would end before the last
residue, and one last window ending at the last residue (start L - W). Each window is embedded on
its own (<cls> window <eos>). The merged per-residue state of a residue is the mean over the windows
that cover it; mean pooling is the mean over residues of the merged states; bos is the mean of the
windows' <cls> rows. Every sequence is embedded unpadded, one at a time, in float32.

    python3 tools/reference_outputs.py --hf testdata/esm2-tiny/hf --fasta testdata/golden-input.fasta \\
        --out testdata/esm2-tiny/reference-outputs.json.gz
"""
import argparse
import gzip
import json
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from export_esm2 import VOCAB, read_fasta  # noqa: E402  (the export's alphabet and FASTA reader)


def layers_of(esm, seq):
    """All representation layers (0..num_layers) of one unpadded sequence: [layers+1, L+2, dim]."""
    ids = torch.tensor([[0] + [VOCAB.index(c) for c in seq] + [2]])
    with torch.no_grad():
        out = esm(input_ids=ids, attention_mask=torch.ones_like(ids), output_hidden_states=True)
    return torch.stack([h[0] for h in out.hidden_states]).float().numpy()


def windows(n, w, s):
    """Window starts for a sequence of n residues (see the module docstring)."""
    if n <= w:
        return [0]
    starts, st = [], 0
    while st + w < n:
        starts.append(st)
        st += s
    starts.append(n - w)
    return sorted(set(starts))


def chunked(esm, seq, w, s):
    """Merged per-residue states [layers+1, L, dim] and mean of the <cls> rows [layers+1, dim]."""
    n = len(seq)
    acc, cnt, bos = None, np.zeros(n), []
    starts = windows(n, w, s)
    for st in starts:
        h = layers_of(esm, seq[st:st + w])
        if acc is None:
            acc = np.zeros((h.shape[0], n, h.shape[2]))
        acc[:, st:st + w] += h[:, 1:-1]
        cnt[st:st + w] += 1
        bos.append(h[:, 0])
    return acc / cnt[None, :, None], np.mean(bos, axis=0), len(starts)


def rnd(a):
    return [round(float(x), 7) for x in np.asarray(a).ravel()]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hf", required=True, help="HF ESM-2 directory")
    ap.add_argument("--fasta", required=True, help="records whose layers and poolings are written")
    ap.add_argument("--per-tok", type=int, default=4, help="write per-residue states of the first N records")
    ap.add_argument("--long", default="1500,5000", help="lengths of seeded random long sequences, chunked")
    ap.add_argument("--window", type=int, default=1022, help="chunk window in residues")
    ap.add_argument("--stride", type=int, default=511, help="chunk stride in residues")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--out", required=True, help="gzip JSON")
    args = ap.parse_args()
    from transformers import EsmModel
    esm = EsmModel.from_pretrained(args.hf, add_pooling_layer=False, attn_implementation="eager").eval()
    nl = esm.config.num_hidden_layers
    recs = []
    for i, (rid, seq) in enumerate(read_fasta(args.fasta)):
        seq = seq[:1022]
        h = layers_of(esm, seq)
        r = {"id": rid, "sequence": seq,
             "mean": [rnd(h[l, 1:-1].mean(0)) for l in range(nl + 1)],
             "bos": [rnd(h[l, 0]) for l in range(nl + 1)]}
        if i < args.per_tok:
            r["per_tok"] = [rnd(h[l, 1:-1]) for l in range(nl + 1)]
        recs.append(r)
    rng = np.random.default_rng(args.seed)
    std = list("LAGVSERTIDPKQNFYMHWC")
    long = []
    for n in [int(x) for x in args.long.split(",") if x]:
        seq = "".join(rng.choice(std, size=n))
        merged, bos, nwin = chunked(esm, seq, args.window, args.stride)
        r = {"id": f"long{n}", "sequence": seq, "windows": nwin,
             "mean": [rnd(merged[l].mean(0)) for l in range(nl + 1)],
             "bos": [rnd(bos[l]) for l in range(nl + 1)],
             # per-residue states of the last layer at the window seams and ends only (size)
             "per_tok_last_rows": {str(p): rnd(merged[nl, p]) for p in sorted({0, 1, args.stride - 1, args.stride,
                                                                               args.window - 1, args.window, n // 2, n - 2, n - 1})}}
        long.append(r)
    doc = {"semantics": "fair-esm repr_layers; layer 0 = embeddings, last layer after emb_layer_norm_after; "
                        "per_tok = positions 1..L, bos = 0, mean over 1..L; chunk: see tools/reference_outputs.py",
           "num_layers": nl, "dim": esm.config.hidden_size, "window": args.window, "stride": args.stride,
           "records": recs, "long": long}
    with gzip.open(args.out, "wt") as f:
        json.dump(doc, f, separators=(",", ":"))
    print(f"reference outputs: {len(recs)} records, {len(long)} long -> {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
