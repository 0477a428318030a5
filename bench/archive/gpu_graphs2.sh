#!/usr/bin/env bash
# CUDA graphs, second call: SIGTERM with the worker replaying CUDA graphs (the CUDA EP can replace
# Go's signal handlers; graph sessions live on locked OS threads), and GPU golden parity of the
# 650M `--fused mha --custom-ops` export, plain and replayed.
#   bash .device/on-device.sh bash bench/gpu_graphs2.sh    (carries seqembed.test and gpurun.test)
set -uo pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
FA=/dev/null
. bench/gpu_lib.sh
SEQEMBED_OPS_ARCHS=90 bash scripts/build-ops.sh /tmp/libseqembed_ops.so 2>&1 | tail -2
step "tiny float32 mha export; SIGTERM with the child worker on CUDA graphs"
export_m /tmp/tiny-mha --preset tiny --fused mha
(cd cmd/seqembed && SEQEMBED_TEST_WORKER_FLAGS="--device cuda:0 --model /tmp/tiny-mha --cuda-graphs on --log-level info" \
  timeout 150 seqembed.test -test.run 'TestSIGTERM$' -test.v 2>&1) |
  grep -E '^(---|FAIL|ok|PASS)|warm-up done|signal|rror|panic' | cut -c1-400 | head -12
step "650M mha export with golden; GPU parity, plain and replayed"
m=/tmp/mha-650M
export_m "$m" --preset t33_650M --fp16 --fused mha --custom-ops --golden testdata/golden-input.fasta --golden-out "$m/golden.json"
cp /tmp/libseqembed_ops.so "$m/"
(cd gpurun && SEQEMBED_GPU_TESTS=1 SEQEMBED_GPU_MODEL="$m" timeout 300 gpurun.test -test.run 'GPUGolden' -test.v 2>&1) |
  grep -E '^(---|FAIL|ok|PASS)|650M|captured|rror|panic' | head -12
step done
