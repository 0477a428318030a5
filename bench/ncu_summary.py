#!/usr/bin/env python3
"""Summarise `ncu --csv --page raw --metrics gpu__time_duration.sum` output: GPU time by kernel
family (GEMM, attention, LayerNorm, GELU, rotary, elementwise, copies, other) and the top kernels.

    python3 bench/ncu_summary.py ncu.csv            # a table
    python3 bench/ncu_summary.py --json ncu.csv     # one JSON object (bench/gpu.sh's profile mode)
"""
import csv
import json
import re
import sys
from collections import defaultdict

FAMILIES = [
    ("fp8 quantize", r"Quantize"),
    ("attention", r"flash|fmha|attention|Attention"),
    ("gemm", r"gemm|Gemm|GEMM|cutlass|xmma|nvjet|sm90_|cublas"),
    ("layernorm", r"LayerNorm|layer_norm|LayerNormalization|SkipLayerNorm"),
    ("gelu", r"[Gg]elu"),
    ("rotary", r"[Rr]otary"),
    ("padding", r"[Pp]adding|Restore|Remove"),
    ("copy/transpose", r"[Cc]opy|[Tt]ranspose|Memcpy|Concat|Slice|Gather"),
    ("elementwise", r"Elementwise|_Binary|BinaryElementWise|Unary|Cast|Where|Mul|Add|Div"),
    ("reduce", r"[Rr]educe"),
]


def family(name):
    for fam, pat in FAMILIES:
        if re.search(pat, name):
            return fam
    return "other"


def summarise(path):
    with open(path, newline="") as f:
        lines = [l for l in f if l.startswith('"')]
    rows = list(csv.reader(lines))
    if not rows:
        raise SystemExit(f"ncu_summary: no CSV rows in {path}")
    head = rows[0]
    name_col = head.index("Kernel Name")
    time_col = head.index("gpu__time_duration.sum")
    scale = 1.0  # to nanoseconds; the row after the header holds units when ncu prints them
    if len(rows) > 1:
        scale = {"nsecond": 1.0, "ns": 1.0, "usecond": 1e3, "us": 1e3, "msecond": 1e6, "ms": 1e6,
                 "second": 1e9, "s": 1e9}.get(rows[1][time_col].strip(), 1.0)
    data = [r for r in rows[1:] if r[time_col].replace(",", "").replace(".", "").isdigit()]
    by_fam, by_kernel, count = defaultdict(float), defaultdict(float), defaultdict(int)
    for r in data:
        t = float(r[time_col].replace(",", "")) * scale
        by_fam[family(r[name_col])] += t
        k = r[name_col][:110]
        by_kernel[k] += t
        count[k] += 1
    total = sum(by_fam.values())
    if not data or total <= 0:
        raise SystemExit(f"ncu_summary: no kernel times in {path}")
    return {"kernels": len(data), "gpu_ms": round(total / 1e6, 3),
            "families": {fam: round(100 * t / total, 2) for fam, t in sorted(by_fam.items(), key=lambda x: -x[1])},
            "top": [{"share": round(100 * t / total, 2), "n": count[k], "kernel": k}
                    for k, t in sorted(by_kernel.items(), key=lambda x: -x[1])[:14]]}


def main(argv):
    as_json = "--json" in argv
    paths = [a for a in argv if a != "--json"]
    if len(paths) != 1:
        raise SystemExit("usage: ncu_summary.py [--json] NCU.csv")
    s = summarise(paths[0])
    if as_json:
        print(json.dumps(s))
        return
    print(f"{s['kernels']} kernels, {s['gpu_ms']:.1f} ms GPU time")
    for fam, share in s["families"].items():
        print(f"  {fam:15s} {share:5.1f} %  {share * s['gpu_ms'] / 100:8.2f} ms")
    print("top kernels:")
    for k in s["top"]:
        print(f"  {k['share']:5.1f} %  n={k['n']:4d}  {k['kernel']}")


if __name__ == "__main__":
    main(sys.argv[1:])
