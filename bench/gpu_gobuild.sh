#!/usr/bin/env bash
# bench/gpu_gobuild.sh — on the GPU machine (issue #17): the Go-built graph against the Python export
# of the same weights. ESM-2 650M with random weights is exported by tools/export_esm2.py (packed,
# fp16, custom ops) and saved by save_pretrained; `seqembed model build` writes its graph from that
# checkpoint; both embed the same proteins (seqembed run; per-row cosine by bench/compare_parquet.py),
# are compared structurally (bench/compare_onnx.py: ops, attributes, every initializer by name, exact)
# and are benchmarked end to end in alternation (bench/gpu.sh, export=dir:). Also writes the tiny
# model's Python-built fused mha graph to $OUT/tiny.tar.xz (esm2graph's TestMatchesPythonGraph).
# GOBUILD_FLAGS (default "--fp16 --fused packed --custom-ops") are given to both builds, whose flags
# share their names; several flag sets separated by ';' are each built both ways from the one
# checkpoint, e.g. GOBUILD_FLAGS="--fp16 --fused packed --custom-ops --fused-gelu --fp16-linear
# --cudnn-attention; --fp16 --fused packed --custom-ops --precision fp8 --fused-ln-quant --fused-gelu
# --cudnn-attention" (the ops are then built with cuDNN: the nvidia-cudnn wheel and
# .device/cudnn-fe-include.tar.xz, bench/pack.sh CUDNN_FRONTEND=DIR). The tiny model's Python-built
# graph for set N (1-based) goes to esm2-tiny-setN in $OUT/tiny.tar.xz (with
# esm2-tiny-mha; set 1 and 2 of the example above are esm2graph/testdata/esm2-tiny-fast and
# esm2-tiny-fp8, TestMatchesPythonFastGraphs). GOBUILD_BENCH=0 skips
# the throughput passes.
#   bash .device/on-device.sh bash bench/gpu_gobuild.sh
set -euo pipefail
export PYTHONUNBUFFERED=1
w=${TMPDIR:-/tmp}/gobuild
mkdir -p "$w/tiny" "$OUT"
IFS=';' read -r -a sets <<<"${GOBUILD_FLAGS:---fp16 --fused packed --custom-ops}"
python3 tools/export_esm2.py --hf esm2graph/testdata/esm2-tiny-hf --name esm2-tiny --fused mha --out "$w/tiny/esm2-tiny-mha" 2>&1 | tail -3
ops_env=(SEQEMBED_OPS_ARCHS=90)
if [[ " ${GOBUILD_FLAGS:-} " == *" --cudnn-attention"* ]]; then
  cudnn=${SEQEMBED_OPS_CUDNN:-$(python3 -c 'import nvidia.cudnn as m; print(list(m.__path__)[0])')}
  fe=${SEQEMBED_CUDNN_FRONTEND:-$w/cudnn-fe/include}
  [[ -d $fe ]] || { mkdir -p "$w/cudnn-fe" && tar -xJf .device/cudnn-fe-include.tar.xz -C "$w/cudnn-fe"; }
  ops_env+=(SEQEMBED_OPS_CUDNN="$cudnn" SEQEMBED_CUDNN_FRONTEND="$fe")
fi
# The ops build (~90 s with cuDNN) runs beside the first export.
ops=$w/libseqembed_ops.so
(env "${ops_env[@]}" bash scripts/build-ops.sh "$ops" >"$w/build-ops.log" 2>&1; echo $? >"$w/build-ops.rc") &
ops_pid=$!
# Parity on the 500 real proteins of testdata/sample; throughput on 8,000 sequences whose lengths are
# drawn from those 500 (random residues: both graphs see the same batches; the call's 64 MiB leave
# no room for the real-protein subset beside the binary).
fasta=$w/input.fasta
zcat testdata/sample/query500.fasta.gz >"$fasta"
python3 bench/synth_fasta.py "$fasta" "$w/synthetic.fasta" 8000
rc=0
matrix=()
for i in "${!sets[@]}"; do
  n=$((i + 1))
  read -r -a flags <<<"${sets[$i]}"
  echo "== set $n: ${flags[*]}"
  python3 tools/export_esm2.py --hf esm2graph/testdata/esm2-tiny-hf --name esm2-tiny "${flags[@]}" --no-check --out "$w/tiny/esm2-tiny-set$n" 2>&1 | tail -1
  t0=$(date +%s)
  if [[ $n == 1 ]]; then
    python3 tools/export_esm2.py --preset t33_650M "${flags[@]}" --save-pretrained "$w/hf650" --out "$w/py$n" --no-check 2>&1 | tail -2
  else
    python3 tools/export_esm2.py --hf "$w/hf650" --name esm2-t33_650M "${flags[@]}" --out "$w/py$n" --no-check 2>&1 | tail -2
  fi
  echo "python export: $(($(date +%s) - t0)) s"
  if [[ $n == 1 ]]; then
    wait "$ops_pid" || true
    [[ $(cat "$w/build-ops.rc") == 0 ]] || { tail -20 "$w/build-ops.log"; exit 1; }
  fi
  # The library goes into the Go build's directory first: without it, model build refuses the
  # fast-path flags (on 2026-12-04 it still fell back to ORT's ops, and this script measured that).
  mkdir -p "$w/go$n" && cp "$ops" "$w/go$n/" && cp "$ops" "$w/py$n/"
  t0=$(date +%s)
  /usr/bin/time -v seqembed model build --from "$w/hf650" --out "$w/go$n" "${flags[@]}" --name esm2-t33_650M 2>&1 |
    grep -E 'model:|Maximum resident|Elapsed' || true
  echo "go build: $(($(date +%s) - t0)) s"
  ls -la "$w/py$n" "$w/go$n"
  python3 bench/compare_onnx.py "$w/py$n/model.onnx" "$w/go$n/model.onnx" --label "650M set $n: ${flags[*]}" | tee "$OUT/gobuild-onnx-set$n.json" || rc=1
  python3 - "$w/py$n/model.json" "$w/go$n/model.json" <<'PY' | tee "$OUT/gobuild-manifest-set$n.json" || rc=1
import json, sys
a, b = (json.load(open(p)) for p in sys.argv[1:])
d = {k: [a.get(k), b.get(k)] for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)}
print(json.dumps({"manifest_differences": d}))
PY
  for m in py$n go$n; do
    seqembed run "$fasta" --model "$w/$m" --device cuda:0 --out "$w/$m.parquet" --quiet --allow-rejects --allow-id-conflicts | tail -2
  done
  python3 bench/compare_parquet.py "$w/py$n.parquet" "$w/go$n.parquet" --min-cos 0.99999 --label "650M ${flags[*]}: Python export vs Go build" | tee "$OUT/gobuild-parity-set$n.json" || rc=1
  matrix+=("model=650M export=dir:$w/py$n modes=e2e label=python-set$n" "model=650M export=dir:$w/go$n modes=e2e label=go-set$n")
done
tar -cJf "$OUT/tiny.tar.xz" -C "$w/tiny" .
if [[ ${GOBUILD_BENCH:-1} != 0 ]]; then
  bash bench/gpu.sh --budget "${GOBUILD_BUDGET:-200}" --out "$w/bench" --fasta "$w/synthetic.fasta" "${matrix[@]}" "${matrix[@]/label=/label=again-}"
  cp "$w/bench/results.jsonl" "$OUT/gobuild-bench.jsonl"
fi
exit $rc
