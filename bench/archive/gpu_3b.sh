#!/usr/bin/env bash
# ESM-2 3B (5.3 GB of fp16 weights: external data) through the fused packed export, the Go
# runner's hash check and session load, the GPU golden parity test and a raw pass over the first
# 2,000 real sequences, in one call.   bash .device/on-device.sh bash bench/gpu_3b.sh
set -uo pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}
M=/tmp/m3b FA=/tmp/db2000.fasta
step() { echo "== $(date +%T) $*"; }
xz -dc bench-data/db8000.fasta.xz | awk '/^>/{n++} n<=2000' >"$FA"
step "export 3B fp16 packed (+ float32 golden vectors)"
timeout 240 python3 tools/export_esm2.py --preset t36_3B --fp16 --fused packed --out "$M" \
  --golden testdata/golden-input.fasta --golden-out "$M/golden.json" 2>&1 | grep -E '^(golden|fused|parity|\{)|rror|Killed'
ls -la "$M"
step "GPU golden parity (3B)"
(cd gpurun && SEQEMBED_GPU_TESTS=1 SEQEMBED_GPU_MODEL=$M timeout 150 gpurun.test -test.run GPUGolden -test.v 2>&1) |
  grep -E '^(---|ok|FAIL)|3B|rror'
step "raw, 2,000 sequences"
timeout 120 seqembed bench --raw --device cuda:0 --model "$M" --fasta "$FA" --inflight 2 --json-out "$OUT/bench.jsonl" 2>&1 | grep -E '^bench|rror'
step done
