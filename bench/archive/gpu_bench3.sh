#!/usr/bin/env bash
# Third GPU pass (docs/perf.md): the fused graphs of tools/esm2_graph.py against the PyTorch sorted
# baseline, in one call. Checks the graph builder on the CPU (8M float32 twin vs PyTorch), exports
# 650M fp16 'packed' (padding removed in the graph, PackedMultiHeadAttention) and 'mha' (key
# lengths; cuDNN flash attention when ORT_ENABLE_CUDNN_FLASH_ATTENTION=1), checks both on the GPU
# against float32 golden vectors at batch sizes 1, 3 and 8 (printing the attention kernel ORT
# picks), then benches raw and end to end. If no fused graph runs, falls back to the traced
# --optimize export at bucket steps 64 and 32.
#   bash .device/on-device.sh bash bench/gpu_bench3.sh
set -uo pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}
P=/tmp/m650packed M=/tmp/m650mha FA=/tmp/db8000.fasta
step() { echo "== $(date +%T) $*"; }
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
xz -dc bench-data/db8000.fasta.xz >"$FA"

step "graph builder on the CPU: 8M float32 twin vs PyTorch"
timeout 100 python3 tools/export_esm2.py --preset t6_8M --fused mha --out /tmp/m8 2>&1 |
  grep -E '^(parity|fused|Traceback)|Error|error' | head -12
step "export 650M fp16 packed (+ float32 golden vectors)"
timeout 150 python3 tools/export_esm2.py --preset t33_650M --fp16 --fused packed --out "$P" \
  --golden testdata/golden-input.fasta --golden-out "$P/golden.json" 2>&1 | grep -E '^(golden|fused|parity|\{)|Error|error' | head -8
step "export 650M fp16 mha"
timeout 120 python3 tools/export_esm2.py --preset t33_650M --fp16 --fused mha --no-check --out "$M" 2>&1 |
  grep -E '^(fused|\{)|Error|error' | head -6
cp "$P/golden.json" "$M/golden.json" 2>/dev/null

for m in "$P" "$M"; do
  step "GPU golden parity $m"
  (cd gpurun && SEQEMBED_GPU_TESTS=1 SEQEMBED_GPU_MODEL="$m" ORT_ENABLE_ATTENTION_KERNEL_DEBUG_INFO=1 \
    ORT_ENABLE_CUDNN_FLASH_ATTENTION=1 timeout 120 gpurun.test -test.run 'GPUGolden' -test.v 2>&1) |
    sed -e 's/\x1b\[[0-9;]*m//g' -e 's/ Node=[^ ]*//' | grep -E '^(---|ok|FAIL|PASS)|worst|SdpaKernel|KernelOptions|rror|cosine' |
    sort | uniq -c | sort -rn | head -16
done

step "torch baseline (sorted)"
timeout 150 python3 bench/torch_baseline.py --preset t33_650M --fasta "$FA" --max-batch-tokens 16384 \
  --order sorted --json-out "$OUT/torch.json" 2>&1 | tail -1

raw() { # label model [args...]: one raw pass; prints residues/s and padding
  local label=$1 m=$2
  shift 2
  local r
  r=$(timeout 110 seqembed bench --raw --device cuda:0 --model "$m" --fasta "$FA" --inflight 2 \
    --json-out "$OUT/bench.jsonl" "$@" 2>"$OUT/raw-$label.err" |
    python3 -c 'import json,sys; d=json.load(sys.stdin); print(int(d["residues_per_s"]), "padding", d.get("padding_efficiency"))') || r="0 failed"
  echo "raw $label: $r"
  [ "${r%% *}" = 0 ] && tail -3 "$OUT/raw-$label.err"
  echo "${r%% *} $label" >>/tmp/raws
}
: >/tmp/raws
step "raw passes"
raw packed "$P"
ORT_ENABLE_CUDNN_FLASH_ATTENTION=1 raw mha-cudnn "$M"
raw mha-default "$M"
raw packed-step32 "$P" --bucket-step 32
best=$(sort -rn /tmp/raws | head -1)
echo "best raw: $best"
case "${best#* }" in
packed) bm=$P bargs=() ;;
packed-step32) bm=$P bargs=(--bucket-step 32) ;;
mha-cudnn) bm=$M bargs=() && export ORT_ENABLE_CUDNN_FLASH_ATTENTION=1 ;;
*) bm=$M bargs=() ;;
esac
if [ "${best%% *}" -gt 0 ]; then
  step "e2e ${best#* } inflight 2"
  timeout 120 seqembed bench --device cuda:0 --model "$bm" --fasta "$FA" --inflight 2 "${bargs[@]}" \
    --json-out "$OUT/bench.jsonl" 2>&1 | grep -v "GPU waiting" | tail -1
else
  step "no fused graph ran: traced --optimize export, bucket steps 64 and 32"
  T=/tmp/m650opt
  timeout 200 python3 tools/export_esm2.py --preset t33_650M --fp16 --optimize --out "$T" 2>&1 | grep -E '^optimize|^\{' | tail -2
  raw opt64 "$T"
  raw opt32 "$T" --bucket-step 32
  timeout 120 seqembed bench --device cuda:0 --model "$T" --fasta "$FA" --inflight 2 --bucket-step 32 \
    --json-out "$OUT/bench.jsonl" 2>&1 | grep -v "GPU waiting" | tail -1
fi
step done
