#!/usr/bin/env bash
# Seventh GPU pass (docs/perf.md), one call: seqembed's BiasRotary custom op (gpurun/ortops) built
# with nvcc, the 650M packed export using it (--custom-ops), GPU golden parity, PyTorch sorted
# baseline, seqembed raw and end to end.   bash .device/on-device.sh bash bench/gpu_bench7.sh
set -uo pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}
FA=/tmp/db8000.fasta M=/tmp/c650
. bench/gpu_lib.sh
xz -dc bench-data/db8000.fasta.xz >"$FA"
step "build the custom ops (nvcc, sm_90)"
SEQEMBED_OPS_ARCHS=90 bash scripts/build-ops.sh /tmp/libseqembed_ops.so 2>&1 | grep -v Warning | tail -5
step "export 650M packed with BiasRotary (+ golden)"
timeout 150 python3 tools/export_esm2.py --out "$M" --preset t33_650M --fp16 --fused packed --custom-ops \
  --golden testdata/golden-input.fasta --golden-out "$M/golden.json" 2>&1 | grep -E '^(fused|\{)|rror'
cp /tmp/libseqembed_ops.so "$M/"
step "GPU parity"
(cd gpurun && SEQEMBED_GPU_TESTS=1 SEQEMBED_GPU_MODEL=$M timeout 100 gpurun.test -test.run GPUGolden -test.v 2>&1) |
  grep -E '^(---|ok|FAIL)|650M|rror' | head -8
step "torch 650M"
timeout 150 python3 bench/torch_baseline.py --preset t33_650M --fasta "$FA" --max-batch-tokens 16384 \
  --order sorted --json-out "$OUT/torch.json" 2>&1 | grep -E '^ *sorted|Error' | tail -1
step "raw and e2e"
timeout 100 seqembed bench --raw --device cuda:0 --model "$M" --fasta "$FA" --inflight 2 --json-out "$OUT/bench.jsonl" 2>&1 | grep -E '^bench|rror' | tail -3
timeout 100 seqembed bench --device cuda:0 --model "$M" --fasta "$FA" --inflight 2 --json-out "$OUT/bench.jsonl" 2>&1 | grep -E '^bench|rror' | tail -3
step done
