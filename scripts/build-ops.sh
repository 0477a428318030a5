#!/usr/bin/env bash
# build-ops.sh OUT.so [cpu]
# Builds seqembed's custom ONNX Runtime operators (gpurun/ortops/seqembed_ops.cu: BiasRotary, and the
# FP8 QuantizeE4M3 / Fp8Linear and the fp16 Fp16Linear, which link cuBLASLt) into
# OUT.so: with nvcc for the CUDA op (sm_80 and sm_90, or $SEQEMBED_OPS_ARCHS; on the GPU machine or in
# Dockerfile.gpu's build stage) or, with "cpu", with g++ for the CPU op only (tests, no CUDA).
# A model exported with `tools/export_esm2.py --fused packed --custom-ops` names the library in
# its manifest; put OUT.so in the model directory as libseqembed_ops.so.
set -euo pipefail
out=${1:?usage: build-ops.sh OUT.so [cpu]}
root=$(cd "$(dirname "$0")/.." && pwd)
src=$root/gpurun/ortops
inc=$root/third_party/onnxruntime/include # ONNX Runtime's C API headers (third_party/onnxruntime/VERSION)
if [[ ${2:-} == cpu ]]; then
  exec g++ -O2 -std=c++17 -shared -fPIC -x c++ -DSEQEMBED_OPS_CPU_ONLY -I "$inc" "$src/seqembed_ops.cu" -o "$out"
fi
nvcc=${NVCC:-$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)}
gencode=()
for a in ${SEQEMBED_OPS_ARCHS:-80 90}; do # SM versions to build for (default 80 90)
  gencode+=(-gencode "arch=compute_$a,code=sm_$a")
done
exec "$nvcc" -O3 -std=c++17 --cudart shared -shared -Xcompiler -fPIC "${gencode[@]}" \
  -I "$inc" "$src/seqembed_ops.cu" -o "$out" -lcublasLt
