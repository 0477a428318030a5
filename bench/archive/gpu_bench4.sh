#!/usr/bin/env bash
# Fourth GPU pass (docs/perf.md), one call: PyTorch sorted baseline vs seqembed with the packed
# fused graph in its two layouts ([tokens,1,D] "rows" and [1,tokens,D] "sequence"), end to end with
# the faster; ESM-2 8M and 35M (PyTorch vs traced --optimize vs packed, raw); then an Nsight
# Compute kernel-time breakdown of steady-state 650M batches.
#   bash .device/on-device.sh bash bench/gpu_bench4.sh
set -uo pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}
FA=/tmp/db8000.fasta
. bench/gpu_lib.sh
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
xz -dc bench-data/db8000.fasta.xz >"$FA"
step "export 650M packed rows (+ golden) and packed sequence"
export_m /tmp/p650 --preset t33_650M --fp16 --fused packed --golden testdata/golden-input.fasta --golden-out /tmp/golden650.json
export_m /tmp/s650 --preset t33_650M --fp16 --fused packed --packed-layout sequence --no-check
cp /tmp/golden650.json /tmp/p650/golden.json
cp /tmp/golden650.json /tmp/s650/golden.json
step "torch 650M"
torch_b t33_650M
step "raw 650M"
raw rows /tmp/p650
raw sequence /tmp/s650
step "parity of the sequence layout"
(cd gpurun && SEQEMBED_GPU_TESTS=1 SEQEMBED_GPU_MODEL=/tmp/s650 timeout 100 gpurun.test -test.run GPUGolden -test.v 2>&1) |
  grep -E '^(---|ok|FAIL)|650M'
best=$(grep -h '"mode":"raw"' "$OUT/bench.jsonl" | python3 -c '
import json,sys
rs=[json.loads(l) for l in sys.stdin]
print("/tmp/s650" if len(rs)>1 and rs[1]["residues_per_s"]>rs[0]["residues_per_s"] else "/tmp/p650")')
step "e2e 650M $best"
timeout 120 seqembed bench --device cuda:0 --model "$best" --fasta "$FA" --inflight 2 --json-out "$OUT/bench.jsonl" 2>&1 | grep -E '^bench'
for p in t6_8M t12_35M; do
  step "$p: torch, traced --optimize, packed"
  torch_b $p
  export_m /tmp/t-$p --preset $p --fp16 --optimize --no-check
  export_m /tmp/k-$p --preset $p --fp16 --fused packed --no-check
  raw "$p traced" /tmp/t-$p
  raw "$p packed" /tmp/k-$p
done
step "ncu: 1,200 kernels of steady-state 650M batches (rows layout)"
timeout 200 ncu --clock-control none --print-units base --metrics gpu__time_duration.sum --csv --page raw \
  --launch-skip 20000 --launch-count 1200 seqembed bench --raw --device cuda:0 --model /tmp/p650 \
  --fasta "$FA" --inflight 1 >"$OUT/ncu.csv" 2>"$OUT/ncu.err"
echo "ncu rc=$?"
python3 bench/ncu_summary.py "$OUT/ncu.csv" || tail -5 "$OUT/ncu.err"
step done
