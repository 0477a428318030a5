#!/usr/bin/env bash
# build-ops.sh OUT.so [cpu]
# Builds seqembed's custom ONNX Runtime operators (gpurun/ortops/seqembed_ops.cu: BiasRotary, and the
# FP8 QuantizeE4M3 / Fp8Linear and the fp16 Fp16Linear, which link cuBLASLt) into
# OUT.so: with nvcc for the CUDA op (sm_80 and sm_90, or $SEQEMBED_OPS_ARCHS; on the GPU machine or in
# Dockerfile.gpu's build stage) or, with "cpu", with g++ for the CPU op only (tests, no CUDA).
# A model exported with `tools/export_esm2.py --fused packed --custom-ops` names the library in
# its manifest; put OUT.so in the model directory as libseqembed_ops.so.
# SEQEMBED_OPS_CUDNN=DIR (a cuDNN 9 install with include/ and lib/, e.g. the nvidia-cudnn wheel's
# nvidia/cudnn) and SEQEMBED_CUDNN_FRONTEND=DIR (cudnn-frontend's include/, header-only) add the
# CUDA RaggedAttention op (cuDNN SDPA; export --cudnn-attention), linking libcudnn.so.9 and NVRTC;
# without them the library's CUDA RaggedAttention only fails, saying to rebuild (its CPU twin is
# always there). cudnn-frontend is header-only: e.g. the include/ of
# `git clone --depth 1 -b v1.23.0 https://github.com/NVIDIA/cudnn-frontend` (the version measured).
set -euo pipefail
out=${1:?usage: build-ops.sh OUT.so [cpu]}
mkdir -p "$(dirname "$out")"
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
cudnn=()
if [[ -n ${SEQEMBED_OPS_CUDNN:-} ]]; then
  fe=${SEQEMBED_CUDNN_FRONTEND:?SEQEMBED_OPS_CUDNN needs SEQEMBED_CUDNN_FRONTEND (cudnn-frontend include dir)}
  [[ -f $fe/cudnn_frontend.h ]] || { echo "build-ops.sh: no cudnn_frontend.h in $fe" >&2 && exit 2; }
  [[ -f $SEQEMBED_OPS_CUDNN/include/cudnn.h ]] || { echo "build-ops.sh: no include/cudnn.h in $SEQEMBED_OPS_CUDNN" >&2 && exit 2; }
  cudnn=(-DSEQEMBED_OPS_CUDNN -I "$fe" -I "$SEQEMBED_OPS_CUDNN/include" -L "$SEQEMBED_OPS_CUDNN/lib" -l:libcudnn.so.9 -lnvrtc -lcuda)
  # -lcuda is the driver (cudnn-frontend calls it). Where none is installed (a Docker build) the
  # toolkit's link stub stands in; either way the library needs libcuda.so.1, the driver's at run time.
  stubs=$(dirname "$nvcc")/../lib64/stubs
  if ! ldconfig -p 2>/dev/null | grep -q 'libcuda\.so ' && [[ -e $stubs/libcuda.so ]]; then
    cudnn+=(-L "$stubs")
  fi
fi
exec "$nvcc" -O3 -std=c++17 --cudart shared -shared -Xcompiler -fPIC "${gencode[@]}" \
  -I "$inc" "$src/seqembed_ops.cu" -o "$out" -lcublasLt "${cudnn[@]}"
