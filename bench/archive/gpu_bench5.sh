#!/usr/bin/env bash
# Fifth GPU pass (docs/perf.md), one call: the packed graph with the wide interleaved rotary
# (tools/esm2_graph.py rotary_group/interleave_heads): CPU twin check (8M), 650M parity on the GPU,
# PyTorch sorted baseline, raw and end to end; 8M and 35M (PyTorch vs packed, raw); a short Nsight
# Compute breakdown of steady-state 650M batches.
#   bash .device/on-device.sh bash bench/gpu_bench5.sh
set -uo pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}
FA=/tmp/db8000.fasta
. bench/gpu_lib.sh
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
xz -dc bench-data/db8000.fasta.xz >"$FA"
step "CPU twin check (8M float32, interleaved rotary)"
export_m /tmp/m8 --preset t6_8M --fused mha
step "export 650M packed (+ golden)"
export_m /tmp/p650 --preset t33_650M --fp16 --fused packed --golden testdata/golden-input.fasta --golden-out /tmp/p650/golden.json
step "GPU parity"
(cd gpurun && SEQEMBED_GPU_TESTS=1 SEQEMBED_GPU_MODEL=/tmp/p650 timeout 100 gpurun.test -test.run GPUGolden -test.v 2>&1) |
  grep -E '^(---|ok|FAIL)|650M|rror'
step "torch 650M"
torch_b t33_650M
step "raw and e2e 650M packed"
raw 650M /tmp/p650
timeout 120 seqembed bench --device cuda:0 --model /tmp/p650 --fasta "$FA" --inflight 2 --json-out "$OUT/bench.jsonl" 2>&1 | grep -E '^bench'
for p in t6_8M t12_35M; do
  step "$p: torch, packed"
  torch_b $p
  export_m /tmp/k-$p --preset $p --fp16 --fused packed --no-check
  raw "$p packed" /tmp/k-$p
done
step "ncu: 600 kernels of steady-state 650M batches"
timeout 150 ncu --clock-control none --print-units base --metrics gpu__time_duration.sum --csv --page raw \
  --launch-skip 20000 --launch-count 600 seqembed bench --raw --device cuda:0 --model /tmp/p650 \
  --fasta "$FA" --inflight 1 >"$OUT/ncu.csv" 2>"$OUT/ncu.err"
python3 bench/ncu_summary.py "$OUT/ncu.csv" | head -12 || tail -5 "$OUT/ncu.err"
step done
