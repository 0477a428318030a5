#!/usr/bin/env bash
# Multi-GPU pass (docs/perf.md, issue "Multi-GPU on one host") on a two-GPU machine, in one call:
# 650M fp16 packed export, then end to end over the 8,000 real sequences on one GPU, on two GPUs
# driven by one worker (--device cuda:0,cuda:1) and on two worker processes sharing the durable
# consumer (--worker-procs); then single-GPU raw variants and an Nsight Compute kernel-time
# breakdown of raw runs (where the GPU time goes).
#   bash .device/on-device.sh bash bench/gpu_multi.sh
set -uo pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}
P=/tmp/m650packed FA=/tmp/db8000.fasta
step() { echo "== $(date +%T) $*"; }
nvidia-smi --query-gpu=index,name,driver_version,memory.total --format=csv,noheader
xz -dc bench-data/db8000.fasta.xz >"$FA"
step "export 650M fp16 packed"
timeout 150 python3 tools/export_esm2.py --preset t33_650M --fp16 --fused packed --no-check --out "$P" 2>&1 |
  grep -E '^(fused|\{)|Error|error' | head -4
e2e() { # label args...
  local label=$1
  shift
  step "e2e $label"
  timeout 150 seqembed bench --model "$P" --fasta "$FA" --inflight 2 --json-out "$OUT/bench.jsonl" "$@" 2>&1 |
    grep -E '^bench' | grep -v "GPU waiting"
}
e2e "1 GPU" --device cuda:0
e2e "2 GPUs, one worker" --device cuda:0,cuda:1
e2e "2 GPUs, two worker processes" --device cuda:0,cuda:1 --worker-procs
step "raw variants (cuda:0)"
for a in "--inflight 2" "--inflight 3" "--inflight 2 --max-batch-tokens 32768" "--inflight 2 --max-batch-tokens 8192"; do
  # shellcheck disable=SC2086
  timeout 100 seqembed bench --raw --device cuda:0 --model "$P" --fasta "$FA" $a --json-out "$OUT/bench.jsonl" 2>&1 |
    grep -E '^bench' | sed "s|^|[$a] |"
done
step "ncu kernel times (raw, 1,500 kernels after 4,000)"
head -c 400000 "$FA" | awk '/^>/{n++} n<=900' >/tmp/sub.fasta
timeout 240 ncu --clock-control none --print-units base --metrics gpu__time_duration.sum --csv --page raw \
  --launch-skip 4000 --launch-count 1500 seqembed bench --raw --device cuda:0 --model "$P" \
  --fasta /tmp/sub.fasta --inflight 1 >"$OUT/ncu.csv" 2>"$OUT/ncu.err"
echo "ncu rc=$? rows=$(wc -l <"$OUT/ncu.csv")"
python3 bench/ncu_summary.py "$OUT/ncu.csv" || tail -5 "$OUT/ncu.err"
step done
