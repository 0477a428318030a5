#!/usr/bin/env bash
# bench/gpu_outputs.sh — on the GPU machine (issue #16): ESM-2 650M (random weights) as the plain
# mean graph (tools/export_esm2.py, packed fp16, custom ops) and, from the same checkpoint, a graph
# with the last layer's per-residue states in float16 (`seqembed model build --outputs
# per-residue:-1 --residues-fp16`); parity of the per-residue output and of the mean against the
# float32 PyTorch model on 200 real proteins (bench/outputs_parity.py), then end-to-end throughput of
# both (bench/gpu.sh, export=dir:) on 2,000 sequences with real proteins' lengths.
#   bash .device/on-device.sh bash bench/gpu_outputs.sh
set -uo pipefail
export PYTHONUNBUFFERED=1
w=${TMPDIR:-/tmp}/outputs
# PRESET=t6_8M LAYER=6 for a quick check (default ESM-2 650M, layer 33); N sequences for throughput;
# NO_PARITY=1 skips the parity step, NO_RAW=1 the raw (ORT alone) lines (a shorter e2e-only call).
preset=${PRESET:-t33_650M} layer=${LAYER:-33} n=${N:-8000}
mkdir -p "$w" "$OUT"
# Every step's output goes to $OUT/steps.log as it runs, each step under its own time limit, so a
# cut-short call still returns what ran (the first try of this script, 2026-12-01, returned nothing).
exec > >(tee -a "$OUT/steps.log") 2>&1
step() { local limit=$1; shift; echo "== $(date -u +%T) $*"; timeout "$limit" "$@"; echo "== exit $?"; }
step 150 python3 tools/export_esm2.py --preset "$preset" --fp16 --fused packed --custom-ops --save-pretrained "$w/hf650" --out "$w/mean650" --no-check 
step 120 env SEQEMBED_OPS_ARCHS=90 bash scripts/build-ops.sh "$w/mean650/libseqembed_ops.so"
mkdir -p "$w/res650" && cp "$w/mean650/libseqembed_ops.so" "$w/res650/"
step 120 seqembed model build --from "$w/hf650" --out "$w/res650" --fp16 --fused packed --custom-ops --name "esm2-$preset" \
  --outputs per-residue:-1,mean:${MID:-20},bos:-1 --residues-fp16
zcat testdata/sample/query500.fasta.gz >"$w/q.fasta"
# Parity and the pyarrow read on 200 real proteins written as Parquet (the slow writer for
# float16 per-residue states: BenchmarkSinkPerResidue), throughput on N sequences.
awk '/^>/{n++} n<=200' "$w/q.fasta" >"$w/q200.fasta"
step 120 seqembed run "$w/q200.fasta" --model "$w/res650" --device cuda:0 --out "$w/res.parquet" --quiet --allow-rejects --allow-id-conflicts
[[ -n ${NO_PARITY:-} ]] || step 120 python3 bench/outputs_parity.py --hf "$w/hf650" --file "$w/res.parquet" --fasta "$w/q.fasta" --rows 200 --min-cos 0.9999 | tee "$OUT/outputs-parity.json" || true
python3 bench/synth_fasta.py "$w/q.fasta" "$w/syn.fasta" "$n"
# Disk and page-cache state every 5 s while the throughput lines run: a repeat of the per-residue
# e2e line (8.8 GB through the file store and as much into the sink's file) did not finish on
# 2026-12-02 where the first took 31 s (docs/perf.md); this is what to look at next time.
(while :; do echo "$(date -u +%T) $(df -m /tmp | awk 'NR==2{print "tmp_free_mb="$4}') $(awk '/^(Dirty|Writeback|MemAvailable):/{printf "%s=%s ", $1, $2}' /proc/meminfo)"; sleep 5; done) >"$OUT/disk.log" 2>&1 &
monitor=$!
trap 'kill $monitor 2>/dev/null' EXIT
arrow=bench-args=--sink-format,arrow
raw=("model=$preset export=dir:$w/res650 modes=raw label=per-residue-fp16 timeout=60"
  "model=$preset export=dir:$w/mean650 modes=raw label=mean timeout=60")
[[ -z ${NO_RAW:-} ]] || raw=()
# The per-residue e2e line three times in a row (a repeat hung on 2026-12-02): a step past its
# timeout gets SIGQUIT, so a hung run prints its goroutines into the step log.
STEP_SIGNAL=QUIT GOTRACEBACK=all bash bench/gpu.sh --budget ${BUDGET:-260} --out "$OUT/bench" --fasta "$w/syn.fasta" \
  "model=$preset export=dir:$w/mean650 modes=e2e label=mean timeout=90" \
  "model=$preset export=dir:$w/res650 modes=e2e $arrow label=per-residue-fp16-arrow timeout=90" \
  "model=$preset export=dir:$w/res650 modes=e2e $arrow label=per-residue-fp16-arrow-2 timeout=90" \
  "model=$preset export=dir:$w/res650 modes=e2e $arrow label=per-residue-fp16-arrow-3 timeout=90" \
  "${raw[@]}" \
  "model=$preset export=dir:$w/mean650 modes=e2e label=mean-2 timeout=60"
# The host path alone on this machine's cores (issue #19; bench/pack.sh with TEST_PKGS="gpurun pipeline").
if command -v pipeline.test >/dev/null; then
  step 120 pipeline.test -test.run '^$' -test.bench BenchmarkHostPathWide -test.benchtime 4000x -test.count 2 | tee "$OUT/hostpath.txt"
fi
