# Shared helpers of the bench/gpu_*.sh scripts (sourced). Expects OUT and FA (the FASTA file).
step() { echo "== $(date +%T) $*"; }
# export_m DIR ARGS...: tools/export_esm2.py --out DIR ARGS..., printing its summary lines.
export_m() {
  local d=$1
  shift
  timeout 200 python3 tools/export_esm2.py --out "$d" "$@" 2>&1 |
    grep -E '^(fused|optimize|parity|\{)|Error|error|Traceback' | head -4
}
# torch_b PRESET: the PyTorch sorted baseline at 16,384 tokens; JSON in $OUT/torch-PRESET.json.
torch_b() {
  timeout 150 python3 bench/torch_baseline.py --preset "$1" --fasta "$FA" --max-batch-tokens 16384 \
    --order sorted --json-out "$OUT/torch-$1.json" 2>&1 | grep -E '^ *sorted|Error' | tail -1
}
# raw LABEL MODEL [ARGS...]: one `seqembed bench --raw` pass on cuda:0, inflight 2.
raw() {
  local label=$1 m=$2
  shift 2
  timeout 100 seqembed bench --raw --device cuda:0 --model "$m" --fasta "$FA" --inflight 2 \
    --json-out "$OUT/bench.jsonl" "$@" 2>&1 | grep -E '^bench|rror' | sed "s|^|[$label] |"
}
