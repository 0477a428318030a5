#!/usr/bin/env bash
# Sixth GPU pass (docs/perf.md), one call: PyTorch sorted baseline vs the packed 650M graph with
# flash (default) or memory-efficient attention (ORT_DISABLE_FLASH_ATTENTION=1) and inflight 2 or 3,
# raw; then end to end with the fastest setting.
#   bash .device/on-device.sh bash bench/gpu_bench6.sh
set -uo pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}
FA=/tmp/db8000.fasta P=/tmp/p650
step() { echo "== $(date +%T) $*"; }
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
xz -dc bench-data/db8000.fasta.xz >"$FA"
step "export 650M packed"
timeout 200 python3 tools/export_esm2.py --out "$P" --preset t33_650M --fp16 --fused packed --no-check 2>&1 | grep -E '^\{|rror'
step "torch 650M"
timeout 150 python3 bench/torch_baseline.py --preset t33_650M --fasta "$FA" --max-batch-tokens 16384 \
  --order sorted --json-out "$OUT/torch.json" 2>&1 | grep -E '^ *sorted|Error' | tail -1
: >/tmp/raws
raw() { # label env-assignment inflight
  local r
  r=$(env $2 timeout 100 seqembed bench --raw --device cuda:0 --model "$P" --fasta "$FA" --inflight "$3" \
    --json-out "$OUT/bench.jsonl" 2>/dev/null | python3 -c 'import json,sys; print(int(json.load(sys.stdin)["residues_per_s"]))') || r=0
  echo "raw $1: $r"
  echo "$r $2 $3" >>/tmp/raws
}
step raw
raw "flash, inflight 2" "X=1" 2
raw "mem-efficient, inflight 2" "ORT_DISABLE_FLASH_ATTENTION=1" 2
raw "flash, inflight 3" "X=1" 3
read -r _ bestenv bestinf < <(sort -rn /tmp/raws | head -1)
step "e2e with $bestenv inflight $bestinf"
env $bestenv timeout 120 seqembed bench --device cuda:0 --model "$P" --fasta "$FA" --inflight "$bestinf" \
  --json-out "$OUT/bench.jsonl" 2>&1 | grep -E '^bench'
step done
