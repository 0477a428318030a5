#!/usr/bin/env bash
# CUDA graphs on vs off for the small presets (ESM-2 8M and 35M), one call. Each preset is exported
# twice with the custom ops and float32 golden vectors: `--fused packed` (no graphs possible) and
# `--fused mha` (static shapes: graphs). Then: GPU golden parity of both (the mha one also after
# capture, replaying padded batches), graph replay vs plain runs, the PyTorch sorted baseline,
# seqembed raw (packed; mha graphs off; mha graphs on, inflight 2 and 4) and end to end (packed;
# mha graphs off; on). Last, 650M raw: packed, mha graphs off and on (compute-bound model).
#   bash .device/on-device.sh bash bench/gpu_graphs.sh
set -uo pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}
FA=/tmp/db8000.fasta
mkdir -p "$OUT"
. bench/gpu_lib.sh
xz -dc bench-data/db8000.fasta.xz >"$FA"
SEQEMBED_OPS_ARCHS=90 bash scripts/build-ops.sh /tmp/libseqembed_ops.so 2>&1 | tail -2
e2e() {
  local label=$1 m=$2
  shift 2
  timeout 120 seqembed bench --device cuda:0 --model "$m" --fasta "$FA" --json-out "$OUT/bench.jsonl" "$@" 2>&1 |
    grep -E '^bench|rror' | sed "s|^|[$label] |"
}
for p in t6_8M t12_35M; do
  mp=/tmp/p-$p mm=/tmp/m-$p
  step "$p: export packed and mha (custom ops, golden)"
  export_m "$mp" --preset $p --fp16 --fused packed --custom-ops --golden testdata/golden-input.fasta --golden-out "$mp/golden.json"
  export_m "$mm" --preset $p --fp16 --fused mha --custom-ops --golden testdata/golden-input.fasta --golden-out "$mm/golden.json"
  cp /tmp/libseqembed_ops.so "$mp/"
  cp /tmp/libseqembed_ops.so "$mm/"
  step "$p: GPU parity and graph replay"
  (cd gpurun && SEQEMBED_GPU_TESTS=1 SEQEMBED_GPU_MODEL="$mp:$mm" SEQEMBED_GPU_GRAPH_MODEL="$mm" timeout 200 gpurun.test \
    -test.run 'GPUGolden|GPUCUDAGraph' -test.v 2>&1) | grep -E '^(---|FAIL|ok|PASS)|esm2-t|captured|rror|panic' | head -30
  step "$p: torch, raw, e2e"
  torch_b $p
  raw "$p packed" "$mp"
  raw "$p mha graphs off" "$mm" --cuda-graphs off
  raw "$p mha graphs on" "$mm" --cuda-graphs on
  raw "$p mha graphs on, inflight 4" "$mm" --cuda-graphs on --inflight 4
  e2e "$p packed" "$mp"
  e2e "$p mha graphs off" "$mm" --cuda-graphs off
  e2e "$p mha graphs on" "$mm" --cuda-graphs on
done
step "650M: packed; mha graphs off vs on (raw)"
for f in packed mha; do
  export_m /tmp/$f-650M --preset t33_650M --fp16 --fused $f --custom-ops
  cp /tmp/libseqembed_ops.so /tmp/$f-650M/
done
raw "650M packed" /tmp/packed-650M
raw "650M mha graphs off" /tmp/mha-650M --cuda-graphs off
raw "650M mha graphs on" /tmp/mha-650M --cuda-graphs on
step done
