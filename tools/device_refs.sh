#!/usr/bin/env bash
# On the GPU machine (it has PyTorch; the dev machine has not): the tiny model's reference files
# into $OUT/refs — the committed traced export re-made with its weights as a Hugging Face directory
# (hf/: config.json + model.safetensors) and a fair-esm checkpoint (esm2-tiny.pt), the fused mha
# float32 graph tools/esm2_graph.py writes from the same weights (mha/), and the reference outputs
# of every layer and pooling (reference-outputs.json.gz, tools/reference_outputs.py).
#   bash .device/on-device.sh bash tools/device_refs.sh
set -euo pipefail
export PYTHONUNBUFFERED=1
r=$OUT/refs
mkdir -p "$r"
python3 tools/export_esm2.py --preset tiny --out "$r/traced" --save-pretrained "$r/hf" --save-fairesm "$r/esm2-tiny.pt" \
  --golden testdata/golden-input.fasta --golden-out "$r/traced/golden.json"
echo "traced sha256 now: $(sha256sum "$r/traced/model.onnx" | cut -c1-64)  committed: $(sha256sum testdata/esm2-tiny/model.onnx | cut -c1-64)"
cmp "$r/traced/golden.json" testdata/esm2-tiny/golden.json && echo "golden.json identical to the committed one"
python3 tools/export_esm2.py --hf "$r/hf" --name esm2-tiny --fused mha --out "$r/mha"
python3 tools/reference_outputs.py --hf "$r/hf" --fasta testdata/golden-input.fasta --out "$r/reference-outputs.json.gz"
ls -la "$r" "$r"/*
