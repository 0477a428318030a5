#!/usr/bin/env bash
# bench/gpu_graphtests.sh — on the GPU machine (issue #19): gpurun's GPU tests on an 8M mha export
# (golden parity, CUDA-graph replay vs plain runs, concurrent runs, copy overlap vs the synchronous
# path bit for bit, the per-batch timeline), then SIGTERM to `seqembed run` with CUDA graphs loaded
# and copies overlapping (the CUDA EP must not have taken Go's signal handlers: the process stops
# within its shutdown timeout, without a crash).
#   bash .device/on-device.sh bash bench/gpu_graphtests.sh   (bench/pack.sh NO_DATA=1: gpurun.test + seqembed)
set -uo pipefail
export PYTHONUNBUFFERED=1
w=${TMPDIR:-/tmp}/graphtests
mkdir -p "$w"
python3 tools/export_esm2.py --preset t6_8M --fp16 --fused mha --out "$w/m8" \
  --golden testdata/golden-input.fasta --golden-out "$w/m8/golden.json" 2>&1 | tail -2
(cd gpurun && SEQEMBED_GPU_TESTS=1 SEQEMBED_GPU_MODEL="$w/m8" SEQEMBED_GPU_GRAPH_MODEL="$w/m8" SEQEMBED_GPU_TIMELINE_BATCHES=2000 \
  gpurun.test -test.run 'GPU' -test.v -test.count=1 2>&1 | grep -Ev '^\s*$|onnxruntime' | tail -70)
echo "gpurun.test exit ${PIPESTATUS[0]}"
python3 - "$w/syn.fasta" <<'PY'
import random, sys
rng = random.Random(11)
with open(sys.argv[1], "w") as f:
    for i in range(150000):
        f.write(f">s{i}\n" + "".join(rng.choice("LAGVSERTIDPKQNFYMHWC") for _ in range(rng.randint(50, 700))) + "\n")
PY
seqembed run "$w/syn.fasta" --model "$w/m8" --device cuda:0 --cuda-graphs on --log-level info --out "$w/x.parquet" --quiet >"$w/run.log" 2>&1 &
pid=$!
for _ in $(seq 1 900); do grep -q "worker ready" "$w/run.log" && break; sleep 0.1; done
sleep 1
t0=$(date +%s.%N)
kill -TERM $pid
wait $pid
code=$?
echo "SIGTERM with CUDA graphs loaded: exit $code after $(echo "$(date +%s.%N) - $t0" | bc) s"
grep -Ei "worker ready|shutdown|signal|panic|fatal|SIGSEGV|abort|interrupted|canceled" "$w/run.log" | head -8
tail -3 "$w/run.log"
