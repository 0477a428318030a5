// seqembed's custom ONNX Runtime operators (domain "ai.seqembed"), loaded by gpurun when a model's
// manifest names the library ("custom_ops"). Build: scripts/build-ops.sh (nvcc, CUDA + CPU ops) or,
// without CUDA, the same file as C++ with -DSEQEMBED_OPS_CPU_ONLY (CPU op only; used by the tests).
//
// BiasRotary (CUDA, float16) / BiasRotaryF32 (CPU, float32): y = rotary(x + bias) for ESM-2's
// rotary embedding with each head's rotate-half pairs stored side by side (tools/esm2_graph.py
// interleave_heads). ORT's RotaryEmbedding runs one block per (token, head) with one thread per
// element plus a separate bias Add; this is one bandwidth-bound pass with 16-byte accesses.
//
//   inputs   x [..., D] (rows R = numel / D), bias [D], position_ids int64: R values (one per
//            row) or 1 value p0 (row r is at position p0 + r % S, S = x's second-to-last
//            dimension: padded [B, S, D] batches), cos_cache, sin_cache [P, C] (pair j of a row
//            uses column j % C)
//   output   y, same shape as x:  y[2j] = x0*c - x1*s,  y[2j+1] = x1*c + x0*s,
//            with x0 = x[2j] + bias[2j], x1 = x[2j+1] + bias[2j+1], c|s = cache[position][j % C]
// Positions outside [0, P) are clamped (the CPU op rejects them).
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "onnxruntime_c_api.h"

#ifndef SEQEMBED_OPS_CPU_ONLY
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#endif

namespace {

const OrtApi* g_api = nullptr;

OrtStatus* Fail(const char* msg) { return g_api->CreateStatus(ORT_INVALID_ARGUMENT, msg); }

#define SE_RETURN_IF(expr)        \
  do {                            \
    OrtStatus* se_status_ = (expr); \
    if (se_status_) return se_status_; \
  } while (0)

struct Tensor {
  void* data = nullptr;
  std::vector<int64_t> dims;
  ONNXTensorElementDataType type = ONNX_TENSOR_ELEMENT_DATA_TYPE_UNDEFINED;
  size_t count = 0;
};

OrtStatus* GetInput(OrtKernelContext* ctx, size_t index, Tensor* t) {
  const OrtValue* v = nullptr;
  SE_RETURN_IF(g_api->KernelContext_GetInput(ctx, index, &v));
  if (!v) return Fail("BiasRotary: missing input");
  OrtTensorTypeAndShapeInfo* info = nullptr;
  SE_RETURN_IF(g_api->GetTensorTypeAndShape(v, &info));
  size_t nd = 0;
  OrtStatus* s = g_api->GetDimensionsCount(info, &nd);
  if (!s) {
    t->dims.assign(nd, 0);
    s = g_api->GetDimensions(info, t->dims.data(), nd);
  }
  if (!s) s = g_api->GetTensorElementType(info, &t->type);
  if (!s) s = g_api->GetTensorShapeElementCount(info, &t->count);
  g_api->ReleaseTensorTypeAndShapeInfo(info);
  if (s) return s;
  return g_api->GetTensorMutableData(const_cast<OrtValue*>(v), &t->data);
}

struct Args {
  Tensor x, bias, pos, cos, sin;
  void* y = nullptr;
  int64_t rows = 0, dim = 0, cache_rows = 0, cache_cols = 0;
  int64_t seq = 0;  // > 0: one start position, row r at pos[0] + r % seq; 0: one position per row
};

// GatherArgs reads and checks the inputs and allocates the output.
OrtStatus* GatherArgs(OrtKernelContext* ctx, ONNXTensorElementDataType want, Args* a) {
  SE_RETURN_IF(GetInput(ctx, 0, &a->x));
  SE_RETURN_IF(GetInput(ctx, 1, &a->bias));
  SE_RETURN_IF(GetInput(ctx, 2, &a->pos));
  SE_RETURN_IF(GetInput(ctx, 3, &a->cos));
  SE_RETURN_IF(GetInput(ctx, 4, &a->sin));
  if (a->x.dims.empty()) return Fail("BiasRotary: x must have at least one dimension");
  a->dim = a->x.dims.back();
  if (a->dim <= 0 || a->dim % 2) return Fail("BiasRotary: last dimension of x must be even and > 0");
  a->rows = a->dim ? static_cast<int64_t>(a->x.count) / a->dim : 0;
  if (a->x.type != want || a->bias.type != want || a->cos.type != want || a->sin.type != want)
    return Fail("BiasRotary: x, bias, cos_cache and sin_cache must all have the op's float type");
  if (a->pos.type != ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64) return Fail("BiasRotary: position_ids must be int64");
  if (static_cast<int64_t>(a->bias.count) != a->dim) return Fail("BiasRotary: bias must have D values");
  if (a->pos.count == 1 && a->rows != 1) {
    a->seq = a->x.dims.size() >= 2 ? a->x.dims[a->x.dims.size() - 2] : a->rows;
    if (a->seq <= 0) return Fail("BiasRotary: x has an empty sequence dimension");
  } else if (static_cast<int64_t>(a->pos.count) != a->rows) {
    return Fail("BiasRotary: position_ids must hold one position per row of x, or one start position");
  }
  if (a->cos.dims.size() != 2 || a->cos.dims != a->sin.dims || a->cos.dims[1] <= 0)
    return Fail("BiasRotary: cos_cache and sin_cache must both be [P, C]");
  a->cache_rows = a->cos.dims[0];
  a->cache_cols = a->cos.dims[1];
  OrtValue* out = nullptr;
  SE_RETURN_IF(g_api->KernelContext_GetOutput(ctx, 0, a->x.dims.data(), a->x.dims.size(), &out));
  return g_api->GetTensorMutableData(out, &a->y);
}

OrtStatus* ComputeCPU(OrtKernelContext* ctx) {
  Args a;
  SE_RETURN_IF(GatherArgs(ctx, ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT, &a));
  const float* x = static_cast<const float*>(a.x.data);
  const float* b = static_cast<const float*>(a.bias.data);
  const int64_t* pos = static_cast<const int64_t*>(a.pos.data);
  const float* cc = static_cast<const float*>(a.cos.data);
  const float* sc = static_cast<const float*>(a.sin.data);
  float* y = static_cast<float*>(a.y);
  for (int64_t r = 0; r < a.rows; r++) {
    const int64_t p = a.seq ? pos[0] + r % a.seq : pos[r];
    if (p < 0 || p >= a.cache_rows) return Fail("BiasRotary: position outside the cos/sin cache");
    for (int64_t j = 0; j < a.dim / 2; j++) {
      const float c = cc[p * a.cache_cols + j % a.cache_cols], s = sc[p * a.cache_cols + j % a.cache_cols];
      const float x0 = x[r * a.dim + 2 * j] + b[2 * j], x1 = x[r * a.dim + 2 * j + 1] + b[2 * j + 1];
      y[r * a.dim + 2 * j] = x0 * c - x1 * s;
      y[r * a.dim + 2 * j + 1] = x1 * c + x0 * s;
    }
  }
  return nullptr;
}

#ifndef SEQEMBED_OPS_CPU_ONLY
// One thread per 8 consecutive halves (4 pairs): 16-byte loads and stores, math in float32.
__global__ void BiasRotaryKernel(const uint4* __restrict__ x, const uint4* __restrict__ bias,
                                 const int64_t* __restrict__ pos, const __half* __restrict__ cc,
                                 const __half* __restrict__ sc, uint4* __restrict__ y, int64_t vectors,
                                 int64_t vectors_per_row, int64_t seq, int64_t cache_rows, int64_t cache_cols) {
  const int64_t v = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (v >= vectors) return;
  const int64_t r = v / vectors_per_row, col = v % vectors_per_row;
  int64_t p = seq ? pos[0] + r % seq : pos[r];
  p = p < 0 ? 0 : (p >= cache_rows ? cache_rows - 1 : p);
  const uint4 xv = x[v], bv = bias[col];
  const __half2* xh = reinterpret_cast<const __half2*>(&xv);
  const __half2* bh = reinterpret_cast<const __half2*>(&bv);
  uint4 out;
  __half2* oh = reinterpret_cast<__half2*>(&out);
  const int64_t pair0 = col * 4;
#pragma unroll
  for (int k = 0; k < 4; k++) {
    const int64_t ci = p * cache_cols + (pair0 + k) % cache_cols;
    const float c = __half2float(cc[ci]), s = __half2float(sc[ci]);
    const float2 xf = __half22float2(xh[k]), bf = __half22float2(bh[k]);
    const float x0 = xf.x + bf.x, x1 = xf.y + bf.y;
    oh[k] = __floats2half2_rn(x0 * c - x1 * s, x1 * c + x0 * s);
  }
  y[v] = out;
}

OrtStatus* ComputeCUDA(OrtKernelContext* ctx) {
  Args a;
  SE_RETURN_IF(GatherArgs(ctx, ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16, &a));
  if (a.dim % 8) return Fail("BiasRotary (CUDA): last dimension of x must be a multiple of 8");
  void* stream = nullptr;
  SE_RETURN_IF(g_api->KernelContext_GetGPUComputeStream(ctx, &stream));
  const int64_t per_row = a.dim / 8, vectors = a.rows * per_row;
  if (vectors == 0) return nullptr;
  const int threads = 256;
  const unsigned blocks = static_cast<unsigned>((vectors + threads - 1) / threads);
  BiasRotaryKernel<<<blocks, threads, 0, static_cast<cudaStream_t>(stream)>>>(
      static_cast<const uint4*>(a.x.data), static_cast<const uint4*>(a.bias.data),
      static_cast<const int64_t*>(a.pos.data), static_cast<const __half*>(a.cos.data),
      static_cast<const __half*>(a.sin.data), static_cast<uint4*>(a.y), vectors, per_row, a.seq, a.cache_rows, a.cache_cols);
  const cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) return g_api->CreateStatus(ORT_RUNTIME_EXCEPTION, cudaGetErrorString(err));
  return nullptr;
}
#endif

struct Kernel {
  bool cuda;
};

// Op is one registered operator: name, execution provider and float type; inputs 0, 1, 3, 4 and
// the output have the float type, input 2 (position_ids) is int64.
struct Op : OrtCustomOp {
  const char* name;
  const char* provider;
  ONNXTensorElementDataType type;
  bool cuda;

  Op(const char* n, const char* ep, ONNXTensorElementDataType t, bool on_cuda) {
    std::memset(static_cast<OrtCustomOp*>(this), 0, sizeof(OrtCustomOp));
    name = n;
    provider = ep;
    type = t;
    cuda = on_cuda;
    version = ORT_API_VERSION;
    GetName = [](const OrtCustomOp* op) { return static_cast<const Op*>(op)->name; };
    GetExecutionProviderType = [](const OrtCustomOp* op) { return static_cast<const Op*>(op)->provider; };
    GetInputTypeCount = [](const OrtCustomOp*) -> size_t { return 5; };
    GetInputType = [](const OrtCustomOp* op, size_t i) {
      return i == 2 ? ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64 : static_cast<const Op*>(op)->type;
    };
    GetOutputTypeCount = [](const OrtCustomOp*) -> size_t { return 1; };
    GetOutputType = [](const OrtCustomOp* op, size_t) { return static_cast<const Op*>(op)->type; };
    GetInputCharacteristic = [](const OrtCustomOp*, size_t) { return INPUT_OUTPUT_REQUIRED; };
    GetOutputCharacteristic = [](const OrtCustomOp*, size_t) { return INPUT_OUTPUT_REQUIRED; };
    GetInputMemoryType = [](const OrtCustomOp*, size_t) { return OrtMemTypeDefault; };
    GetVariadicInputMinArity = [](const OrtCustomOp*) { return 1; };
    GetVariadicInputHomogeneity = [](const OrtCustomOp*) { return 1; };
    GetVariadicOutputMinArity = [](const OrtCustomOp*) { return 1; };
    GetVariadicOutputHomogeneity = [](const OrtCustomOp*) { return 1; };
    CreateKernelV2 = [](const OrtCustomOp* op, const OrtApi*, const OrtKernelInfo*, void** kernel) -> OrtStatusPtr {
      *kernel = new Kernel{static_cast<const Op*>(op)->cuda};
      return nullptr;
    };
    KernelComputeV2 = [](void* kernel, OrtKernelContext* ctx) -> OrtStatusPtr {
#ifndef SEQEMBED_OPS_CPU_ONLY
      if (static_cast<Kernel*>(kernel)->cuda) return ComputeCUDA(ctx);
#endif
      (void)kernel;
      return ComputeCPU(ctx);
    };
    KernelDestroy = [](void* kernel) { delete static_cast<Kernel*>(kernel); };
    GetStartVersion = [](const OrtCustomOp*) { return 1; };
    GetEndVersion = [](const OrtCustomOp*) { return 1; };
  }
};

Op g_cpu_op("BiasRotaryF32", "CPUExecutionProvider", ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT, false);
#ifndef SEQEMBED_OPS_CPU_ONLY
Op g_cuda_op("BiasRotary", "CUDAExecutionProvider", ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16, true);
#endif

}  // namespace

// RegisterCustomOps is what OrtApi::RegisterCustomOpsLibrary_V2 calls: one "ai.seqembed" domain
// per session options (kept for the process's life, as ORT requires it to outlive the sessions).
extern "C" __attribute__((visibility("default"))) OrtStatus* ORT_API_CALL RegisterCustomOps(OrtSessionOptions* options,
                                                                                           const OrtApiBase* base) {
  const OrtApi* api = base->GetApi(ORT_API_VERSION);
  if (!api) return base->GetApi(1)->CreateStatus(ORT_FAIL, "seqembed ops: ONNX Runtime too old for this API version");
  g_api = api;
  OrtCustomOpDomain* domain = nullptr;
  SE_RETURN_IF(api->CreateCustomOpDomain("ai.seqembed", &domain));
  SE_RETURN_IF(api->CustomOpDomain_Add(domain, &g_cpu_op));
#ifndef SEQEMBED_OPS_CPU_ONLY
  SE_RETURN_IF(api->CustomOpDomain_Add(domain, &g_cuda_op));
#endif
  return api->AddCustomOpDomain(options, domain);
}
