#!/usr/bin/env bash
# On the GPU machine: export the committed tiny model with its golden vectors into $OUT/esm2-tiny,
# then probe the big-model export path (650M fp16) so later GPU runs know it works.
set -uo pipefail
export PYTHONUNBUFFERED=1
python3 -c 'import torch, transformers, onnx, onnxruntime, sys; print(sys.version.split()[0], "torch", torch.__version__, "transformers", transformers.__version__, "onnx", onnx.__version__, "ort", onnxruntime.__version__, torch.cuda.get_device_name(0))'
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 tools/export_esm2.py --preset tiny --out "$OUT/esm2-tiny" \
  --golden testdata/golden-input.fasta --golden-out "$OUT/esm2-tiny/golden.json" 2>&1 | tee "$OUT/export-tiny.log"
ls -la "$OUT/esm2-tiny"
d=$(mktemp -d)
/usr/bin/time -v python3 tools/export_esm2.py --preset t33_650M --fp16 --out "$d/m650" 2>&1 | grep -E 'export|parity|Maximum resident|Elapsed|Error|error|name' | tee "$OUT/export-650m.log"
ls -la "$d/m650"
