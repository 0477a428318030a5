#!/usr/bin/env bash
# Second GPU pass (docs/perf.md): naive vs ORT-optimised 650M fp16 export, parity of the optimised
# graph against float32 PyTorch, PyTorch sorted baseline, then seqembed raw and end to end with
# the faster export, all in one call.   bash .device/on-device.sh bash bench/gpu_bench2.sh
set -uo pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}
A=/tmp/m650 B=/tmp/m650opt FA=/tmp/db8000.fasta
step() { echo "== $(date +%T) $*"; }
xz -dc bench-data/db8000.fasta.xz >"$FA"
step export naive
timeout 150 python3 tools/export_esm2.py --preset t33_650M --fp16 --out "$A" \
  --golden testdata/golden-input.fasta --golden-out "$A/golden.json" 2>&1 | grep -v Warning | tail -2
step export optimised
timeout 200 python3 tools/export_esm2.py --preset t33_650M --fp16 --optimize --out "$B" 2>&1 | grep -E '^optimize|^\{|Error|error' | tail -4
cp "$A/golden.json" "$B/golden.json"
step parity of the optimised graph
(cd gpurun && SEQEMBED_GPU_TESTS=1 SEQEMBED_GPU_MODEL="$B" timeout 120 gpurun.test -test.run 'GPUGolden' -test.v 2>&1) | grep -E '^(---|ok|FAIL|PASS)|worst' | head
step torch baseline
timeout 150 python3 bench/torch_baseline.py --preset t33_650M --fasta "$FA" --max-batch-tokens 16384 \
  --order sorted --json-out "$OUT/torch.json" 2>&1 | tail -2
best=$A bestr=0
for m in "$A" "$B"; do
  step "seqembed bench --raw --inflight 2 $m"
  r=$(timeout 100 seqembed bench --raw --device cuda:0 --model "$m" --fasta "$FA" --inflight 2 --json-out "$OUT/bench.jsonl" 2>/dev/null | python3 -c 'import json,sys; print(int(json.load(sys.stdin)["residues_per_s"]))' || echo 0)
  echo "raw $m: $r residues/s"
  if [ "$r" -gt "$bestr" ]; then best=$m bestr=$r; fi
done
for n in 2 3; do
  step "seqembed bench (e2e) --inflight $n $best"
  timeout 100 seqembed bench --device cuda:0 --model "$best" --fasta "$FA" --inflight "$n" --json-out "$OUT/bench.jsonl" 2>&1 | grep -v "GPU waiting" | tail -1
done
step done
