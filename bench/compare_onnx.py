#!/usr/bin/env python3
"""Compare two ONNX graphs of the same model structurally: op types with their counts and domains,
node attributes per op type, graph inputs and outputs, and every initializer by name (exact bytes;
ONNX gives initializer order no meaning). Prints one JSON line and exits 1 on any difference.
Used by bench/gpu_gobuild.sh on the Go-built graph against tools/export_esm2.py's.

    python3 bench/compare_onnx.py A/model.onnx B/model.onnx --label "650M fp8"
"""
import argparse
import collections
import json
import sys

import numpy as np
import onnx
from onnx import numpy_helper


def summary(path):
    m = onnx.load(path)
    g = m.graph
    ops = collections.Counter(f"{n.domain or 'ai.onnx'}:{n.op_type}" for n in g.node)
    attrs = collections.Counter()
    for n in g.node:
        for a in n.attribute:
            v = onnx.helper.get_attribute_value(a)
            if isinstance(v, bytes):
                v = v.decode()
            if isinstance(v, (list, tuple)):
                v = tuple(x.decode() if isinstance(x, bytes) else x for x in v)
            if isinstance(v, onnx.TensorProto):
                v = tuple(numpy_helper.to_array(v).ravel().tolist())
            attrs[(n.op_type, a.name, repr(v))] += 1
    io = ([(i.name, i.type.tensor_type.elem_type) for i in g.input],
          [(o.name, o.type.tensor_type.elem_type) for o in g.output])
    inits = {t.name: t for t in g.initializer}
    return ops, attrs, io, inits


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("a")
    ap.add_argument("b")
    ap.add_argument("--label", default="")
    args = ap.parse_args()
    oa, aa, ioa, ia = summary(args.a)
    ob, ab, iob, ib = summary(args.b)
    diffs = []
    if oa != ob:
        diffs.append({"ops_only_a": dict(oa - ob), "ops_only_b": dict(ob - oa)})
    if aa != ab:
        diffs.append({"attrs_only_a": [list(k) for k in (aa - ab)][:20], "attrs_only_b": [list(k) for k in (ab - aa)][:20]})
    if ioa != iob:
        diffs.append({"io_a": ioa, "io_b": iob})
    only_a, only_b = sorted(set(ia) - set(ib)), sorted(set(ib) - set(ia))
    if only_a or only_b:
        diffs.append({"inits_only_a": only_a[:20], "inits_only_b": only_b[:20]})
    differ, maxabs = [], 0.0
    for name in sorted(set(ia) & set(ib)):
        x, y = numpy_helper.to_array(ia[name]), numpy_helper.to_array(ib[name])
        if x.dtype != y.dtype or x.shape != y.shape:
            differ.append(f"{name}: {x.dtype}{list(x.shape)} vs {y.dtype}{list(y.shape)}")
            continue
        if x.tobytes() != y.tobytes():
            d = float(np.abs(x.astype(np.float64) - y.astype(np.float64)).max()) if x.dtype.kind in "fiu" else float("nan")
            maxabs = max(maxabs, d)
            differ.append(f"{name}: {int((x.view(np.uint8) != y.view(np.uint8)).sum())} bytes differ, max abs {d:g}")
    if differ:
        diffs.append({"inits_differ": differ[:20], "inits_differ_count": len(differ), "max_abs": maxabs})
    out = {"label": args.label, "nodes": sum(oa.values()), "ops": dict(sorted(oa.items())), "initializers": len(ia),
           "identical": not diffs, "diffs": diffs}
    print(json.dumps(out))
    sys.exit(0 if not diffs else 1)


if __name__ == "__main__":
    main()
