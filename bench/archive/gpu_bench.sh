#!/usr/bin/env bash
# On the GPU machine (see docs/perf.md): export ESM-2 650M fp16 with float32 golden vectors, run the
# GPU tests, the PyTorch baseline and seqembed bench (raw and end to end, several in-flight
# counts) over the 8,000 real sequences, in one call. Results land in $OUT.
#   bash .device/on-device.sh bash bench/gpu_bench.sh
set -uo pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}
M=/tmp/m650
FA=/tmp/db8000.fasta
RAW_INFLIGHT=${RAW_INFLIGHT:-"1 2"}
E2E_INFLIGHT=${E2E_INFLIGHT:-"1 2 3"}
step() { echo "== $(date +%T) $*"; }
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader
xz -dc bench-data/db8000.fasta.xz >"$FA"
step export
timeout 180 python3 tools/export_esm2.py --preset t33_650M --fp16 --out "$M" \
  --golden testdata/golden-input.fasta --golden-out "$M/golden.json" 2>&1 | grep -v Warning | tail -4
step gpu tests
(cd gpurun && SEQEMBED_GPU_TESTS=1 SEQEMBED_GPU_MODEL="$M" timeout 180 gpurun.test -test.run 'GPU|NVML' -test.v 2>&1) | tee "$OUT/gpu-tests.log" | grep -E '^(---|===|ok|FAIL|PASS)|worst|gpu_test|nvml_test' | head -40
step torch baseline
timeout 200 python3 bench/torch_baseline.py --preset t33_650M --fasta "$FA" --max-batch-tokens 16384 \
  --order "${TORCH_ORDER:-sorted}" --json-out "$OUT/torch.json" 2>&1 | tail -6
for n in $RAW_INFLIGHT; do
  step "seqembed bench --raw --inflight $n"
  timeout 120 seqembed bench --raw --device cuda:0 --model "$M" --fasta "$FA" --inflight "$n" --json-out "$OUT/bench.jsonl" >/dev/null
done
for n in $E2E_INFLIGHT; do
  step "seqembed bench (e2e) --inflight $n"
  timeout 150 seqembed bench --device cuda:0 --model "$M" --fasta "$FA" --inflight "$n" --json-out "$OUT/bench.jsonl" >/dev/null
done
step done
