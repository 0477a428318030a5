// lt_probe.cu — bench/gpu.sh's `gemm` mode: how fast one ESM-2 block's projections run through
// cuBLASLt at a model's shapes, as the custom ops call it (gpurun/ortops/seqembed_ops.cu RunLt: the
// "TN" form, float32 accumulation, fp16 out) and as ORT's MatMul does (cublasGemmEx, "NN" with the
// weight [K, N] row-major). For each GEMM it times the heuristic's first algorithm (what RunLt
// uses) and the best of the first --algos the heuristic returns (what a per-shape autotune could
// reach), fp16 and FP8 (E4M3, outer-vector scales, fast accumulation), and q/k/v as three N=D
// GEMMs against one N=3D GEMM. Built on the GPU machine by gpu.sh:
//   nvcc -O2 -std=c++17 -arch=sm_90 bench/lt_probe.cu -o lt_probe -lcublasLt -lcublas
//   lt_probe --m 16384 --d 1280 --f 5120 [--algos 16] [--reps 20]
// One line per GEMM ("gemm key=value ..."), then "layer ..." lines summing a block's six
// projections, which gpu.sh records.
#include <cublasLt.h>
#include <cublas_v2.h>
#include <cuda_fp16.h>
#include <cuda_fp8.h>
#include <cuda_runtime.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#define CK(x)                                                                        \
  do {                                                                               \
    cudaError_t e_ = (x);                                                            \
    if (e_ != cudaSuccess) {                                                         \
      fprintf(stderr, "lt_probe: %s: %s (line %d)\n", #x, cudaGetErrorString(e_), __LINE__); \
      exit(1);                                                                       \
    }                                                                                \
  } while (0)
#define CB(x)                                                                  \
  do {                                                                         \
    cublasStatus_t s_ = (x);                                                   \
    if (s_ != CUBLAS_STATUS_SUCCESS) {                                         \
      fprintf(stderr, "lt_probe: %s: status %d (line %d)\n", #x, (int)s_, __LINE__); \
      exit(1);                                                                 \
    }                                                                          \
  } while (0)

__device__ float hash01(uint64_t i) {  // deterministic uniform [-1, 1)
  i ^= i >> 33;
  i *= 0xff51afd7ed558ccdULL;
  i ^= i >> 33;
  i *= 0xc4ceb9fe1a85ec53ULL;
  i ^= i >> 33;
  return (float)(i & 0xffffff) / 8388608.0f - 1.0f;
}
__global__ void fill_half(__half* p, size_t n, uint64_t seed, float s) {
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
    p[i] = __float2half(hash01(i + seed) * s);
}
__global__ void fill_fp8(__nv_fp8_e4m3* p, size_t n, uint64_t seed) {
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
    p[i] = __nv_fp8_e4m3(hash01(i + seed) * 400.0f);
}
__global__ void fill_float(float* p, size_t n, float v) {
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) p[i] = v;
}

struct Bufs {
  __half *xh, *wh, *bias, *y;
  __nv_fp8_e4m3 *xq, *wq;
  float *xs, *ws;
  void* work;
};
constexpr size_t kWork = 32u << 20;
int reps = 20, max_algos = 16;
cudaStream_t stream;
cudaEvent_t ev0, ev1;

template <typename F>
float time_us(F f) {
  for (int i = 0; i < 3; i++) f();
  CK(cudaEventRecord(ev0, stream));
  for (int i = 0; i < reps; i++) f();
  CK(cudaEventRecord(ev1, stream));
  CK(cudaEventSynchronize(ev1));
  float ms = 0;
  CK(cudaEventElapsedTime(&ms, ev0, ev1));
  return ms * 1000.0f / reps;
}

struct Result {
  float top1 = -1, best = -1;
  int best_idx = -1, found = 0;
};

// lt times y[m, n] = x[m, k] · w[n, k]^T the way RunLt does it.
Result lt(cublasLtHandle_t h, const Bufs& b, bool fp8, int64_t m, int64_t n, int64_t k, bool bias, bool gelu) {
  cublasLtMatmulDesc_t op;
  CB(cublasLtMatmulDescCreate(&op, CUBLAS_COMPUTE_32F, CUDA_R_32F));
  const cublasOperation_t T = CUBLAS_OP_T, N = CUBLAS_OP_N;
  CB(cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_TRANSA, &T, sizeof(T)));
  CB(cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_TRANSB, &N, sizeof(N)));
  const void *A = b.wh, *B = b.xh;
  if (fp8) {
    const cublasLtMatmulMatrixScale_t vec = CUBLASLT_MATMUL_MATRIX_SCALE_OUTER_VEC_32F;
    CB(cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_A_SCALE_MODE, &vec, sizeof(vec)));
    CB(cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_B_SCALE_MODE, &vec, sizeof(vec)));
    CB(cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_A_SCALE_POINTER, &b.ws, sizeof(b.ws)));
    CB(cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_B_SCALE_POINTER, &b.xs, sizeof(b.xs)));
    const int8_t fast = 1;
    CB(cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_FAST_ACCUM, &fast, sizeof(fast)));
    A = b.wq, B = b.xq;
  }
  const cublasLtEpilogue_t epi = bias ? (gelu ? CUBLASLT_EPILOGUE_GELU_BIAS : CUBLASLT_EPILOGUE_BIAS)
                                      : (gelu ? CUBLASLT_EPILOGUE_GELU : CUBLASLT_EPILOGUE_DEFAULT);
  CB(cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_EPILOGUE, &epi, sizeof(epi)));
  if (bias) {
    const cudaDataType_t bt = CUDA_R_16F;
    CB(cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &b.bias, sizeof(b.bias)));
    CB(cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, &bt, sizeof(bt)));
  }
  const cudaDataType_t in = fp8 ? CUDA_R_8F_E4M3 : CUDA_R_16F;
  cublasLtMatrixLayout_t la, lb, ld;
  CB(cublasLtMatrixLayoutCreate(&la, in, k, n, k));
  CB(cublasLtMatrixLayoutCreate(&lb, in, k, m, k));
  CB(cublasLtMatrixLayoutCreate(&ld, CUDA_R_16F, n, m, n));
  cublasLtMatmulPreference_t pref;
  CB(cublasLtMatmulPreferenceCreate(&pref));
  const uint64_t wsb = kWork;
  CB(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &wsb, sizeof(wsb)));
  std::vector<cublasLtMatmulHeuristicResult_t> res(max_algos);
  Result r;
  cublasStatus_t st = cublasLtMatmulAlgoGetHeuristic(h, op, la, lb, ld, ld, pref, max_algos, res.data(), &r.found);
  if (st != CUBLAS_STATUS_SUCCESS) r.found = 0;
  const float alpha = 1, beta = 0;
  for (int i = 0; i < r.found; i++) {
    bool ok = true;
    float us = time_us([&] {
      if (cublasLtMatmul(h, op, &alpha, A, la, B, lb, &beta, b.y, ld, b.y, ld, &res[i].algo, b.work, kWork, stream) !=
          CUBLAS_STATUS_SUCCESS)
        ok = false;
    });
    if (!ok) continue;
    if (i == 0) r.top1 = us;
    if (r.best < 0 || us < r.best) r.best = us, r.best_idx = i;
  }
  cublasLtMatmulPreferenceDestroy(pref);
  cublasLtMatrixLayoutDestroy(la);
  cublasLtMatrixLayoutDestroy(lb);
  cublasLtMatrixLayoutDestroy(ld);
  cublasLtMatmulDescDestroy(op);
  return r;
}

// gemmex times ORT's MatMul form: row-major y[m, n] = x[m, k] · W[k, n] as column-major
// y^T (n x m) = W^T (n x k, ld n) · x^T (k x m, ld k), no transposes.
float gemmex(cublasHandle_t h, const Bufs& b, int64_t m, int64_t n, int64_t k) {
  const float alpha = 1, beta = 0;
  return time_us([&] {
    CB(cublasGemmEx(h, CUBLAS_OP_N, CUBLAS_OP_N, (int)n, (int)m, (int)k, &alpha, b.wh, CUDA_R_16F, (int)n, b.xh,
                    CUDA_R_16F, (int)k, &beta, b.y, CUDA_R_16F, (int)n, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
  });
}

int main(int argc, char** argv) {
  int64_t m = 16384, d = 1280, f = 5120;
  for (int i = 1; i + 1 < argc; i += 2) {
    std::string a = argv[i];
    long v = atol(argv[i + 1]);
    if (a == "--m") m = v;
    else if (a == "--d") d = v;
    else if (a == "--f") f = v;
    else if (a == "--algos") max_algos = (int)v;
    else if (a == "--reps") reps = (int)v;
    else {
      fprintf(stderr, "lt_probe: unknown flag %s\n", a.c_str());
      return 2;
    }
  }
  CK(cudaStreamCreate(&stream));
  CK(cudaEventCreate(&ev0));
  CK(cudaEventCreate(&ev1));
  const int64_t kmax = f > 3 * d ? f : 3 * d, nmax = kmax;
  Bufs b{};
  CK(cudaMalloc(&b.xh, m * kmax * 2));
  CK(cudaMalloc(&b.wh, nmax * kmax * 2));
  CK(cudaMalloc(&b.bias, nmax * 2));
  CK(cudaMalloc(&b.y, m * nmax * 2));
  CK(cudaMalloc(&b.xq, m * kmax));
  CK(cudaMalloc(&b.wq, nmax * kmax));
  CK(cudaMalloc(&b.xs, m * 4));
  CK(cudaMalloc(&b.ws, nmax * 4));
  CK(cudaMalloc(&b.work, kWork));
  fill_half<<<1024, 256, 0, stream>>>(b.xh, m * kmax, 1, 1.0f);
  fill_half<<<1024, 256, 0, stream>>>(b.wh, nmax * kmax, 2, 0.03f);
  fill_half<<<1024, 256, 0, stream>>>(b.bias, nmax, 3, 0.1f);
  fill_fp8<<<1024, 256, 0, stream>>>(b.xq, m * kmax, 4);
  fill_fp8<<<1024, 256, 0, stream>>>(b.wq, nmax * kmax, 5);
  fill_float<<<64, 256, 0, stream>>>(b.xs, m, 1.0f / 448);
  fill_float<<<64, 256, 0, stream>>>(b.ws, nmax, 1.0f / 448 / 30);
  CK(cudaStreamSynchronize(stream));
  cublasLtHandle_t lth;
  CB(cublasLtCreate(&lth));
  cublasHandle_t bh;
  CB(cublasCreate(&bh));
  CB(cublasSetStream(bh, stream));
  CB(cublasSetWorkspace(bh, b.work, kWork));

  struct G {
    const char* name;
    int64_t n, k;
    bool bias, gelu;
  };
  const G gs[] = {{"q", d, d, false, false}, {"qkv", 3 * d, d, false, false}, {"fc1", f, d, true, true},
                  {"fc2", d, f, false, false}};
  for (int p = 0; p < 2; p++) {
    const bool fp8 = p == 1;
    float layer_top1 = 0, layer_best = 0, fused_top1 = 0, fused_best = 0, ex_layer = 0;
    for (const G& g : gs) {
      // fp8's fc1 has its bias in the epilogue and the GELU in the next quantisation (esm2_graph.py)
      const bool gelu = g.gelu && !fp8;
      Result r = lt(lth, b, fp8, m, g.n, g.k, g.bias, gelu);
      float ex = fp8 ? -1 : gemmex(bh, b, m, g.n, g.k);
      const double flop = 2.0 * m * g.n * g.k;
      printf("gemm dtype=%s name=%s m=%lld n=%lld k=%lld epilogue=%s algos=%d top1_us=%.1f best_us=%.1f best_idx=%d "
             "top1_tflops=%.0f best_tflops=%.0f gemmex_us=%.1f gemmex_tflops=%.0f\n",
             fp8 ? "fp8" : "fp16", g.name, (long long)m, (long long)g.n, (long long)g.k,
             g.bias ? (gelu ? "gelu_bias" : "bias") : "none", r.found, r.top1, r.best, r.best_idx,
             r.top1 > 0 ? flop / r.top1 / 1e6 : 0, r.best > 0 ? flop / r.best / 1e6 : 0, ex,
             ex > 0 ? flop / ex / 1e6 : 0);
      fflush(stdout);
      // a block: q, k, v, o (4 x "q") or qkv + o; fc1; fc2
      if (!strcmp(g.name, "q")) {
        layer_top1 += 4 * r.top1, layer_best += 4 * r.best, fused_top1 += r.top1, fused_best += r.best;
        ex_layer += 4 * ex;
      } else if (!strcmp(g.name, "qkv")) {
        fused_top1 += r.top1, fused_best += r.best;
      } else {
        layer_top1 += r.top1, layer_best += r.best, fused_top1 += r.top1, fused_best += r.best, ex_layer += ex;
      }
    }
    const double flop = 2.0 * m * (4.0 * d * d + 2.0 * d * f);
    printf("layer dtype=%s m=%lld d=%lld f=%lld separate_top1_us=%.1f separate_best_us=%.1f fused_qkv_top1_us=%.1f "
           "fused_qkv_best_us=%.1f gemmex_us=%.1f separate_top1_tflops=%.0f fused_qkv_best_tflops=%.0f\n",
           fp8 ? "fp8" : "fp16", (long long)m, (long long)d, (long long)f, layer_top1, layer_best, fused_top1,
           fused_best, fp8 ? -1.0f : ex_layer, flop / layer_top1 / 1e6, flop / fused_best / 1e6);
    fflush(stdout);
  }
  return 0;
}
