#!/usr/bin/env bash
# bench/gpu_gobuild.sh — on the GPU machine (issue #17): the Go-built graph against the Python export
# of the same weights. ESM-2 650M with random weights is exported by tools/export_esm2.py (packed,
# fp16, custom ops) and saved by save_pretrained; `seqembed model build` writes its graph from that
# checkpoint; both embed the same proteins (seqembed run; per-row cosine by bench/compare_parquet.py)
# and are benchmarked end to end in alternation (bench/gpu.sh, export=dir:). Also writes the tiny
# model's Python-built fused mha graph to $OUT/esm2-tiny-mha (esm2graph's TestMatchesPythonGraph).
# GOBUILD_FLAGS (default "--fp16 --fused packed --custom-ops") are given to both builds, whose flags
# share their names: e.g. GOBUILD_FLAGS="--fp16 --fused packed --custom-ops --fused-gelu
# --fp16-linear --cudnn-attention" compares the fastest float16 graph (the ops are then built with
# cuDNN: the nvidia-cudnn wheel and .device/cudnn-fe-include.tar.xz, bench/pack.sh CUDNN_FRONTEND=DIR);
# the tiny model's Python-built graph with those flags goes to $OUT/esm2-tiny-flags too.
#   bash .device/on-device.sh bash bench/gpu_gobuild.sh
set -euo pipefail
export PYTHONUNBUFFERED=1
w=${TMPDIR:-/tmp}/gobuild
mkdir -p "$w" "$OUT"
read -r -a flags <<<"${GOBUILD_FLAGS:---fp16 --fused packed --custom-ops}"
python3 tools/export_esm2.py --hf esm2graph/testdata/esm2-tiny-hf --name esm2-tiny --fused mha --out "$OUT/esm2-tiny-mha" 2>&1 | tail -3
python3 tools/export_esm2.py --hf esm2graph/testdata/esm2-tiny-hf --name esm2-tiny "${flags[@]}" --no-check --out "$OUT/esm2-tiny-flags" 2>&1 | tail -2
ops_env=(SEQEMBED_OPS_ARCHS=90)
if [[ " ${flags[*]} " == *" --cudnn-attention "* ]]; then
  cudnn=${SEQEMBED_OPS_CUDNN:-$(python3 -c 'import nvidia.cudnn as m; print(list(m.__path__)[0])')}
  fe=${SEQEMBED_CUDNN_FRONTEND:-$w/cudnn-fe/include}
  [[ -d $fe ]] || { mkdir -p "$w/cudnn-fe" && tar -xJf .device/cudnn-fe-include.tar.xz -C "$w/cudnn-fe"; }
  ops_env+=(SEQEMBED_OPS_CUDNN="$cudnn" SEQEMBED_CUDNN_FRONTEND="$fe")
fi
# Parity on the 500 real proteins of testdata/sample; throughput on 8,000 sequences whose lengths are
# drawn from those 500 (random residues: both graphs see the same batches; the call's 64 MiB leave
# no room for the real-protein subset beside the binary).
fasta=$w/input.fasta
zcat testdata/sample/query500.fasta.gz >"$fasta"
python3 bench/synth_fasta.py "$fasta" "$w/synthetic.fasta" 8000
t0=$(date +%s)
python3 tools/export_esm2.py --preset t33_650M "${flags[@]}" --save-pretrained "$w/hf650" --out "$w/py650" --no-check 2>&1 | tail -2
echo "python export: $(($(date +%s) - t0)) s"
env "${ops_env[@]}" bash scripts/build-ops.sh "$w/py650/libseqembed_ops.so"
mkdir -p "$w/go650" && cp "$w/py650/libseqembed_ops.so" "$w/go650/"
t0=$(date +%s)
/usr/bin/time -v seqembed model build --from "$w/hf650" --out "$w/go650" "${flags[@]}" --name esm2-t33_650M 2>&1 |
  grep -E 'model:|Maximum resident|Elapsed' || true
echo "go build: $(($(date +%s) - t0)) s"
ls -la "$w/py650" "$w/go650"
for m in py650 go650; do
  seqembed run "$fasta" --model "$w/$m" --device cuda:0 --out "$w/$m.parquet" --quiet --allow-rejects --allow-id-conflicts | tail -2
done
python3 bench/compare_parquet.py "$w/py650.parquet" "$w/go650.parquet" --min-cos 0.99999 --label "650M ${flags[*]}: Python export vs Go build" | tee "$OUT/gobuild-parity.json"
bash bench/gpu.sh --budget 200 --out "$OUT/bench" --fasta "$w/synthetic.fasta" \
  "model=650M export=dir:$w/py650 modes=e2e label=python" "model=650M export=dir:$w/go650 modes=e2e label=go" \
  "model=650M export=dir:$w/py650 modes=e2e label=python-2" "model=650M export=dir:$w/go650 modes=e2e label=go-2"
