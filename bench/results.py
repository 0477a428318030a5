#!/usr/bin/env python3
"""bench/gpu.sh's bookkeeping (standard library only): the run's metadata, one JSON row per
measurement appended to results.jsonl, and the closing table.

    results.py meta --build .device/build.json --out META.json
    results.py append --meta META.json --results OUT/results.jsonl --kind seqembed|torch|parity|precision|profile|gemm|attn|export|failed
                      [--src FILE] [--set key=value ...]
    results.py table OUT/results.jsonl [--run RUN_ID]

Every row holds the run's metadata (date, run_id, commit, GPU, driver, ORT, torch, ...), the matrix
line's fields (model, preset, export, dtype, mode, label, ...), "status" (ok, failed, skipped) and
the measurement: for seqembed the bench's own JSON line (its "model" renamed "model_name"), for
torch one result of bench/torch_baseline.py (its "mode" renamed "torch_mode"), for gemm the
lines of bench/lt_probe.cu as "gemms" and "layers".
"""
import argparse
import ctypes
import datetime
import json
import os
import re
import secrets
import subprocess
import sys

SEQEMBED_MODES = ("e2e", "raw")


def sh(*cmd, timeout=60):
    """stdout of cmd, stripped, or None when it cannot run or fails."""
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return p.stdout.strip() if p.returncode == 0 else None


def ort_version():
    """OrtGetApiBase()->GetVersionString() of the library seqembed loads (ONNXRUNTIME_SHARED_LIBRARY_PATH)."""
    path = os.environ.get("ONNXRUNTIME_SHARED_LIBRARY_PATH")
    if not path:
        return None

    class ApiBase(ctypes.Structure):
        _fields_ = [("GetApi", ctypes.c_void_p), ("GetVersionString", ctypes.CFUNCTYPE(ctypes.c_char_p))]
    try:
        lib = ctypes.CDLL(path)
        lib.OrtGetApiBase.restype = ctypes.POINTER(ApiBase)
        return lib.OrtGetApiBase().contents.GetVersionString().decode()
    except (OSError, AttributeError, ValueError):
        return None


def python_versions():
    code = ("import json\nv = {}\ntry:\n import torch\n v['torch'] = torch.__version__\n v['torch_cuda'] = torch.version.cuda\n"
            "except Exception:\n pass\ntry:\n import transformers\n v['transformers'] = transformers.__version__\n"
            "except Exception:\n pass\nprint(json.dumps(v))")
    out = sh(sys.executable, "-c", code, timeout=120)
    try:
        return json.loads(out) if out else {}
    except ValueError:
        return {}


def cmd_meta(a):
    build = {}
    if a.build and os.path.exists(a.build):
        with open(a.build) as f:
            build = json.load(f)
    commit = os.environ.get("SEQEMBED_COMMIT") or build.get("commit") or sh("git", "rev-parse", "HEAD")
    gpus = sh("nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader")
    gpu = [g.strip() for g in gpus.splitlines()[0].split(",")] if gpus else [None, None, None]
    now = datetime.datetime.now(datetime.timezone.utc)
    meta = {"date": now.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "run_id": now.strftime("%Y%m%dT%H%M%SZ-") + secrets.token_hex(2),
            "commit": commit or "unknown", "commit_dirty": build.get("dirty"),
            "built": build.get("built"), "build_tags": build.get("tags"),
            "gpu": gpu[0], "gpu_count": len(gpus.splitlines()) if gpus else 0,
            "driver": gpu[1], "gpu_memory": gpu[2],
            "ort": ort_version(), "host": os.uname().nodename}
    meta.update(python_versions())
    with open(a.out, "w") as f:
        json.dump(meta, f)
    print(" ".join(f"{k}={meta.get(k)}" for k in ("commit", "gpu", "driver", "ort", "torch", "transformers")))


def parse_sets(pairs):
    out = {}
    for p in pairs or []:
        k, sep, v = p.partition("=")
        if not sep:
            sys.exit(f"results.py: --set {p!r}: want key=value")
        if re.fullmatch(r"-?\d+", v):
            v = int(v)
        out[k] = v
    return out


def parity_checks(text):
    """gpurun.test -test.v lines 'NAME (DTYPE, attention X[, how]) on cuda:0, batches of N, ...
    worst max-abs A, worst cosine C'."""
    checks = []
    for m in re.finditer(r"(\S+) \(([^)]*)\) on \S+, batches of (\d+), vs PyTorch float32: "
                         r"worst max-abs ([0-9.eE+-]+), worst cosine ([0-9.]+)", text):
        checks.append({"model": m.group(1), "what": m.group(2), "batch": int(m.group(3)),
                       "max_abs": float(m.group(4)), "cosine": float(m.group(5))})
    return checks


def num(v):
    """v as an int or float where it reads as one, else the string."""
    for t in (int, float):
        try:
            return t(v)
        except ValueError:
            pass
    return v


def rows_from(kind, src):
    """The measurement rows that one step's output file holds."""
    if kind == "seqembed":
        with open(src) as f:
            lines = [json.loads(l) for l in f if l.strip()]
        if not lines:
            sys.exit(f"results.py: no JSON line in {src}")
        r = dict(lines[-1])
        r["model_name"] = r.pop("model", None)
        r["model_dtype"] = r.pop("dtype", None)
        return [r]
    if kind == "torch":
        with open(src) as f:
            doc = json.load(f)
        rows = []
        for res in doc.get("results", []):
            r = dict(res)
            r["model_name"] = r.pop("model", None)
            r["torch_mode"] = r.pop("mode", "eager")
            r["mode"] = "torch-compile" if r["torch_mode"] == "compile" else "torch"
            rows.append(r)
        return rows
    if kind == "parity":
        with open(src, errors="replace") as f:
            text = f.read()
        checks = parity_checks(text)
        own = [c for c in checks if c["model"] != "esm2-tiny"] or checks
        r = {"checks": checks, "passed": bool(re.search(r"^--- PASS: TestGPUGoldenParity", text, re.M))}
        if own:
            r["worst_cosine"] = min(c["cosine"] for c in own)
            r["worst_max_abs"] = max(c["max_abs"] for c in own)
        return [r]
    if kind in ("profile", "attn"):  # ncu_summary.py --json; bench/attn_probe.py --json-out
        with open(src) as f:
            return [json.load(f)]
    if kind == "gemm":  # bench/lt_probe.cu: "gemm k=v ..." and "layer k=v ..." lines
        r = {"gemms": [], "layers": []}
        with open(src) as f:
            for line in f:
                word, *pairs = line.split()
                if word in ("gemm", "layer") and pairs:
                    kv = dict(p.split("=", 1) for p in pairs if "=" in p)
                    r[word + "s"].append({k: num(v) for k, v in kv.items()})
        if not r["layers"]:
            sys.exit(f"results.py: no layer line in {src}")
        return [r]
    if kind == "precision":  # seqembed check-precision --json: the report, maybe under "report"
        with open(src) as f:
            doc = json.load(f)
        rep = doc.get("report", doc)
        r = {k: rep.get(k) for k in ("n", "min_cosine", "p1_cosine", "median_cosine", "mean_cosine", "k",
                                      "mean_overlap", "min_overlap")}
        r["worst"] = rep.get("worst")
        if "pass" in doc:
            r["passed"] = doc["pass"]
        return [r]
    return [{}]


def cmd_append(a):
    with open(a.meta) as f:
        meta = json.load(f)
    sets = parse_sets(a.set)
    rows = rows_from(a.kind, a.src) if a.src else [{}]
    with open(a.results, "a") as f:
        for r in rows:
            row = {**meta, **r, **sets}
            row.setdefault("status", "ok")
            if "mode" in r and a.kind == "torch":
                row["mode"] = r["mode"]  # one torch step can hold eager and compiled results
            f.write(json.dumps(row) + "\n")
            print("   " + one_line(row))


def precision_note(r):
    """A check-precision row: cosine vs float32 PyTorch (min, p1, median) and top-k overlap."""
    f = lambda k, d=6: f"{r[k]:.{d}f}" if isinstance(r.get(k), (int, float)) else "-"  # noqa: E731
    return (f"{r.get('n')} seqs vs float32: cosine min {f('min_cosine')} p1 {f('p1_cosine')} "
            f"median {f('median_cosine')}; top-{r.get('k')} overlap mean {f('mean_overlap', 3)} min {f('min_overlap', 3)}")


def gemm_note(r):
    """A gemm row: one block's six projections, heuristic's first algorithm vs the best found."""
    out = []
    for l in r.get("layers", []):
        out.append(f"{l.get('dtype')} block {l.get('separate_top1_us')} us (heuristic), best "
                   f"{l.get('separate_best_us')}, q/k/v fused {l.get('fused_qkv_best_us')}"
                   + (f", ORT MatMul form {l.get('gemmex_us')}" if l.get("dtype") == "fp16" else ""))
    return "; ".join(out)


def fmt_rate(v):
    return f"{v:,.0f}" if isinstance(v, (int, float)) else "-"


def one_line(r):
    what = f"{r.get('model')} {r.get('export') or ''}{' [' + r['label'] + ']' if r.get('label') else ''} {r.get('mode')}".replace("  ", " ")
    if r.get("status") != "ok":
        return f"{what}: {r.get('status', '?').upper()} {r.get('error', '')}".rstrip()
    if "residues_per_s" in r:
        extra = ""
        if r.get("compile_seconds") is not None:
            extra = f", compile {r['compile_seconds']:.1f} s, recompiles in timed pass {r.get('recompiles_timed')}"
        elif r.get("gpu_util") is not None and r.get("gpu_util", -1) >= 0:
            extra = f", GPU util {100 * r['gpu_util']:.1f} %"
        return f"{what}: {fmt_rate(r['residues_per_s'])} residues/s in {r.get('seconds', 0):.1f} s{extra}"
    if r.get("mode") == "parity":
        return f"{what}: worst cosine {r.get('worst_cosine')}, max-abs {r.get('worst_max_abs')}"
    if r.get("mode") == "precision":
        return f"{what}: {precision_note(r)}"
    if r.get("mode") == "export":
        return f"{what}: {'reused' if r.get('reused') else 'exported'} in {r.get('seconds', 0)} s"
    if r.get("mode") == "gemm":
        return f"{what}: {gemm_note(r)}"
    if r.get("mode") == "attn":
        return f"{what}: " + "; ".join(f"{k['kernel']} {k['us_per_batch']:.0f} us {k['tflops']:.0f} TFLOP/s"
                                       if "tflops" in k else f"{k['kernel']} failed" for k in r.get("kernels", []))
    if r.get("mode") == "profile":
        fam = ", ".join(f"{k} {v:.1f} %" for k, v in list(r.get("families", {}).items())[:5])
        return f"{what}: {r.get('kernels')} kernels: {fam}"
    return f"{what}: ok"


def cmd_table(a):
    rows = []
    with open(a.results) as f:
        for l in f:
            if l.strip():
                rows.append(json.loads(l))
    if not rows:
        print("no results")
        return
    run = a.run or rows[-1].get("run_id")
    rows = [r for r in rows if r.get("run_id") == run]
    m = rows[0]
    print(f"run {run}: commit {m.get('commit')}{' (dirty tree)' if m.get('commit_dirty') else ''}, {m.get('gpu')} "
          f"(driver {m.get('driver')}), ORT {m.get('ort')}, torch {m.get('torch')}, transformers {m.get('transformers')}")

    def key(r):  # torch and seqembed runs compare only over the same model, data and token budget
        return (r.get("model"), r.get("dtype"), r.get("max_batch_tokens"), r.get("records"))
    torch_rate = {}
    for r in rows:
        if r.get("status") == "ok" and r.get("mode") in ("torch", "torch-compile") and "residues_per_s" in r:
            torch_rate[(key(r), r["mode"])] = r["residues_per_s"]
    print(f"\n{'model':<6} {'export':<14} {'mode':<14} {'residues/s':>12} {'÷eager':>7} {'÷compiled':>10}  notes")
    headline = []
    for r in rows:
        mode = r.get("mode")
        if mode == "export":
            continue
        ok = r.get("status") == "ok"
        rate = r.get("residues_per_s") if ok else None
        eager, comp = torch_rate.get((key(r), "torch")), torch_rate.get((key(r), "torch-compile"))
        ratio = lambda d: f"{rate / d:.2f}" if rate and d else "-"  # noqa: E731
        notes = []
        if not ok:
            notes.append(f"{r.get('status', '?').upper()}: {r.get('error', '')}".strip())
        elif mode in SEQEMBED_MODES:
            if r.get("cuda_graphs"):
                notes.append("CUDA graphs")
            if r.get("gpu_util", -1) >= 0:
                notes.append(f"GPU util {100 * r['gpu_util']:.1f} %")
            notes.append(f"warm-up {r.get('warmup_seconds', 0):.1f} s")
            if mode == "e2e" and comp:
                headline.append(f"{r.get('model')} {r.get('export')}: {rate / comp:.2f}×")
        elif mode == "torch-compile":
            notes.append(f"compile {r.get('compile_seconds', 0):.1f} s, recompiles in timed pass {r.get('recompiles_timed')}")
            if r.get("vs_eager"):
                notes.append(f"cosine vs eager {r['vs_eager']['min_cosine']:.6f}")
        elif mode == "parity":
            notes.append(f"worst cosine {r.get('worst_cosine')}, max-abs {r.get('worst_max_abs')}")
        elif mode == "precision":
            notes.append(precision_note(r))
        elif mode == "gemm":
            notes.append(gemm_note(r))
        elif mode == "profile":
            notes.append(", ".join(f"{k} {v:.1f} %" for k, v in list(r.get("families", {}).items())[:6]))
        show_ratio = mode in SEQEMBED_MODES or mode == "torch-compile"
        exp = str(r.get('export') or '-') + (f" [{r['label']}]" if r.get("label") else "")
        print(f"{str(r.get('model')):<6} {exp:<14} {str(mode):<14} {fmt_rate(rate):>12} "
              f"{ratio(eager) if show_ratio else '':>7} {ratio(comp) if mode in SEQEMBED_MODES else '':>10}  "
              f"{'; '.join(notes)}")
    exports = [r for r in rows if r.get("mode") == "export" and r.get("status") == "ok"]
    if exports:
        print("exports: " + ", ".join(f"{r.get('model')} {r.get('export')} {r.get('seconds')} s"
                                      f"{' (reused)' if r.get('reused') else ''}" for r in exports))
    if headline:
        print("headline, seqembed e2e ÷ torch.compile: " + "; ".join(headline))
    bad = [r for r in rows if r.get("status") != "ok"]
    if bad:
        print(f"{len(bad)} step(s) did not succeed: " + "; ".join(
            f"{r.get('model')} {r.get('export') or ''} {r.get('mode')} ({r.get('status')}: {r.get('error', '')})".replace("  ", " ")
            for r in bad))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("meta")
    p.add_argument("--build")
    p.add_argument("--out", required=True)
    p = sub.add_parser("append")
    p.add_argument("--meta", required=True)
    p.add_argument("--results", required=True)
    p.add_argument("--kind", required=True, choices=["seqembed", "torch", "parity", "precision", "profile", "gemm", "attn", "export",
                                                        "failed"])
    p.add_argument("--src")
    p.add_argument("--set", action="append")
    p = sub.add_parser("table")
    p.add_argument("results")
    p.add_argument("--run")
    a = ap.parse_args()
    {"meta": cmd_meta, "append": cmd_append, "table": cmd_table}[a.cmd](a)


if __name__ == "__main__":
    main()
