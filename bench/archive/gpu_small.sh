#!/usr/bin/env bash
# Small presets (ESM-2 8M and 35M), one call: the custom ops built with nvcc, each preset exported
# `--fused packed --custom-ops` with float32 golden vectors, GPU parity (batches of 1, 3, 8), the
# PyTorch sorted baseline and seqembed raw and end to end. (Written for the next GPU session; not
# run yet.)   bash .device/on-device.sh bash bench/gpu_small.sh
set -uo pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}
FA=/tmp/db8000.fasta
. bench/gpu_lib.sh
xz -dc bench-data/db8000.fasta.xz >"$FA"
SEQEMBED_OPS_ARCHS=90 bash scripts/build-ops.sh /tmp/libseqembed_ops.so 2>&1 | tail -3
for p in t6_8M t12_35M; do
  m=/tmp/c-$p
  step "$p: export, parity"
  export_m "$m" --preset $p --fp16 --fused packed --custom-ops --golden testdata/golden-input.fasta --golden-out "$m/golden.json"
  cp /tmp/libseqembed_ops.so "$m/"
  (cd gpurun && SEQEMBED_GPU_TESTS=1 SEQEMBED_GPU_MODEL=$m timeout 100 gpurun.test -test.run GPUGolden -test.v 2>&1) |
    grep -E '^(---|FAIL)|esm2-t|rror' | head -6
  step "$p: torch, raw, e2e"
  torch_b $p
  raw "$p" "$m"
  timeout 100 seqembed bench --device cuda:0 --model "$m" --fasta "$FA" --json-out "$OUT/bench.jsonl" 2>&1 | grep -E '^bench|rror'
done
step done
