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
//
// FP8 linear layers (tools/esm2_graph.py precision "fp8"; E4M3 = OCP float8 e4m3fn, max 448, no
// infinities, stored as uint8 bit patterns):
//
// QuantizeE4M3 (CUDA, float16 x) / QuantizeE4M3F32 (CPU, float32 x), attribute gelu (0, 1 or 2,
// default 0): per-row (per-token) dynamic quantisation of x [..., K] (rows R = numel / K):
//   v = x (gelu 0), erf-GELU(x) (1) or GELU's tanh approximation (2: tools/esm2_graph.py fused_gelu
//   with fp8; the CUDA op computes it as x * sigmoid(2u) with the hardware exp, the CPU op as
//   GeluTanh);  scale[r] = max_k |v[r,k]| / 448 (1 where that is 0);
//   q[r,k] = e4m3(v[r,k] * (1 / scale[r])) (round to nearest even, saturated to ±448)
// SkipLayerNormE4M3 (CUDA, float16) / SkipLayerNormE4M3F32 (CPU, float32), attribute epsilon
// (float, default 1e-5): SkipLayerNormalization and QuantizeE4M3 in one pass, for a LayerNorm whose
// only reader is an FP8 GEMM (tools/esm2_graph.py fused_ln_quant):
//   inputs   x [..., D], skip [..., D], gamma [D], beta [D], bias [D] (optional)
//   outputs  q uint8 [..., D], scale float32 [...] (QuantizeE4M3's of LayerNorm(s)), sum [..., D] = s
//            s = x + skip + bias;  LayerNorm(s) = (s - mean(s)) / sqrt(var(s) + epsilon) * gamma + beta
//            (float32 throughout: the normalised row is quantised without a float16 rounding
//            between; var is the biased variance, as LayerNormalization's)
//   outputs  q uint8 [..., K], scale float32 [...] (x's dimensions without the last)
// Fp8Linear (CUDA, float16 out; cuBLASLt FP8 GEMM with outer-vector scales, Hopper/Ada) /
// Fp8LinearF32 (CPU, float32 out), attribute fast_accum (CUDA only, default 0):
//   inputs   q uint8 [..., K], scale float32 [R], w uint8 [N, K] (E4M3, one row per output
//            channel), w_scale float32 [N], bias [N] (optional; the output's float type)
//   output   y [..., N]:  y[r,n] = scale[r] * w_scale[n] * sum_k e4m3(q[r,k]) * e4m3(w[n,k]) + bias[n]
//            (float32 accumulation; the CUDA op adds the bias in cuBLASLt's epilogue)
// The CUDA op refuses a GPU without FP8 tensor cores (compute capability below 8.9).
//
// Fp16Linear (CUDA, float16; cuBLASLt) / Fp16LinearF32 (CPU, float32), attribute gelu (0 or 1,
// default 0): a linear layer with its epilogue fused into the GEMM (tools/esm2_graph.py
// fused_gelu: the FFN's fc1, replacing MatMul + BiasGelu; fused_residual: the output projection
// and fc2 with the residual stream added, so a LayerNormalization replaces SkipLayerNormalization):
//   inputs   x [..., K], w [N, K] (one row per output channel), bias [N] (optional),
//            residual [..., N] (optional; y's shape; not with gelu)
//   output   y [..., N]:  v = sum_k x[r,k] * w[n,k] + bias[n] + residual[r,n];  y = gelu ? GeluTanh(v) : v
//            (float32 accumulation, one rounding: the CUDA op adds the residual as cuBLASLt's C with
//            beta = 1). The GELU is the tanh approximation, the one cuBLASLt's
//            GELU epilogue computes, not ESM's erf GELU: a model built with it is checked against
//            float32 PyTorch (docs/perf.md) before it is used.
//
// RaggedAttention (CUDA, float16; cuDNN's SDPA forward with SEQEMBED_OPS_CUDNN, see
// scripts/build-ops.sh; without it the op fails every run with a sentence saying how to rebuild) /
// RaggedAttentionF32 (CPU, float32), attributes num_heads (required) and scale (float, default
// 1/sqrt(head size)): bidirectional attention over packed (unpadded) tokens, in place of
// com.microsoft.PackedMultiHeadAttention (tools/esm2_graph.py cudnn_attention):
//   inputs   q, k, v [T, D] (or [..., D] with T rows; D = num_heads * head size, each row a
//            token's heads side by side), token_offset int32 [B, S] (RemovePadding's: only its
//            shape is read, S bounding every sequence's length), cu_seqlens int32 [B + 1]
//            (sequence i is rows cu[i] .. cu[i+1]-1; cu[0] = 0, cu[B] = T)
//   output   o [T, D]:  o[t, h] = sum_j softmax_j(scale * q[t, h] . k[j, h]) v[j, h] over the rows j
//            of t's sequence (float32 softmax and accumulation)
// The CUDA op trusts cu_seqlens' values (checking them would cost a device-to-host copy and a
// stream synchronisation a call); the CPU op checks them. Status (2026-12-03, eleventh session): on an
// H200 TestGPURaggedAttention passes against the CPU twin, and ESM-2 650M with it embeds 1.43-1.45x
// compiled PyTorch (1.40x with PackedMultiHeadAttention) at cosine 0.9999997 vs float32 (docs/perf.md).

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <initializer_list>
#include <map>
#include <mutex>
#include <string>
#include <tuple>
#include <unordered_map>
#include <utility>
#include <vector>

#include "onnxruntime_c_api.h"

#ifndef SEQEMBED_OPS_CPU_ONLY
#include <cublasLt.h>
#include <cuda_fp16.h>
#include <cuda_fp8.h>
#include <cuda_runtime.h>
#ifdef SEQEMBED_OPS_CUDNN
#include "ragged_attn_graph.h"
#endif
#endif

namespace {

const OrtApi* g_api = nullptr;

OrtStatus* Fail(const char* msg) { return g_api->CreateStatus(ORT_INVALID_ARGUMENT, msg); }
OrtStatus* Fail(const std::string& msg) { return g_api->CreateStatus(ORT_INVALID_ARGUMENT, msg.c_str()); }

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

// GetInput reads input index into t; a missing input leaves t empty (data null) when optional,
// else fails.
OrtStatus* GetInput(OrtKernelContext* ctx, size_t index, Tensor* t, bool optional = false) {
  const OrtValue* v = nullptr;
  SE_RETURN_IF(g_api->KernelContext_GetInput(ctx, index, &v));
  if (!v) return optional ? nullptr : Fail("seqembed ops: missing input " + std::to_string(index));
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

struct Kernel;  // one node's state (below); every op's compute takes it

OrtStatus* BiasRotaryCPU(Kernel*, OrtKernelContext* ctx) {
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
// A block holds blockDim.y rows, each thread the vectors col, col + blockDim.x, ... of its row (8
// consecutive halves = 4 pairs a vector): 16-byte loads and stores of x and y, math in float32, 32-bit
// indices (the launcher checks the sizes), the row's position read and clamped once, and with
// kVecCache (C % 4 == 0, so a vector's 4 pairs are 4 consecutive cache columns) 8-byte cos/sin loads.
template <bool kVecCache>
__global__ void BiasRotaryKernel(const uint4* __restrict__ x, const uint4* __restrict__ bias,
                                 const int64_t* __restrict__ pos, const __half* __restrict__ cc,
                                 const __half* __restrict__ sc, uint4* __restrict__ y, int rows, int per_row,
                                 int seq, int cache_rows, int cache_cols) {
  const int r = blockIdx.x * blockDim.y + threadIdx.y;
  if (r >= rows) return;
  const int64_t p64 = seq ? pos[0] + r % seq : pos[r];
  const int p = p64 < 0 ? 0 : (p64 >= cache_rows ? cache_rows - 1 : static_cast<int>(p64));
  const __half* crow = cc + p * cache_cols;
  const __half* srow = sc + p * cache_cols;
  for (int col = threadIdx.x; col < per_row; col += blockDim.x) {
    const int v = r * per_row + col;
    const uint4 xv = x[v], bv = bias[col];
    const __half2* xh = reinterpret_cast<const __half2*>(&xv);
    const __half2* bh = reinterpret_cast<const __half2*>(&bv);
    alignas(8) __half ch[4];
    alignas(8) __half sh[4];
    if (kVecCache) {
      const int j0 = (col * 4) % cache_cols;
      *reinterpret_cast<uint2*>(ch) = *reinterpret_cast<const uint2*>(crow + j0);
      *reinterpret_cast<uint2*>(sh) = *reinterpret_cast<const uint2*>(srow + j0);
    } else {
#pragma unroll
      for (int k = 0; k < 4; k++) {
        const int j = (col * 4 + k) % cache_cols;
        ch[k] = crow[j];
        sh[k] = srow[j];
      }
    }
    uint4 out;
    __half2* oh = reinterpret_cast<__half2*>(&out);
#pragma unroll
    for (int k = 0; k < 4; k++) {
      const float c = __half2float(ch[k]), s = __half2float(sh[k]);
      const float2 xf = __half22float2(xh[k]), bf = __half22float2(bh[k]);
      const float x0 = xf.x + bf.x, x1 = xf.y + bf.y;
      oh[k] = __floats2half2_rn(x0 * c - x1 * s, x1 * c + x0 * s);
    }
    y[v] = out;
  }
}

OrtStatus* BiasRotaryCUDA(Kernel*, OrtKernelContext* ctx) {
  Args a;
  SE_RETURN_IF(GatherArgs(ctx, ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16, &a));
  if (a.dim % 8) return Fail("BiasRotary (CUDA): last dimension of x must be a multiple of 8");
  void* stream = nullptr;
  SE_RETURN_IF(g_api->KernelContext_GetGPUComputeStream(ctx, &stream));
  const int64_t per_row = a.dim / 8, vectors = a.rows * per_row;
  if (vectors == 0) return nullptr;
  constexpr int64_t kMax = 0x7fffffff;
  if (vectors > kMax || a.seq > kMax || a.cache_rows * a.cache_cols > kMax)
    return Fail("BiasRotary (CUDA): x or the cos/sin cache has more than 2^31 - 1 elements a vector index can reach");
  // Up to 256 threads across a row (a row of more vectors is walked in passes), rows stacked to
  // about 256 threads a block: no thread idles at ESM-2's widths (160 vectors at 1,280).
  const int64_t passes = (per_row + 255) / 256;
  const int tx = static_cast<int>((per_row + passes - 1) / passes);
  const int ty = std::max(1, 256 / tx);
  const unsigned blocks = static_cast<unsigned>((a.rows + ty - 1) / ty);
  auto* launch = a.cache_cols % 4 ? BiasRotaryKernel<false> : BiasRotaryKernel<true>;
  launch<<<blocks, dim3(tx, ty), 0, static_cast<cudaStream_t>(stream)>>>(
      static_cast<const uint4*>(a.x.data), static_cast<const uint4*>(a.bias.data),
      static_cast<const int64_t*>(a.pos.data), static_cast<const __half*>(a.cos.data),
      static_cast<const __half*>(a.sin.data), static_cast<uint4*>(a.y), static_cast<int>(a.rows),
      static_cast<int>(per_row), static_cast<int>(a.seq), static_cast<int>(a.cache_rows), static_cast<int>(a.cache_cols));
  const cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) return g_api->CreateStatus(ORT_RUNTIME_EXCEPTION, cudaGetErrorString(err));
  return nullptr;
}
#endif

// ---- FP8 (E4M3) quantisation and linear layers ------------------------------------------------

constexpr float kE4M3Max = 448.0f;

// E4M3ToFloat decodes one e4m3fn byte (0x7f / 0xff are NaN; no infinities).
float E4M3ToFloat(uint8_t c) {
  const int e = (c >> 3) & 15, m = c & 7;
  float v;
  if (e == 15 && m == 7) {
    v = NAN;
  } else if (e == 0) {
    v = std::ldexp(static_cast<float>(m), -9);
  } else {
    v = std::ldexp(1.0f + static_cast<float>(m) / 8.0f, e - 7);
  }
  return (c & 0x80) ? -v : v;
}

// FloatToE4M3 encodes x as e4m3fn, rounding to nearest even and saturating to ±448 (what CUDA's
// __nv_cvt_float_to_fp8(x, __NV_SATFINITE, __NV_E4M3) does); NaN gives 0x7f.
uint8_t FloatToE4M3(float x) {
  if (std::isnan(x)) return 0x7f;
  const uint8_t sign = std::signbit(x) ? 0x80 : 0;
  const float a = std::fabs(x);
  if (a >= kE4M3Max) return sign | 0x7e;
  int e = 0;
  std::frexp(a, &e);  // a = f * 2^e, f in [0.5, 1): a's binade is 2^(e-1)
  e -= 1;
  if (a == 0.0f || e < -6) {  // subnormal: m * 2^-9, m = 0..8 (8 is the smallest normal, 0x08)
    const float m = std::nearbyint(std::ldexp(a, 9));
    return sign | static_cast<uint8_t>(m);
  }
  float m = std::nearbyint((std::ldexp(a, -e) - 1.0f) * 8.0f);  // 0..8
  if (m == 8.0f) {
    m = 0.0f;
    e += 1;
  }
  const int code = ((e + 7) << 3) | static_cast<int>(m);
  return sign | static_cast<uint8_t>(code > 0x7e ? 0x7e : code);
}

// SE_HD marks the helpers both forms share: the CPU ops and the CUDA kernels.
#ifdef SEQEMBED_OPS_CPU_ONLY
#define SE_HD
#else
#define SE_HD __host__ __device__
#endif

SE_HD inline float GeluErf(float x) { return 0.5f * x * (1.0f + erff(x * 0.70710678118654752f)); }

// GeluTanh is GELU's tanh approximation (cuBLASLt's GELU epilogue; PyTorch's approximate="tanh"),
// 0.5 x (1 + tanh u) with u = GeluTanhArg(x).
SE_HD inline float GeluTanhArg(float x) { return 0.79788456080286536f * (x + 0.044715f * x * x * x); }
SE_HD inline float GeluTanh(float x) { return 0.5f * x * (1.0f + tanhf(GeluTanhArg(x))); }

// RowScale is the per-row quantisation scale for a row whose largest magnitude is amax.
SE_HD inline float RowScale(float amax) {
  const float s = amax / kE4M3Max;
  return s > 0.0f ? s : 1.0f;  // an all-zero row (or a NaN) quantises with scale 1
}

using Compute = OrtStatus* (*)(Kernel*, OrtKernelContext*);

// Kernel is one node's state: its op's compute function and attributes (and, for the linear ops
// on CUDA, its cuBLASLt handle behind mu: concurrent Runs share a node's kernel; the algorithms
// are chosen once per shape for the whole process, AlgoCache).
struct Kernel {
  Compute compute = nullptr;
  int64_t gelu = 0;        // QuantizeE4M3: 1 erf, 2 tanh GELU before quantising; Fp16Linear: tanh GELU epilogue
  int64_t fast_accum = 0;  // Fp8Linear (CUDA): cuBLASLt's FP8 fast accumulation
  float epsilon = 1e-5f;   // SkipLayerNormE4M3: LayerNorm's epsilon
  int64_t num_heads = 0;   // RaggedAttention: heads (required)
  float scale = 0.0f;      // RaggedAttention: softmax scale (0: 1/sqrt(head size))
#ifndef SEQEMBED_OPS_CPU_ONLY
  std::mutex mu;
  cublasLtHandle_t lt = nullptr;
  bool cc_ok = false;
  ~Kernel() {
    if (lt) cublasLtDestroy(lt);
  }
#endif
};

// QuantArgs are QuantizeE4M3's checked inputs and allocated outputs.
struct QuantArgs {
  Tensor x;
  uint8_t* q = nullptr;
  float* scale = nullptr;
  int64_t rows = 0, k = 0;
};

// QuantOutputs allocates outputs 0 (codes, uint8 of x's dims) and 1 (scales, float32 of x's dims
// without the last) of a quantising op.
OrtStatus* QuantOutputs(OrtKernelContext* ctx, const std::vector<int64_t>& dims, uint8_t** q, float** scale) {
  OrtValue* out = nullptr;
  SE_RETURN_IF(g_api->KernelContext_GetOutput(ctx, 0, dims.data(), dims.size(), &out));
  SE_RETURN_IF(g_api->GetTensorMutableData(out, reinterpret_cast<void**>(q)));
  std::vector<int64_t> sdims(dims.begin(), dims.end() - 1);
  SE_RETURN_IF(g_api->KernelContext_GetOutput(ctx, 1, sdims.data(), sdims.size(), &out));
  return g_api->GetTensorMutableData(out, reinterpret_cast<void**>(scale));
}

OrtStatus* GatherQuant(const Kernel* k, OrtKernelContext* ctx, ONNXTensorElementDataType want, QuantArgs* a) {
  SE_RETURN_IF(GetInput(ctx, 0, &a->x));
  if (a->x.type != want) return Fail("QuantizeE4M3: x has the wrong float type for this op");
  if (a->x.dims.empty() || a->x.dims.back() <= 0) return Fail("QuantizeE4M3: x must be [..., K] with K > 0");
  if (k->gelu < 0 || k->gelu > 2) return Fail("QuantizeE4M3: attribute gelu must be 0 (none), 1 (erf) or 2 (tanh)");
  a->k = a->x.dims.back();
  a->rows = static_cast<int64_t>(a->x.count) / a->k;
  return QuantOutputs(ctx, a->x.dims, &a->q, &a->scale);
}

OrtStatus* QuantizeCPU(Kernel* k, OrtKernelContext* ctx) {
  QuantArgs a;
  SE_RETURN_IF(GatherQuant(k, ctx, ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT, &a));
  const float* x = static_cast<const float*>(a.x.data);
  std::vector<float> v(static_cast<size_t>(a.k));
  for (int64_t r = 0; r < a.rows; r++) {
    float amax = 0.0f;
    for (int64_t j = 0; j < a.k; j++) {
      const float xv = x[r * a.k + j];
      v[j] = k->gelu == 1 ? GeluErf(xv) : (k->gelu == 2 ? GeluTanh(xv) : xv);
      amax = std::fmax(amax, std::fabs(v[j]));
    }
    const float s = RowScale(amax), inv = 1.0f / s;
    a.scale[r] = s;
    for (int64_t j = 0; j < a.k; j++) a.q[r * a.k + j] = FloatToE4M3(v[j] * inv);
  }
  return nullptr;
}

// LinearArgs are Fp8Linear's checked inputs and allocated output.
struct LinearArgs {
  Tensor q, scale, w, wscale, bias;
  void* y = nullptr;
  int64_t rows = 0, k = 0, n = 0;
};

OrtStatus* GatherLinear(OrtKernelContext* ctx, ONNXTensorElementDataType want, LinearArgs* a) {
  SE_RETURN_IF(GetInput(ctx, 0, &a->q));
  SE_RETURN_IF(GetInput(ctx, 1, &a->scale));
  SE_RETURN_IF(GetInput(ctx, 2, &a->w));
  SE_RETURN_IF(GetInput(ctx, 3, &a->wscale));
  SE_RETURN_IF(GetInput(ctx, 4, &a->bias, true));
  const auto u8 = ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT8, f32 = ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT;
  if (a->q.type != u8 || a->w.type != u8) return Fail("Fp8Linear: q and w must be uint8 (E4M3 bit patterns)");
  if (a->scale.type != f32 || a->wscale.type != f32) return Fail("Fp8Linear: scale and w_scale must be float32");
  if (a->q.dims.empty() || a->w.dims.size() != 2) return Fail("Fp8Linear: q must be [..., K] and w [N, K]");
  a->k = a->q.dims.back();
  a->n = a->w.dims[0];
  if (a->k <= 0 || a->n <= 0 || a->w.dims[1] != a->k)
    return Fail("Fp8Linear: w is [" + std::to_string(a->w.dims[0]) + ", " + std::to_string(a->w.dims[1]) +
                "], want [N, K] with K = q's last dimension " + std::to_string(a->k));
  a->rows = static_cast<int64_t>(a->q.count) / a->k;
  if (static_cast<int64_t>(a->scale.count) != a->rows) return Fail("Fp8Linear: scale must hold one value per row of q");
  if (static_cast<int64_t>(a->wscale.count) != a->n) return Fail("Fp8Linear: w_scale must hold N values");
  if (a->bias.data && (a->bias.type != want || static_cast<int64_t>(a->bias.count) != a->n))
    return Fail("Fp8Linear: bias must hold N values of the output's float type");
  std::vector<int64_t> dims = a->q.dims;
  dims.back() = a->n;
  OrtValue* out = nullptr;
  SE_RETURN_IF(g_api->KernelContext_GetOutput(ctx, 0, dims.data(), dims.size(), &out));
  return g_api->GetTensorMutableData(out, &a->y);
}

OrtStatus* LinearCPU(Kernel*, OrtKernelContext* ctx) {
  LinearArgs a;
  SE_RETURN_IF(GatherLinear(ctx, ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT, &a));
  float lut[256];
  for (int c = 0; c < 256; c++) lut[c] = E4M3ToFloat(static_cast<uint8_t>(c));
  const uint8_t* q = static_cast<const uint8_t*>(a.q.data);
  const uint8_t* w = static_cast<const uint8_t*>(a.w.data);
  const float* xs = static_cast<const float*>(a.scale.data);
  const float* ws = static_cast<const float*>(a.wscale.data);
  const float* b = static_cast<const float*>(a.bias.data);
  float* y = static_cast<float*>(a.y);
  for (int64_t r = 0; r < a.rows; r++) {
    for (int64_t n = 0; n < a.n; n++) {
      float acc = 0.0f;
      for (int64_t j = 0; j < a.k; j++) acc += lut[q[r * a.k + j]] * lut[w[n * a.k + j]];
      y[r * a.n + n] = xs[r] * ws[n] * acc + (b ? b[n] : 0.0f);
    }
  }
  return nullptr;
}

// SkipLnArgs are SkipLayerNormE4M3's checked inputs and allocated outputs.
struct SkipLnArgs {
  Tensor x, skip, gamma, beta, bias;
  uint8_t* q = nullptr;
  float* scale = nullptr;
  void* sum = nullptr;
  int64_t rows = 0, d = 0;
};

OrtStatus* GatherSkipLn(OrtKernelContext* ctx, ONNXTensorElementDataType want, SkipLnArgs* a) {
  SE_RETURN_IF(GetInput(ctx, 0, &a->x));
  SE_RETURN_IF(GetInput(ctx, 1, &a->skip));
  SE_RETURN_IF(GetInput(ctx, 2, &a->gamma));
  SE_RETURN_IF(GetInput(ctx, 3, &a->beta));
  SE_RETURN_IF(GetInput(ctx, 4, &a->bias, true));
  for (const Tensor* t : {&a->x, &a->skip, &a->gamma, &a->beta, &a->bias})
    if (t->data && t->type != want)
      return Fail("SkipLayerNormE4M3: x, skip, gamma, beta and bias must all have the op's float type");
  if (a->x.dims.empty() || a->x.dims.back() <= 0) return Fail("SkipLayerNormE4M3: x must be [..., D] with D > 0");
  if (a->skip.dims != a->x.dims) return Fail("SkipLayerNormE4M3: skip must have x's shape");
  a->d = a->x.dims.back();
  for (const Tensor* t : {&a->gamma, &a->beta, &a->bias})
    if (t->data && static_cast<int64_t>(t->count) != a->d)
      return Fail("SkipLayerNormE4M3: gamma, beta and bias must hold D = " + std::to_string(a->d) + " values");
  a->rows = static_cast<int64_t>(a->x.count) / a->d;
  SE_RETURN_IF(QuantOutputs(ctx, a->x.dims, &a->q, &a->scale));
  OrtValue* out = nullptr;
  SE_RETURN_IF(g_api->KernelContext_GetOutput(ctx, 2, a->x.dims.data(), a->x.dims.size(), &out));
  return g_api->GetTensorMutableData(out, &a->sum);
}

OrtStatus* SkipLnQuantCPU(Kernel* k, OrtKernelContext* ctx) {
  SkipLnArgs a;
  SE_RETURN_IF(GatherSkipLn(ctx, ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT, &a));
  const float *x = static_cast<const float*>(a.x.data), *skip = static_cast<const float*>(a.skip.data);
  const float *g = static_cast<const float*>(a.gamma.data), *b = static_cast<const float*>(a.beta.data);
  const float* bias = static_cast<const float*>(a.bias.data);
  float* sum = static_cast<float*>(a.sum);
  std::vector<float> v(static_cast<size_t>(a.d));
  for (int64_t r = 0; r < a.rows; r++) {
    float total = 0.0f;
    for (int64_t j = 0; j < a.d; j++) {
      v[j] = x[r * a.d + j] + skip[r * a.d + j] + (bias ? bias[j] : 0.0f);
      sum[r * a.d + j] = v[j];
      total += v[j];
    }
    const float mean = total / static_cast<float>(a.d);
    float sq = 0.0f;
    for (int64_t j = 0; j < a.d; j++) sq += (v[j] - mean) * (v[j] - mean);
    const float rstd = 1.0f / std::sqrt(sq / static_cast<float>(a.d) + k->epsilon);
    float amax = 0.0f;
    for (int64_t j = 0; j < a.d; j++) {
      v[j] = (v[j] - mean) * rstd * g[j] + b[j];
      amax = std::fmax(amax, std::fabs(v[j]));
    }
    const float s = RowScale(amax), inv = 1.0f / s;
    a.scale[r] = s;
    for (int64_t j = 0; j < a.d; j++) a.q[r * a.d + j] = FloatToE4M3(v[j] * inv);
  }
  return nullptr;
}

// DenseArgs are Fp16Linear's checked inputs and allocated output.
struct DenseArgs {
  Tensor x, w, bias, residual;
  void* y = nullptr;
  int64_t rows = 0, k = 0, n = 0;
};

OrtStatus* GatherDense(const Kernel* k, OrtKernelContext* ctx, ONNXTensorElementDataType want, DenseArgs* a) {
  SE_RETURN_IF(GetInput(ctx, 0, &a->x));
  SE_RETURN_IF(GetInput(ctx, 1, &a->w));
  SE_RETURN_IF(GetInput(ctx, 2, &a->bias, true));
  SE_RETURN_IF(GetInput(ctx, 3, &a->residual, true));
  if (k->gelu && a->residual.data) return Fail("Fp16Linear: a residual input with gelu is not supported");
  if (a->x.type != want || a->w.type != want || (a->bias.data && a->bias.type != want) ||
      (a->residual.data && a->residual.type != want))
    return Fail("Fp16Linear: x, w, bias and residual must all have the op's float type");
  if (a->x.dims.empty() || a->w.dims.size() != 2) return Fail("Fp16Linear: x must be [..., K] and w [N, K]");
  a->k = a->x.dims.back();
  a->n = a->w.dims[0];
  if (a->k <= 0 || a->n <= 0 || a->w.dims[1] != a->k)
    return Fail("Fp16Linear: w is [" + std::to_string(a->w.dims[0]) + ", " + std::to_string(a->w.dims[1]) +
                "], want [N, K] with K = x's last dimension " + std::to_string(a->k));
  if (a->bias.data && static_cast<int64_t>(a->bias.count) != a->n) return Fail("Fp16Linear: bias must hold N values");
  a->rows = static_cast<int64_t>(a->x.count) / a->k;
  std::vector<int64_t> dims = a->x.dims;
  dims.back() = a->n;
  if (a->residual.data && a->residual.dims != dims)
    return Fail("Fp16Linear: residual must have y's shape (x's with the last dimension N = " + std::to_string(a->n) +
                ")");
  OrtValue* out = nullptr;
  SE_RETURN_IF(g_api->KernelContext_GetOutput(ctx, 0, dims.data(), dims.size(), &out));
  return g_api->GetTensorMutableData(out, &a->y);
}

OrtStatus* DenseCPU(Kernel* k, OrtKernelContext* ctx) {
  DenseArgs a;
  SE_RETURN_IF(GatherDense(k, ctx, ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT, &a));
  const float* x = static_cast<const float*>(a.x.data);
  const float* res = static_cast<const float*>(a.residual.data);
  const float* w = static_cast<const float*>(a.w.data);
  const float* b = static_cast<const float*>(a.bias.data);
  float* y = static_cast<float*>(a.y);
  for (int64_t r = 0; r < a.rows; r++) {
    for (int64_t n = 0; n < a.n; n++) {
      float acc = 0.0f;
      for (int64_t j = 0; j < a.k; j++) acc += x[r * a.k + j] * w[n * a.k + j];
      const float v = acc + (b ? b[n] : 0.0f) + (res ? res[r * a.n + n] : 0.0f);
      y[r * a.n + n] = k->gelu ? GeluTanh(v) : v;
    }
  }
  return nullptr;
}

#ifndef SEQEMBED_OPS_CPU_ONLY
OrtStatus* CudaFail(const char* what, cudaError_t err) {
  return g_api->CreateStatus(ORT_RUNTIME_EXCEPTION, (std::string(what) + ": " + cudaGetErrorString(err)).c_str());
}

OrtStatus* LtFail(const char* op, const char* what, cublasStatus_t st) {
  return g_api->CreateStatus(
      ORT_RUNTIME_EXCEPTION,
      (std::string(op) + ": " + what + ": cuBLASLt status " + std::to_string(static_cast<int>(st))).c_str());
}

// Load8 / Store8 move 8 float16 values (16 bytes) between a vector and floats.
__device__ inline void Load8(const uint4& u, float* f) {
  const __half2* h = reinterpret_cast<const __half2*>(&u);
#pragma unroll
  for (int j = 0; j < 4; j++) {
    const float2 t = __half22float2(h[j]);
    f[2 * j] = t.x;
    f[2 * j + 1] = t.y;
  }
}
__device__ inline uint4 Store8(const float* f) {
  uint4 u;
  __half2* h = reinterpret_cast<__half2*>(&u);
#pragma unroll
  for (int j = 0; j < 4; j++) h[j] = __floats2half2_rn(f[2 * j], f[2 * j + 1]);
  return u;
}

// StoreE4M3 is 8 values times inv as E4M3 codes (round to nearest even, saturated).
__device__ inline uint2 StoreE4M3(const float* f, float inv) {
  uint2 out;
  uint8_t* ob = reinterpret_cast<uint8_t*>(&out);
#pragma unroll
  for (int j = 0; j < 8; j++) ob[j] = __nv_cvt_float_to_fp8(f[j] * inv, __NV_SATFINITE, __NV_E4M3);
  return out;
}

// BlockReduce is v summed (kMax: the maximum) across the block, for every thread; red is 33 floats
// of shared memory, free again when it returns. blockDim.x is a whole number of warps.
template <bool kMax>
__device__ float BlockReduce(float v, float* red) {
  for (int off = 16; off; off >>= 1) {
    const float o = __shfl_xor_sync(0xffffffffu, v, off);
    v = kMax ? fmaxf(v, o) : v + o;
  }
  if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = v;
  __syncthreads();
  if (threadIdx.x == 0) {
    float t = red[0];
    for (unsigned w = 1; w < blockDim.x / 32; w++) t = kMax ? fmaxf(t, red[w]) : t + red[w];
    red[32] = t;
  }
  __syncthreads();
  const float r = red[32];
  __syncthreads();
  return r;
}

// RowThreads is the block size for a row kernel that holds a row of per_row vectors in registers:
// *vec (1, 2, 4 or 8: the caller dispatches on it to kVec) is the fewest vectors a thread that
// keeps the block at 256 threads or fewer (up to 2,048 vectors; above, 8 a thread and up to 512
// threads: rows up to 32,768 values), and the block is the vectors / *vec rounded up to whole
// warps. At ESM-2's widths that is 160 threads: small blocks holding several vectors a thread keep
// more rows, and more loads, in flight on an SM than one vector a thread in blocks of 512 (the
// 5,120-wide GELU quantisation measured 3x slower than its bytes need that way, docs/perf.md).
int64_t RowThreads(int64_t per_row, int64_t* vec) {
  *vec = 1;
  while (*vec < 8 && per_row > 256 * *vec) *vec *= 2;
  const int64_t per_thread = (per_row + *vec - 1) / *vec;
  return std::min<int64_t>(512, (per_thread + 31) / 32 * 32);
}

// GeluTanhFast is GeluTanh as x * sigmoid(2u) (the same function: 0.5 (1 + tanh u) = sigmoid(2u))
// with the hardware exp and a fast divide: no cancellation for large negative x, a relative error
// of a few float32 ulps against GeluTanh.
__device__ inline float GeluTanhFast(float x) { return __fdividef(x, 1.0f + __expf(-2.0f * GeluTanhArg(x))); }

// One block per row, each thread holding kVec vectors of 8 values (16 bytes of float16 in) in
// registers: the row is read once, GELU (kGelu 1 erf, 2 tanh) computed once, the row's |max|
// reduced across the block, then the scaled E4M3 bytes written (8 a store).
template <int kGelu, int kVec>
__global__ void QuantizeRowsKernel(const uint4* __restrict__ x, uint2* __restrict__ q, float* __restrict__ scale,
                                   int64_t vectors_per_row) {
  const int64_t r = blockIdx.x;
  const uint4* xr = x + r * vectors_per_row;
  float v[kVec][8];
  float amax = 0.0f;
#pragma unroll
  for (int i = 0; i < kVec; i++) {
    const int64_t idx = threadIdx.x + static_cast<int64_t>(i) * blockDim.x;
    if (idx < vectors_per_row) {
      Load8(xr[idx], v[i]);
#pragma unroll
      for (int j = 0; j < 8; j++) {
        if (kGelu == 1) v[i][j] = GeluErf(v[i][j]);
        if (kGelu == 2) v[i][j] = GeluTanhFast(v[i][j]);
        amax = fmaxf(amax, fabsf(v[i][j]));
      }
    }
  }
  __shared__ float red[33];
  const float row_scale = RowScale(BlockReduce<true>(amax, red));
  if (threadIdx.x == 0) scale[r] = row_scale;
  const float inv = 1.0f / row_scale;
  uint2* qr = q + r * vectors_per_row;
#pragma unroll
  for (int i = 0; i < kVec; i++) {
    const int64_t idx = threadIdx.x + static_cast<int64_t>(i) * blockDim.x;
    if (idx < vectors_per_row) qr[idx] = StoreE4M3(v[i], inv);
  }
}

template <int kGelu>
void LaunchQuantize(const uint4* x, uint2* q, float* scale, int64_t rows, int64_t per_row, cudaStream_t st) {
  int64_t vec = 0;
  const int64_t threads = RowThreads(per_row, &vec);
  const dim3 grid(static_cast<unsigned>(rows)), block(static_cast<unsigned>(threads));
  if (vec <= 1)
    QuantizeRowsKernel<kGelu, 1><<<grid, block, 0, st>>>(x, q, scale, per_row);
  else if (vec <= 2)
    QuantizeRowsKernel<kGelu, 2><<<grid, block, 0, st>>>(x, q, scale, per_row);
  else if (vec <= 4)
    QuantizeRowsKernel<kGelu, 4><<<grid, block, 0, st>>>(x, q, scale, per_row);
  else
    QuantizeRowsKernel<kGelu, 8><<<grid, block, 0, st>>>(x, q, scale, per_row);
}

// SkipLnQuantKernel is SkipLayerNormE4M3: one block per row, the row held in registers as in
// QuantizeRowsKernel (kVec vectors of 8 a thread); the sum written as float16, then mean, variance
// and |max| of the normalised row reduced across the block, then the E4M3 codes written.
template <int kVec>
__global__ void SkipLnQuantKernel(const uint4* __restrict__ x, const uint4* __restrict__ skip,
                                  const uint4* __restrict__ gamma, const uint4* __restrict__ beta,
                                  const uint4* __restrict__ bias, uint2* __restrict__ q, float* __restrict__ scale,
                                  uint4* __restrict__ sum, int64_t per_row, float eps) {
  __shared__ float red[33];
  const int64_t base = static_cast<int64_t>(blockIdx.x) * per_row;
  float v[kVec][8];
  float total = 0.0f;
#pragma unroll
  for (int i = 0; i < kVec; i++) {
    const int64_t idx = threadIdx.x + static_cast<int64_t>(i) * blockDim.x;
    if (idx < per_row) {
      float s[8], b[8];
      Load8(x[base + idx], v[i]);
      Load8(skip[base + idx], s);
      if (bias) Load8(bias[idx], b);
#pragma unroll
      for (int j = 0; j < 8; j++) {
        v[i][j] = v[i][j] + s[j] + (bias ? b[j] : 0.0f);  // the CPU op's order: (x + skip) + bias
        total += v[i][j];
      }
      sum[base + idx] = Store8(v[i]);
    }
  }
  const float n = static_cast<float>(per_row * 8);
  const float mean = BlockReduce<false>(total, red) / n;
  float sq = 0.0f;
#pragma unroll
  for (int i = 0; i < kVec; i++) {
    const int64_t idx = threadIdx.x + static_cast<int64_t>(i) * blockDim.x;
    if (idx < per_row) {
#pragma unroll
      for (int j = 0; j < 8; j++) sq += (v[i][j] - mean) * (v[i][j] - mean);
    }
  }
  const float rstd = rsqrtf(BlockReduce<false>(sq, red) / n + eps);
  float amax = 0.0f;
#pragma unroll
  for (int i = 0; i < kVec; i++) {
    const int64_t idx = threadIdx.x + static_cast<int64_t>(i) * blockDim.x;
    if (idx < per_row) {
      float g[8], b[8];
      Load8(gamma[idx], g);
      Load8(beta[idx], b);
#pragma unroll
      for (int j = 0; j < 8; j++) {
        v[i][j] = (v[i][j] - mean) * rstd * g[j] + b[j];
        amax = fmaxf(amax, fabsf(v[i][j]));
      }
    }
  }
  const float row_scale = RowScale(BlockReduce<true>(amax, red));
  if (threadIdx.x == 0) scale[blockIdx.x] = row_scale;
  const float inv = 1.0f / row_scale;
#pragma unroll
  for (int i = 0; i < kVec; i++) {
    const int64_t idx = threadIdx.x + static_cast<int64_t>(i) * blockDim.x;
    if (idx < per_row) q[base + idx] = StoreE4M3(v[i], inv);
  }
}

// CheckFP8 fails on a GPU without FP8 tensor cores (compute capability below 8.9); once per kernel.
OrtStatus* CheckFP8(Kernel* k) {
  if (k->cc_ok) return nullptr;
  int dev = 0, major = 0, minor = 0;
  cudaError_t err = cudaGetDevice(&dev);
  if (err == cudaSuccess) err = cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev);
  if (err == cudaSuccess) err = cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, dev);
  if (err != cudaSuccess) return CudaFail("Fp8Linear: compute capability", err);
  if (major * 10 + minor < 89)
    return g_api->CreateStatus(ORT_NOT_IMPLEMENTED,
                               ("Fp8Linear: this model's FP8 GEMMs need FP8 tensor cores (compute capability 8.9 or "
                                "newer: Ada, Hopper, Blackwell); GPU " +
                                std::to_string(dev) + " is " + std::to_string(major) + "." + std::to_string(minor) +
                                ": use the float16 export")
                                   .c_str());
  k->cc_ok = true;
  return nullptr;
}

OrtStatus* QuantizeCUDA(Kernel* k, OrtKernelContext* ctx) {
  QuantArgs a;
  SE_RETURN_IF(GatherQuant(k, ctx, ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16, &a));
  if (a.k % 8) return Fail("QuantizeE4M3 (CUDA): K must be a multiple of 8");
  if (a.rows == 0) return nullptr;
  void* stream = nullptr;
  SE_RETURN_IF(g_api->KernelContext_GetGPUComputeStream(ctx, &stream));
  const int64_t per_row = a.k / 8;
  if (per_row > 512 * 8) return Fail("QuantizeE4M3 (CUDA): K above 32768 is not supported");
  auto* xs = static_cast<const uint4*>(a.x.data);
  auto* qs = reinterpret_cast<uint2*>(a.q);
  auto st = static_cast<cudaStream_t>(stream);
  if (k->gelu == 1)
    LaunchQuantize<1>(xs, qs, a.scale, a.rows, per_row, st);
  else if (k->gelu == 2)
    LaunchQuantize<2>(xs, qs, a.scale, a.rows, per_row, st);
  else
    LaunchQuantize<0>(xs, qs, a.scale, a.rows, per_row, st);
  const cudaError_t err = cudaGetLastError();
  return err == cudaSuccess ? nullptr : CudaFail("QuantizeE4M3", err);
}

OrtStatus* SkipLnQuantCUDA(Kernel* k, OrtKernelContext* ctx) {
  SkipLnArgs a;
  SE_RETURN_IF(GatherSkipLn(ctx, ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16, &a));
  if (a.d % 8) return Fail("SkipLayerNormE4M3 (CUDA): D must be a multiple of 8");
  const int64_t per_row = a.d / 8;
  if (per_row > 512 * 8) return Fail("SkipLayerNormE4M3 (CUDA): D above 32768 is not supported");
  if (a.rows == 0) return nullptr;
  void* stream = nullptr;
  SE_RETURN_IF(g_api->KernelContext_GetGPUComputeStream(ctx, &stream));
  int64_t vec = 0;
  const int64_t threads = RowThreads(per_row, &vec);
  const dim3 grid(static_cast<unsigned>(a.rows)), block(static_cast<unsigned>(threads));
  auto st = static_cast<cudaStream_t>(stream);
  auto in = [](const Tensor& t) { return static_cast<const uint4*>(t.data); };
  auto launch = [&](auto kernel) {
    kernel<<<grid, block, 0, st>>>(in(a.x), in(a.skip), in(a.gamma), in(a.beta), in(a.bias),
                                   reinterpret_cast<uint2*>(a.q), a.scale, static_cast<uint4*>(a.sum), per_row,
                                   k->epsilon);
  };
  if (vec <= 1)
    launch(SkipLnQuantKernel<1>);
  else if (vec <= 2)
    launch(SkipLnQuantKernel<2>);
  else if (vec <= 4)
    launch(SkipLnQuantKernel<4>);
  else
    launch(SkipLnQuantKernel<8>);
  const cudaError_t err = cudaGetLastError();
  return err == cudaSuccess ? nullptr : CudaFail("SkipLayerNormE4M3", err);
}

// Workspace is cuBLASLt's scratch memory, one buffer per CUDA stream for the process's life: the
// work on one stream is ordered, so every Fp8Linear node of every session can share it.
constexpr size_t kWorkspaceBytes = 32u << 20;

OrtStatus* Workspace(cudaStream_t stream, void** out) {
  static std::mutex mu;
  static std::unordered_map<cudaStream_t, void*> buffers;
  std::lock_guard<std::mutex> lock(mu);
  auto it = buffers.find(stream);
  if (it != buffers.end()) {
    *out = it->second;
    return nullptr;
  }
  void* p = nullptr;
  const cudaError_t err = cudaMalloc(&p, kWorkspaceBytes);
  if (err != cudaSuccess) {
    cudaGetLastError();
    return CudaFail("Fp8Linear: cuBLASLt workspace", err);
  }
  buffers[stream] = p;
  *out = p;
  return nullptr;
}

// AlgoClass groups row counts that share one cuBLASLt algorithm: choosing one costs far more than
// the GEMM's launch, and packed batches have a different token count each time. Up to 256 rows a
// class is one M; above, half an octave (M in (2^(c/2-1/2), 2^(c/2)]). An algorithm chosen for one M
// of a class is used for the others (cuBLASLt's tiles do not depend on M); a GEMM that refuses it
// is planned again for its exact M.
int64_t AlgoClass(int64_t m) {
  if (m <= 256) return m;
  return 1000 + static_cast<int64_t>(std::ceil(2.0 * std::log2(static_cast<double>(m)) - 1e-9));
}

// AlgoKey is what an algorithm is chosen for: device, input type, N, K, epilogue, FP8 fast
// accumulation, whether C is added (beta 1) and AlgoClass(M). Every node of every session with that
// GEMM shares the choice.
using AlgoKey = std::tuple<int, int, int64_t, int64_t, int, int, int, int64_t>;

// AlgoCache holds the chosen algorithms for the process's life (behind its mutex).
struct AlgoCache {
  std::mutex mu;
  std::map<AlgoKey, cublasLtMatmulAlgo_t> algos;
};
AlgoCache& Algos() {
  static AlgoCache* c = new AlgoCache;  // never destroyed: ORT may run kernels during exit
  return *c;
}

// TuneCount is how many of cuBLASLt's heuristic candidates a new GEMM shape times before choosing:
// 1 by default (the heuristic's first, no timing); SEQEMBED_LT_TUNE=N times N. Off by default
// because it measured slower: at 650M the timed choice (fastest alone, bench/gpu.sh mode gemm) was
// 7 % slower end to end than the heuristic's with four batches in flight (docs/perf.md, 2026-12-02
// sixth session). The timing runs once per AlgoKey, on the op's stream, a few GEMMs a candidate.
int TuneCount() {
  static const int n = [] {
    const char* env = std::getenv("SEQEMBED_LT_TUNE");
    if (!env || !*env) return 1;
    const int v = std::atoi(env);
    return v < 1 ? 1 : (v > 32 ? 32 : v);
  }();
  return n;
}

// LtPlan holds one call's cuBLASLt descriptors (created per call: concurrent Runs share a kernel).
struct LtPlan {
  cublasLtMatmulDesc_t op = nullptr;
  cublasLtMatrixLayout_t a = nullptr, b = nullptr, d = nullptr;
  cublasLtMatmulPreference_t pref = nullptr;
  ~LtPlan() {
    if (pref) cublasLtMatmulPreferenceDestroy(pref);
    if (d) cublasLtMatrixLayoutDestroy(d);
    if (b) cublasLtMatrixLayoutDestroy(b);
    if (a) cublasLtMatrixLayoutDestroy(a);
    if (op) cublasLtMatmulDescDestroy(op);
  }
};

#define SE_LT(op, expr, what)                                             \
  do {                                                                     \
    cublasStatus_t se_st_ = (expr);                                        \
    if (se_st_ != CUBLAS_STATUS_SUCCESS) return LtFail(op, what, se_st_); \
  } while (0)

// BiasActKernel is the epilogue as a pass of its own, for a shape cuBLASLt has no epilogue kernel
// for: y += bias (when given), then GELU (tanh, as cuBLASLt's) when kGelu.
template <bool kGelu>
__global__ void BiasActKernel(__half* y, const __half* __restrict__ bias, int64_t n, int64_t total) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= total) return;
  float v = __half2float(y[i]) + (bias ? __half2float(bias[i % n]) : 0.0f);
  if (kGelu) v = GeluTanh(v);
  y[i] = __float2half(v);
}

// LtGemm is one linear layer's GEMM for RunLt: y [rows, n] (float16) = x [rows, k] · w [n, k]^T
// (+ c [rows, n] when given, + bias [n], then tanh GELU when gelu: never with c), float32
// accumulation. For FP8 (in_type E4M3) x and w are codes and w_scale [n] / x_scale [rows] their
// outer-vector scales.
struct LtGemm {
  const char* op = "";  // the op's name, for errors
  cudaDataType_t in_type = CUDA_R_16F;
  const void *w = nullptr, *x = nullptr, *bias = nullptr;
  const void* c = nullptr;  // float16 [rows, n], added with beta = 1 (never y itself)
  void* y = nullptr;
  int64_t rows = 0, k = 0, n = 0;
  const void *w_scale = nullptr, *x_scale = nullptr;
  bool gelu = false, fast_accum = false;
};

// TimeAlgos picks the fastest of found heuristic candidates res for one GEMM (matmul runs it with
// a given algorithm on stream): each candidate runs once, then kReps times between two events, in
// two interleaved rounds (the minimum counts); a candidate cuBLASLt refuses is skipped. It waits
// for the stream, so it runs once per AlgoKey; while the stream is being captured into a CUDA graph
// it cannot wait and keeps the heuristic's first (best = 0). The GEMM's output is rewritten by
// every run with the same values (beta is 0, or C is another buffer), so nothing else sees it.
template <typename Matmul>
OrtStatus* TimeAlgos(const char* op, cudaStream_t stream, const cublasLtMatmulHeuristicResult_t* res, int found,
                     Matmul&& matmul, int* best) {
  *best = 0;
  cudaStreamCaptureStatus cap = cudaStreamCaptureStatusNone;
  if (cudaStreamIsCapturing(stream, &cap) != cudaSuccess) {
    cudaGetLastError();
    return nullptr;
  }
  if (cap != cudaStreamCaptureStatusNone) return nullptr;
  constexpr int kReps = 3;
  cudaEvent_t e0 = nullptr, e1 = nullptr;
  cudaError_t err = cudaEventCreate(&e0);
  if (err == cudaSuccess) err = cudaEventCreate(&e1);
  std::vector<float> ms(static_cast<size_t>(found), -1.0f);
  for (int round = 0; round < 2 && err == cudaSuccess; round++) {
    for (int i = 0; i < found && err == cudaSuccess; i++) {
      if (round > 0 && ms[i] < 0) continue;  // refused in round 0
      bool ok = matmul(res[i].algo) == CUBLAS_STATUS_SUCCESS;
      if (!ok) continue;
      err = cudaEventRecord(e0, stream);
      for (int r = 0; r < kReps && err == cudaSuccess && ok; r++) ok = matmul(res[i].algo) == CUBLAS_STATUS_SUCCESS;
      if (err == cudaSuccess) err = cudaEventRecord(e1, stream);
      if (err == cudaSuccess) err = cudaEventSynchronize(e1);
      float t = 0.0f;
      if (err == cudaSuccess) err = cudaEventElapsedTime(&t, e0, e1);
      if (err == cudaSuccess && ok && (ms[i] < 0 || t < ms[i])) ms[i] = t;
    }
  }
  if (e0) cudaEventDestroy(e0);
  if (e1) cudaEventDestroy(e1);
  if (err != cudaSuccess) return CudaFail((std::string(op) + ": timing cuBLASLt's algorithms").c_str(), err);
  for (int i = 0; i < found; i++)
    if (ms[i] >= 0 && (ms[*best] < 0 || ms[i] < ms[*best])) *best = i;
  return nullptr;
}

// RunLt is the one path to cuBLASLt: D (column-major N x M, i.e. y row-major [M, N]) = op(A) B
// with A = w stored column-major K x N (transposed: the "TN" form FP8 needs), B = x column-major
// K x M, C (when given) the same layout as D with beta = 1; bias and GELU in the epilogue where
// cuBLASLt has a kernel with it for the shape, else a plain GEMM (+ C) and BiasActKernel. The
// algorithm is chosen once per AlgoKey (TimeAlgos) and cached.
OrtStatus* RunLt(Kernel* k, cudaStream_t stream, const LtGemm& g) {
  if (g.c && (g.gelu || g.c == g.y)) return Fail(std::string(g.op) + ": C must be another buffer, and not with GELU");
  cublasLtHandle_t lt;
  {
    std::lock_guard<std::mutex> lock(k->mu);
    if (!k->lt) SE_LT(g.op, cublasLtCreate(&k->lt), "create handle");
    lt = k->lt;
  }
  void* ws = nullptr;
  SE_RETURN_IF(Workspace(stream, &ws));

  LtPlan p;
  SE_LT(g.op, cublasLtMatmulDescCreate(&p.op, CUBLAS_COMPUTE_32F, CUDA_R_32F), "matmul descriptor");
  const cublasOperation_t opT = CUBLAS_OP_T, opN = CUBLAS_OP_N;
  SE_LT(g.op, cublasLtMatmulDescSetAttribute(p.op, CUBLASLT_MATMUL_DESC_TRANSA, &opT, sizeof(opT)), "transa");
  SE_LT(g.op, cublasLtMatmulDescSetAttribute(p.op, CUBLASLT_MATMUL_DESC_TRANSB, &opN, sizeof(opN)), "transb");
  if (g.in_type == CUDA_R_8F_E4M3) {
    const cublasLtMatmulMatrixScale_t vec = CUBLASLT_MATMUL_MATRIX_SCALE_OUTER_VEC_32F;
    SE_LT(g.op, cublasLtMatmulDescSetAttribute(p.op, CUBLASLT_MATMUL_DESC_A_SCALE_MODE, &vec, sizeof(vec)),
          "A scale mode");
    SE_LT(g.op, cublasLtMatmulDescSetAttribute(p.op, CUBLASLT_MATMUL_DESC_B_SCALE_MODE, &vec, sizeof(vec)),
          "B scale mode");
    SE_LT(g.op,
          cublasLtMatmulDescSetAttribute(p.op, CUBLASLT_MATMUL_DESC_A_SCALE_POINTER, &g.w_scale, sizeof(g.w_scale)),
          "A scale");
    SE_LT(g.op,
          cublasLtMatmulDescSetAttribute(p.op, CUBLASLT_MATMUL_DESC_B_SCALE_POINTER, &g.x_scale, sizeof(g.x_scale)),
          "B scale");
    const int8_t fast = g.fast_accum ? 1 : 0;
    SE_LT(g.op, cublasLtMatmulDescSetAttribute(p.op, CUBLASLT_MATMUL_DESC_FAST_ACCUM, &fast, sizeof(fast)),
          "fast accumulation");
  }
  const cublasLtEpilogue_t want = g.bias ? (g.gelu ? CUBLASLT_EPILOGUE_GELU_BIAS : CUBLASLT_EPILOGUE_BIAS)
                                         : (g.gelu ? CUBLASLT_EPILOGUE_GELU : CUBLASLT_EPILOGUE_DEFAULT);
  bool fused = true;  // the epilogue is in the GEMM (false: BiasActKernel after it)
  SE_LT(g.op, cublasLtMatmulDescSetAttribute(p.op, CUBLASLT_MATMUL_DESC_EPILOGUE, &want, sizeof(want)), "epilogue");
  if (g.bias) {
    const cudaDataType_t bias_type = CUDA_R_16F;
    SE_LT(g.op, cublasLtMatmulDescSetAttribute(p.op, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &g.bias, sizeof(g.bias)),
          "bias");
    SE_LT(g.op,
          cublasLtMatmulDescSetAttribute(p.op, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, &bias_type, sizeof(bias_type)),
          "bias type");
  }
  SE_LT(g.op, cublasLtMatrixLayoutCreate(&p.a, g.in_type, g.k, g.n, g.k), "A layout");
  SE_LT(g.op, cublasLtMatrixLayoutCreate(&p.b, g.in_type, g.k, g.rows, g.k), "B layout");
  SE_LT(g.op, cublasLtMatrixLayoutCreate(&p.d, CUDA_R_16F, g.n, g.rows, g.n), "D layout");

  int dev = 0;
  if (const cudaError_t err = cudaGetDevice(&dev); err != cudaSuccess) return CudaFail(g.op, err);
  const AlgoKey key{dev, static_cast<int>(g.in_type), g.n, g.k, static_cast<int>(want), g.fast_accum ? 1 : 0,
                    g.c ? 1 : 0, AlgoClass(g.rows)};
  cublasLtMatmulAlgo_t algo;
  bool have = false;
  {
    AlgoCache& c = Algos();
    std::lock_guard<std::mutex> lock(c.mu);
    auto it = c.algos.find(key);
    if (it != c.algos.end()) {
      algo = it->second;
      have = true;
    }
  }
  const float alpha = 1.0f, beta = g.c ? 1.0f : 0.0f;
  const void* cmat = g.c ? g.c : g.y;
  auto matmul = [&](const cublasLtMatmulAlgo_t& a) {
    return cublasLtMatmul(lt, p.op, &alpha, g.w, p.a, g.x, p.b, &beta, cmat, p.d, g.y, p.d, &a, ws, kWorkspaceBytes,
                          stream);
  };
  if (have) {
    const cublasStatus_t st = matmul(algo);
    if (st == CUBLAS_STATUS_SUCCESS) return nullptr;  // the epilogue was fused (only such plans are kept)
    if (st != CUBLAS_STATUS_NOT_SUPPORTED && st != CUBLAS_STATUS_INVALID_VALUE) return LtFail(g.op, "matmul", st);
    // the class's algorithm does not fit this M: plan it exactly (below), without caching
  }
  {
    SE_LT(g.op, cublasLtMatmulPreferenceCreate(&p.pref), "preference");
    const uint64_t wsb = kWorkspaceBytes;
    SE_LT(g.op,
          cublasLtMatmulPreferenceSetAttribute(p.pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &wsb, sizeof(wsb)),
          "workspace preference");
    int found = 0;
    std::vector<cublasLtMatmulHeuristicResult_t> res(have ? 1 : TuneCount());
    cublasStatus_t st = cublasLtMatmulAlgoGetHeuristic(lt, p.op, p.a, p.b, p.d, p.d, p.pref,
                                                       static_cast<int>(res.size()), res.data(), &found);
    if ((st != CUBLAS_STATUS_SUCCESS || found == 0) && want != CUBLASLT_EPILOGUE_DEFAULT) {
      // No kernel with this epilogue for the shape: plain GEMM, then the epilogue as a pass.
      const cublasLtEpilogue_t none = CUBLASLT_EPILOGUE_DEFAULT;
      SE_LT(g.op, cublasLtMatmulDescSetAttribute(p.op, CUBLASLT_MATMUL_DESC_EPILOGUE, &none, sizeof(none)), "epilogue");
      fused = false;
      st = cublasLtMatmulAlgoGetHeuristic(lt, p.op, p.a, p.b, p.d, p.d, p.pref, static_cast<int>(res.size()),
                                          res.data(), &found);
    }
    if (st != CUBLAS_STATUS_SUCCESS) return LtFail(g.op, "algorithm heuristic", st);
    if (found == 0)
      return Fail(std::string(g.op) + ": cuBLASLt has no GEMM for M=" + std::to_string(g.rows) +
                  " N=" + std::to_string(g.n) + " K=" + std::to_string(g.k) + " on this GPU");
    int best = 0;
    if (found > 1) SE_RETURN_IF(TimeAlgos(g.op, stream, res.data(), found, matmul, &best));
    algo = res[best].algo;
    if (fused && !have) {  // cache only plans that keep the epilogue as asked
      AlgoCache& c = Algos();
      std::lock_guard<std::mutex> lock(c.mu);
      c.algos.emplace(key, algo);
    }
  }
  SE_LT(g.op, matmul(algo), "matmul");
  if (!fused) {
    const int64_t total = g.rows * g.n;
    const unsigned blocks = static_cast<unsigned>((total + 255) / 256);
    auto* y = static_cast<__half*>(g.y);
    auto* b = static_cast<const __half*>(g.bias);
    if (g.gelu)
      BiasActKernel<true><<<blocks, 256, 0, stream>>>(y, b, g.n, total);
    else
      BiasActKernel<false><<<blocks, 256, 0, stream>>>(y, b, g.n, total);
    const cudaError_t err = cudaGetLastError();
    if (err != cudaSuccess) return CudaFail((std::string(g.op) + " epilogue").c_str(), err);
  }
  return nullptr;
}

OrtStatus* LinearCUDA(Kernel* k, OrtKernelContext* ctx) {
  LinearArgs a;
  SE_RETURN_IF(GatherLinear(ctx, ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16, &a));
  if (a.k % 16 || a.n % 16) return Fail("Fp8Linear (CUDA): K and N must be multiples of 16");
  {
    std::lock_guard<std::mutex> lock(k->mu);
    SE_RETURN_IF(CheckFP8(k));
  }
  if (a.rows == 0) return nullptr;
  void* stream = nullptr;
  SE_RETURN_IF(g_api->KernelContext_GetGPUComputeStream(ctx, &stream));
  LtGemm g;
  g.op = "Fp8Linear";
  g.in_type = CUDA_R_8F_E4M3;
  g.w = a.w.data, g.x = a.q.data, g.bias = a.bias.data, g.y = a.y;
  g.rows = a.rows, g.k = a.k, g.n = a.n;
  g.w_scale = a.wscale.data, g.x_scale = a.scale.data;
  g.fast_accum = k->fast_accum != 0;
  return RunLt(k, static_cast<cudaStream_t>(stream), g);
}

OrtStatus* DenseCUDA(Kernel* k, OrtKernelContext* ctx) {
  DenseArgs a;
  SE_RETURN_IF(GatherDense(k, ctx, ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16, &a));
  if (a.k % 8 || a.n % 8) return Fail("Fp16Linear (CUDA): K and N must be multiples of 8");
  if (a.rows == 0) return nullptr;
  void* stream = nullptr;
  SE_RETURN_IF(g_api->KernelContext_GetGPUComputeStream(ctx, &stream));
  LtGemm g;
  g.op = "Fp16Linear";
  g.w = a.w.data, g.x = a.x.data, g.bias = a.bias.data, g.c = a.residual.data, g.y = a.y;
  g.rows = a.rows, g.k = a.k, g.n = a.n;
  g.gelu = k->gelu != 0;
  return RunLt(k, static_cast<cudaStream_t>(stream), g);
}
#endif

// ---- RaggedAttention ----------------------------------------------------------------------------

// AttnArgs are RaggedAttention's checked inputs (shapes only: the CUDA op does not read cu_seqlens on
// the host) and allocated output.
struct AttnArgs {
  Tensor q, k, v, offs, cu;
  void* o = nullptr;
  int64_t rows = 0, dim = 0, heads = 0, head = 0, batch = 0, seq = 0;
  float scale = 0.0f;
};

OrtStatus* GatherAttn(Kernel* k, OrtKernelContext* ctx, ONNXTensorElementDataType want, AttnArgs* a) {
  SE_RETURN_IF(GetInput(ctx, 0, &a->q));
  SE_RETURN_IF(GetInput(ctx, 1, &a->k));
  SE_RETURN_IF(GetInput(ctx, 2, &a->v));
  SE_RETURN_IF(GetInput(ctx, 3, &a->offs));
  SE_RETURN_IF(GetInput(ctx, 4, &a->cu));
  if (a->q.dims.empty() || a->q.dims != a->k.dims || a->q.dims != a->v.dims)
    return Fail("RaggedAttention: q, k and v must have one shape [..., D]");
  if (a->q.type != want || a->k.type != want || a->v.type != want)
    return Fail("RaggedAttention: q, k and v must have the op's float type");
  if (a->offs.type != ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32 || a->cu.type != ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32)
    return Fail("RaggedAttention: token_offset and cu_seqlens must be int32");
  if (a->offs.dims.size() != 2 || a->cu.dims.size() != 1 || a->cu.dims[0] != a->offs.dims[0] + 1)
    return Fail("RaggedAttention: token_offset must be [B, S] and cu_seqlens [B + 1]");
  a->heads = k->num_heads;
  a->dim = a->q.dims.back();
  if (a->heads <= 0 || a->dim <= 0 || a->dim % a->heads)
    return Fail("RaggedAttention: num_heads must be > 0 and divide the last dimension of q");
  a->head = a->dim / a->heads;
  a->rows = static_cast<int64_t>(a->q.count) / a->dim;
  a->batch = a->offs.dims[0];
  a->seq = a->offs.dims[1];
  a->scale = k->scale > 0 ? k->scale : 1.0f / std::sqrt(static_cast<float>(a->head));
  OrtValue* out = nullptr;
  SE_RETURN_IF(g_api->KernelContext_GetOutput(ctx, 0, a->q.dims.data(), a->q.dims.size(), &out));
  return g_api->GetTensorMutableData(out, &a->o);
}

OrtStatus* RaggedAttentionCPU(Kernel* k, OrtKernelContext* ctx) {
  AttnArgs a;
  SE_RETURN_IF(GatherAttn(k, ctx, ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT, &a));
  const int32_t* cu = static_cast<const int32_t*>(a.cu.data);
  if (cu[0] != 0 || cu[a.batch] != a.rows)
    return Fail("RaggedAttention: cu_seqlens must start at 0 and end at the number of rows of q");
  const float* q = static_cast<const float*>(a.q.data);
  const float* kk = static_cast<const float*>(a.k.data);
  const float* v = static_cast<const float*>(a.v.data);
  float* o = static_cast<float*>(a.o);
  std::vector<float> s;
  for (int64_t b = 0; b < a.batch; b++) {
    const int64_t lo = cu[b], n = static_cast<int64_t>(cu[b + 1]) - cu[b];
    if (n < 0 || n > a.seq)
      return Fail("RaggedAttention: sequence " + std::to_string(b) + " has " + std::to_string(n) +
                  " rows; cu_seqlens must not decrease and no sequence may exceed token_offset's S");
    s.resize(static_cast<size_t>(n));
    for (int64_t h = 0; h < a.heads; h++) {
      for (int64_t t = lo; t < lo + n; t++) {
        const float* qt = q + t * a.dim + h * a.head;
        float mx = -INFINITY, sum = 0.0f;
        for (int64_t j = 0; j < n; j++) {
          const float* kj = kk + (lo + j) * a.dim + h * a.head;
          float dot = 0.0f;
          for (int64_t d = 0; d < a.head; d++) dot += qt[d] * kj[d];
          s[j] = dot * a.scale;
          mx = std::max(mx, s[j]);
        }
        for (int64_t j = 0; j < n; j++) sum += (s[j] = std::exp(s[j] - mx));
        float* ot = o + t * a.dim + h * a.head;
        for (int64_t d = 0; d < a.head; d++) ot[d] = 0.0f;
        for (int64_t j = 0; j < n; j++) {
          const float w = s[j] / sum;
          const float* vj = v + (lo + j) * a.dim + h * a.head;
          for (int64_t d = 0; d < a.head; d++) ot[d] += w * vj[d];
        }
      }
    }
  }
  return nullptr;
}

#if !defined(SEQEMBED_OPS_CPU_ONLY) && !defined(SEQEMBED_OPS_CUDNN)
// Built without cuDNN, the CUDA op is registered all the same so that a model exported with
// --cudnn-attention fails its first run (gpurun's warm-up, before the worker takes records) with a
// sentence saying what to rebuild, not with ONNX Runtime's "could not find an implementation".
OrtStatus* RaggedAttentionCUDA(Kernel*, OrtKernelContext*) {
  return Fail(
      "RaggedAttention (CUDA): this libseqembed_ops.so was built without cuDNN; rebuild it with "
      "SEQEMBED_OPS_CUDNN=<cuDNN 9 dir with include/ and lib/> SEQEMBED_CUDNN_FRONTEND=<cudnn-frontend include/> "
      "scripts/build-ops.sh, or export the model without --cudnn-attention");
}
#endif

#if !defined(SEQEMBED_OPS_CPU_ONLY) && defined(SEQEMBED_OPS_CUDNN)
// The CUDA op runs cuDNN's SDPA forward on the packed tokens as a ragged (THD) batch: the graph of
// ragged_attn_graph.h (bench/cudnn_attn_probe.cpp times the same one, docs/perf.md). Building a
// graph costs ~100 ms, so there is one per (device, S, heads, head size, scale) — S is the batcher's
// bucket width — built for the most rows seen at that S (rounded up to 8): a batch with fewer rows
// reuses it, its rows past B given length 0 and offset T. gpurun's warm-up runs every bucket at its
// full row count, so the graphs are built there, not in real batches. One cuDNN handle per device;
// setting its stream, launching the lengths kernel and enqueueing the graph run under one mutex.

__global__ void RaggedMetaKernel(const int32_t* __restrict__ cu, int batch, int padded, int64_t row_elems,
                                 int32_t* __restrict__ seq, int32_t* __restrict__ offs) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i > padded) return;
  const int32_t end = cu[batch];
  const int32_t c = i <= batch ? cu[i] : end;
  offs[i] = static_cast<int32_t>(c * row_elems);
  if (i < padded) seq[i] = i < batch ? cu[i + 1] - cu[i] : 0;
}

using AttnPlan = seqembed::ragged_sdpa::Graph;  // rows: the graph's B (>= the batch's)

struct CudnnAttn {
  std::mutex mu;
  std::unordered_map<int, cudnnHandle_t> handles;
  std::map<std::tuple<int, int64_t, int64_t, int64_t, float>, AttnPlan> plans;  // device, S, heads, hd, scale
};

CudnnAttn& Attn() {
  static CudnnAttn* a = new CudnnAttn();  // process life: handles outlive every session
  return *a;
}

OrtStatus* RaggedAttentionCUDA(Kernel* k, OrtKernelContext* ctx) {
  AttnArgs a;
  SE_RETURN_IF(GatherAttn(k, ctx, ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16, &a));
  if (a.rows == 0 || a.batch == 0) return nullptr;
  if (a.rows * a.dim > 0x7fffffff) return Fail("RaggedAttention (CUDA): q has more than 2^31 - 1 elements");
  void* stream_v = nullptr;
  SE_RETURN_IF(g_api->KernelContext_GetGPUComputeStream(ctx, &stream_v));
  auto stream = static_cast<cudaStream_t>(stream_v);
  int dev = 0;
  if (cudaError_t err = cudaGetDevice(&dev); err != cudaSuccess) return CudaFail("RaggedAttention: device", err);
  // The stream's workspace (Workspace, shared with the GEMMs: the stream orders them) holds the
  // lengths and offsets first, then cuDNN's scratch.
  void* ws = nullptr;
  SE_RETURN_IF(Workspace(stream, &ws));
  auto& st = Attn();
  std::lock_guard<std::mutex> lock(st.mu);
  cudnnHandle_t& h = st.handles[dev];
  if (!h && cudnnCreate(&h) != CUDNN_STATUS_SUCCESS) {
    h = nullptr;
    return Fail("RaggedAttention (CUDA): cudnnCreate failed (is cuDNN 9 on the library path?)");
  }
  AttnPlan& plan = st.plans[std::make_tuple(dev, a.seq, a.heads, a.head, a.scale)];
  if (plan.rows < a.batch) {
    AttnPlan built;
    if (std::string err = seqembed::ragged_sdpa::Build(h, (a.batch + 7) / 8 * 8, a.seq, a.heads, a.head, a.scale, &built);
        !err.empty())
      return Fail("RaggedAttention (CUDA): cuDNN: " + err);
    plan = std::move(built);
  }
  const size_t meta = static_cast<size_t>(2 * plan.rows + 1) * sizeof(int32_t);
  const size_t meta_bytes = (meta + 255) / 256 * 256;
  if (static_cast<size_t>(plan.workspace) + meta_bytes > kWorkspaceBytes)
    return Fail("RaggedAttention (CUDA): cuDNN wants more workspace than the stream's " +
                std::to_string(kWorkspaceBytes) + " bytes");
  auto* seq = static_cast<int32_t*>(ws);
  int32_t* offs = seq + plan.rows;
  RaggedMetaKernel<<<static_cast<unsigned>((plan.rows + 256) / 256), 256, 0, stream>>>(
      static_cast<const int32_t*>(a.cu.data), static_cast<int>(a.batch), static_cast<int>(plan.rows), a.dim, seq, offs);
  if (cudaError_t err = cudaGetLastError(); err != cudaSuccess) return CudaFail("RaggedAttention: lengths", err);
  if (cudnnSetStream(h, stream) != CUDNN_STATUS_SUCCESS) return Fail("RaggedAttention (CUDA): cudnnSetStream failed");
  namespace rs = seqembed::ragged_sdpa;
  std::unordered_map<int64_t, void*> pack{{rs::kQ, a.q.data}, {rs::kK, a.k.data}, {rs::kV, a.v.data}, {rs::kO, a.o},
                                          {rs::kSeqQ, seq},   {rs::kSeqKV, seq},  {rs::kOffQ, offs}, {rs::kOffK, offs},
                                          {rs::kOffV, offs},  {rs::kOffO, offs}};
  auto run = plan.graph->execute(h, pack, static_cast<char*>(ws) + meta_bytes);
  if (!run.is_good()) return Fail("RaggedAttention (CUDA): cuDNN execute: " + run.get_message());
  return nullptr;
}
#endif

// Op is one registered operator: name, execution provider, input and output element types (the
// inputs from optional_from on are optional) and its compute function.
struct Op : OrtCustomOp {
  const char* name;
  const char* provider;
  std::vector<ONNXTensorElementDataType> ins, outs;
  size_t optional_from;
  Compute compute;

  Op(const char* n, const char* ep, std::vector<ONNXTensorElementDataType> in,
     std::vector<ONNXTensorElementDataType> out, Compute fn, size_t opt_from = SIZE_MAX)
      : name(n), provider(ep), ins(std::move(in)), outs(std::move(out)), optional_from(opt_from), compute(fn) {
    std::memset(static_cast<OrtCustomOp*>(this), 0, sizeof(OrtCustomOp));
    version = ORT_API_VERSION;
    GetName = [](const OrtCustomOp* op) { return static_cast<const Op*>(op)->name; };
    GetExecutionProviderType = [](const OrtCustomOp* op) { return static_cast<const Op*>(op)->provider; };
    GetInputTypeCount = [](const OrtCustomOp* op) { return static_cast<const Op*>(op)->ins.size(); };
    GetInputType = [](const OrtCustomOp* op, size_t i) { return static_cast<const Op*>(op)->ins[i]; };
    GetOutputTypeCount = [](const OrtCustomOp* op) { return static_cast<const Op*>(op)->outs.size(); };
    GetOutputType = [](const OrtCustomOp* op, size_t i) { return static_cast<const Op*>(op)->outs[i]; };
    GetInputCharacteristic = [](const OrtCustomOp* op, size_t i) {
      return i >= static_cast<const Op*>(op)->optional_from ? INPUT_OUTPUT_OPTIONAL : INPUT_OUTPUT_REQUIRED;
    };
    GetOutputCharacteristic = [](const OrtCustomOp*, size_t) { return INPUT_OUTPUT_REQUIRED; };
    GetInputMemoryType = [](const OrtCustomOp*, size_t) { return OrtMemTypeDefault; };
    GetVariadicInputMinArity = [](const OrtCustomOp*) { return 1; };
    GetVariadicInputHomogeneity = [](const OrtCustomOp*) { return 1; };
    GetVariadicOutputMinArity = [](const OrtCustomOp*) { return 1; };
    GetVariadicOutputHomogeneity = [](const OrtCustomOp*) { return 1; };
    CreateKernelV2 = [](const OrtCustomOp* op, const OrtApi* api, const OrtKernelInfo* info,
                        void** kernel) -> OrtStatusPtr {
      auto* k = new Kernel();
      k->compute = static_cast<const Op*>(op)->compute;
      for (auto [attr, dst] : std::initializer_list<std::pair<const char*, int64_t*>>{
               {"gelu", &k->gelu}, {"fast_accum", &k->fast_accum}, {"num_heads", &k->num_heads}}) {
        int64_t v = 0;
        if (OrtStatus* s = api->KernelInfoGetAttribute_int64(info, attr, &v)) {
          api->ReleaseStatus(s);  // absent: the default
        } else {
          *dst = v;
        }
      }
      for (auto [attr, dst] :
           std::initializer_list<std::pair<const char*, float*>>{{"epsilon", &k->epsilon}, {"scale", &k->scale}}) {
        float v = 0.0f;
        if (OrtStatus* s = api->KernelInfoGetAttribute_float(info, attr, &v)) {
          api->ReleaseStatus(s);  // absent: the default
        } else {
          *dst = v;
        }
      }
      // SEQEMBED_FP8_FAST_ACCUM=0|1 overrides fast_accum (for measuring its speed and accuracy).
      if (const char* env = std::getenv("SEQEMBED_FP8_FAST_ACCUM"); env && (env[0] == '0' || env[0] == '1'))
        k->fast_accum = env[0] - '0';
      *kernel = k;
      return nullptr;
    };
    KernelComputeV2 = [](void* kernel, OrtKernelContext* ctx) -> OrtStatusPtr {
      auto* k = static_cast<Kernel*>(kernel);
      return k->compute(k, ctx);
    };
    KernelDestroy = [](void* kernel) { delete static_cast<Kernel*>(kernel); };
    GetStartVersion = [](const OrtCustomOp*) { return 1; };
    GetEndVersion = [](const OrtCustomOp*) { return 1; };
  }
};

constexpr auto kF32 = ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT, kF16 = ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16,
               kI64 = ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64, kI32 = ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32,
               kU8 = ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT8;
constexpr const char* kCPU = "CPUExecutionProvider";

// AllOps are the library's operators (static: ORT needs them for the process's life).
const std::vector<Op*>& AllOps() {
  static Op bias_cpu("BiasRotaryF32", kCPU, {kF32, kF32, kI64, kF32, kF32}, {kF32}, BiasRotaryCPU);
  static Op quant_cpu("QuantizeE4M3F32", kCPU, {kF32}, {kU8, kF32}, QuantizeCPU);
  static Op linear_cpu("Fp8LinearF32", kCPU, {kU8, kF32, kU8, kF32, kF32}, {kF32}, LinearCPU, 4);
  static Op dense_cpu("Fp16LinearF32", kCPU, {kF32, kF32, kF32, kF32}, {kF32}, DenseCPU, 2);
  static Op skipln_cpu("SkipLayerNormE4M3F32", kCPU, {kF32, kF32, kF32, kF32, kF32}, {kU8, kF32, kF32}, SkipLnQuantCPU,
                       4);
  static Op attn_cpu("RaggedAttentionF32", kCPU, {kF32, kF32, kF32, kI32, kI32}, {kF32}, RaggedAttentionCPU);
#ifndef SEQEMBED_OPS_CPU_ONLY
  constexpr const char* kCUDA = "CUDAExecutionProvider";
  static Op bias_cuda("BiasRotary", kCUDA, {kF16, kF16, kI64, kF16, kF16}, {kF16}, BiasRotaryCUDA);
  static Op quant_cuda("QuantizeE4M3", kCUDA, {kF16}, {kU8, kF32}, QuantizeCUDA);
  static Op linear_cuda("Fp8Linear", kCUDA, {kU8, kF32, kU8, kF32, kF16}, {kF16}, LinearCUDA, 4);
  static Op dense_cuda("Fp16Linear", kCUDA, {kF16, kF16, kF16, kF16}, {kF16}, DenseCUDA, 2);
  static Op skipln_cuda("SkipLayerNormE4M3", kCUDA, {kF16, kF16, kF16, kF16, kF16}, {kU8, kF32, kF16}, SkipLnQuantCUDA,
                        4);
  static Op attn_cuda("RaggedAttention", kCUDA, {kF16, kF16, kF16, kI32, kI32}, {kF16}, RaggedAttentionCUDA);
  static const std::vector<Op*> all{&bias_cpu,  &quant_cpu,  &linear_cpu,  &dense_cpu,  &skipln_cpu, &attn_cpu,
                                    &bias_cuda, &quant_cuda, &linear_cuda, &dense_cuda, &skipln_cuda, &attn_cuda};
#else
  static const std::vector<Op*> all{&bias_cpu, &quant_cpu, &linear_cpu, &dense_cpu, &skipln_cpu, &attn_cpu};
#endif
  return all;
}

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
  for (Op* op : AllOps()) SE_RETURN_IF(api->CustomOpDomain_Add(domain, op));
  return api->AddCustomOpDomain(options, domain);
}
