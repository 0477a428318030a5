// bench/cudnn_attn_probe.cpp — cuDNN's SDPA forward on our packed (ragged, THD) batches, before
// building an attention op on it (#15): the same length-sorted token-budget batches as
// bench/attn_probe.py, q/k/v/o as [tokens, heads, head_dim] float16 (what PackedMultiHeadAttention
// reads and writes in seqembed's packed graphs), one cuDNN graph per batch shape (rows, longest
// sequence) with ragged offsets and padding-mask sequence lengths. Prints, like attn_probe.py:
//   attn kernel=cudnn-ragged us_per_batch=U tflops=T build_ms_mean=B max_rel_err=E cudnn=V
// where E is the largest |out - ref| / max|ref| over sampled rows against a float64 CPU reference.
// Build (on the GPU machine; the frontend is header-only, cudnn.h from the cuDNN package):
//   nvcc -O2 -std=c++17 -arch=sm_90 -I FE/include -I CUDNN/include bench/cudnn_attn_probe.cpp \
//        -o cudnn_attn_probe -L CUDNN/lib -l:libcudnn.so.9
//   ./cudnn_attn_probe --fasta F --heads 20 --head-dim 64 --tokens 16384 [--batches 40] [--json-out J]
// (bench/gpu.sh mode attn builds and runs it beside bench/attn_probe.py where cuDNN and the
// frontend headers are found, as for attnop=cudnn.)
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "../gpurun/ortops/ragged_attn_graph.h"  // the graph RaggedAttention runs

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <random>
#include <string>
#include <unordered_map>
#include <vector>


#define CK(x)                                                                                 \
  do {                                                                                        \
    cudaError_t e_ = (x);                                                                     \
    if (e_ != cudaSuccess) {                                                                  \
      std::fprintf(stderr, "cudnn_attn_probe: %s: %s\n", #x, cudaGetErrorString(e_));       \
      std::exit(1);                                                                           \
    }                                                                                         \
  } while (0)

using namespace seqembed::ragged_sdpa;  // Build, Graph and the tensor uids kQ .. kOffO

static std::vector<int> Lengths(const std::string& path, int max_length) {
  std::ifstream in(path);
  if (!in) {
    std::fprintf(stderr, "cudnn_attn_probe: cannot read %s\n", path.c_str());
    std::exit(2);
  }
  std::vector<int> out;
  std::string line;
  int n = -1;
  while (std::getline(in, line)) {
    while (!line.empty() && (line.back() == '\r' || line.back() == ' ')) line.pop_back();
    if (!line.empty() && line[0] == '>') {
      if (n >= 0) out.push_back(std::min(n, max_length) + 2);
      n = 0;
    } else if (n >= 0) {
      n += static_cast<int>(line.size());
    }
  }
  if (n >= 0) out.push_back(std::min(n, max_length) + 2);
  return out;
}

static Graph BuildOrExit(cudnnHandle_t h, int64_t b, int64_t s, int64_t H, int64_t D, float scale) {
  Graph out;
  if (std::string err = seqembed::ragged_sdpa::Build(h, b, s, H, D, scale, &out); !err.empty()) {
    std::printf("attn kernel=cudnn-ragged error=%s\n", err.c_str());
    std::exit(1);
  }
  return out;
}

int main(int argc, char** argv) {
  std::string fasta, json_out;
  int H = 20, D = 64, tokens = 16384, nb = 40, max_length = 1022;
  for (int i = 1; i + 1 < argc; i += 2) {
    std::string a = argv[i];
    if (a == "--fasta") fasta = argv[i + 1];
    else if (a == "--heads") H = std::atoi(argv[i + 1]);
    else if (a == "--head-dim") D = std::atoi(argv[i + 1]);
    else if (a == "--tokens") tokens = std::atoi(argv[i + 1]);
    else if (a == "--batches") nb = std::atoi(argv[i + 1]);
    else if (a == "--json-out") json_out = argv[i + 1];
    else {
      std::fprintf(stderr, "cudnn_attn_probe: unknown flag %s\n", a.c_str());
      return 2;
    }
  }
  if (fasta.empty()) {
    std::fprintf(stderr, "usage: cudnn_attn_probe --fasta F [--heads H --head-dim D --tokens N --batches K]\n");
    return 2;
  }
  std::vector<int> lens = Lengths(fasta, max_length);
  std::sort(lens.rbegin(), lens.rend());
  std::vector<std::vector<int>> all, batches;
  std::vector<int> cur;
  int tok = 0;
  for (int n : lens) {
    if (!cur.empty() && tok + n > tokens) {
      all.push_back(cur);
      cur.clear();
      tok = 0;
    }
    cur.push_back(n);
    tok += n;
  }
  if (!cur.empty()) all.push_back(cur);
  const size_t step = std::max<size_t>(1, all.size() / nb);
  for (size_t i = 0; i < all.size() && batches.size() < static_cast<size_t>(nb); i += step) batches.push_back(all[i]);

  int64_t maxT = 0;
  double flops = 0;
  for (auto& b : batches) {
    int64_t t = 0;
    for (int n : b) {
      t += n;
      flops += 4.0 * n * n * H * D;
    }
    maxT = std::max(maxT, t);
  }
  const size_t elems = static_cast<size_t>(maxT) * H * D;
  std::vector<__half> hq(elems), hk(elems), hv(elems);
  std::mt19937 rng(1);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  for (size_t i = 0; i < elems; i++) {
    hq[i] = __float2half(nd(rng));
    hk[i] = __float2half(nd(rng));
    hv[i] = __float2half(nd(rng));
  }
  __half *q, *k, *v, *o;
  CK(cudaMalloc(&q, elems * 2));
  CK(cudaMalloc(&k, elems * 2));
  CK(cudaMalloc(&v, elems * 2));
  CK(cudaMalloc(&o, elems * 2));
  CK(cudaMemcpy(q, hq.data(), elems * 2, cudaMemcpyHostToDevice));
  CK(cudaMemcpy(k, hk.data(), elems * 2, cudaMemcpyHostToDevice));
  CK(cudaMemcpy(v, hv.data(), elems * 2, cudaMemcpyHostToDevice));
  int32_t *seqs, *offs;
  CK(cudaMalloc(&seqs, 4096 * 4));
  CK(cudaMalloc(&offs, 4097 * 4));
  cudnnHandle_t handle;
  if (cudnnCreate(&handle) != CUDNN_STATUS_SUCCESS) {
    std::printf("attn kernel=cudnn-ragged error=cudnnCreate\n");
    return 1;
  }
  std::printf("attn: %zu of %zu batches, heads %d, head_dim %d, cudnn %zu (headers %d)\n", batches.size(), all.size(), H,
              D, cudnnGetVersion(), CUDNN_VERSION);
  std::fflush(stdout);
  const float scale = 1.0f / std::sqrt(static_cast<float>(D));
  void* ws = nullptr;
  int64_t ws_size = 0;
  double total_us = 0, build_ms = 0, worst = 0;
  cudaEvent_t e0, e1;
  CK(cudaEventCreate(&e0));
  CK(cudaEventCreate(&e1));
  for (size_t bi = 0; bi < batches.size(); bi++) {
    const auto& b = batches[bi];
    const int64_t rows = static_cast<int64_t>(b.size()), smax = *std::max_element(b.begin(), b.end());
    std::vector<int32_t> hs(b.begin(), b.end()), ho(rows + 1, 0);
    for (int64_t i = 0; i < rows; i++) ho[i + 1] = ho[i] + b[i] * H * D;
    CK(cudaMemcpy(seqs, hs.data(), rows * 4, cudaMemcpyHostToDevice));
    CK(cudaMemcpy(offs, ho.data(), (rows + 1) * 4, cudaMemcpyHostToDevice));
    auto t0 = std::chrono::steady_clock::now();
    Graph g = BuildOrExit(handle, rows, smax, H, D, scale);
    build_ms += std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
    if (g.workspace > ws_size) {
      if (ws) CK(cudaFree(ws));
      CK(cudaMalloc(&ws, g.workspace));
      ws_size = g.workspace;
    }
    std::unordered_map<int64_t, void*> pack{{kQ, q},      {kK, k},       {kV, v},       {kO, o},      {kSeqQ, seqs},
                                            {kSeqKV, seqs}, {kOffQ, offs}, {kOffK, offs}, {kOffV, offs}, {kOffO, offs}};
    std::vector<float> times;
    for (int r = 0; r < 7; r++) {
      CK(cudaEventRecord(e0));
      auto st = g.graph->execute(handle, pack, ws);
      CK(cudaEventRecord(e1));
      CK(cudaEventSynchronize(e1));
      if (!st.is_good()) {
        std::printf("attn kernel=cudnn-ragged error=%s\n", st.get_message().c_str());
        return 1;
      }
      float ms = 0;
      CK(cudaEventElapsedTime(&ms, e0, e1));
      if (r >= 2) times.push_back(ms * 1000);
    }
    std::sort(times.begin(), times.end());
    total_us += times[times.size() / 2];
    if (bi == 0 || bi + 1 == batches.size()) {  // check sampled rows of the first and last batch
      std::vector<__half> ho16(static_cast<size_t>(ho[rows]));
      CK(cudaMemcpy(ho16.data(), o, ho16.size() * 2, cudaMemcpyDeviceToHost));
      for (int64_t i : {int64_t{0}, rows - 1}) {
        const int64_t base = ho[i] / (H * D), n = b[i];
        for (int hh : {0, H - 1}) {
          for (int64_t t : {int64_t{0}, n / 2, n - 1}) {
            std::vector<double> s(n), ref(D, 0.0);
            double mx = -1e300, sum = 0, refmax = 0, err = 0;
            for (int64_t j = 0; j < n; j++) {
              double dot = 0;
              for (int d = 0; d < D; d++)
                dot += double(__half2float(hq[((base + t) * H + hh) * D + d])) * __half2float(hk[((base + j) * H + hh) * D + d]);
              s[j] = dot * scale;
              mx = std::max(mx, s[j]);
            }
            for (int64_t j = 0; j < n; j++) sum += (s[j] = std::exp(s[j] - mx));
            for (int64_t j = 0; j < n; j++)
              for (int d = 0; d < D; d++) ref[d] += s[j] / sum * __half2float(hv[((base + j) * H + hh) * D + d]);
            for (int d = 0; d < D; d++) {
              refmax = std::max(refmax, std::fabs(ref[d]));
              err = std::max(err, std::fabs(ref[d] - __half2float(ho16[((base + t) * H + hh) * D + d])));
            }
            worst = std::max(worst, err / (refmax + 1e-30));
          }
        }
      }
    }
  }
  std::printf("attn kernel=cudnn-ragged us_per_batch=%.1f tflops=%.1f build_ms_mean=%.1f max_rel_err=%.3g cudnn=%zu\n",
              total_us / batches.size(), flops / (total_us * 1e-6) / 1e12, build_ms / batches.size(), worst,
              cudnnGetVersion());
  if (!json_out.empty()) {
    std::ofstream j(json_out);
    j << "{\"heads\": " << H << ", \"head_dim\": " << D << ", \"max_batch_tokens\": " << tokens
      << ", \"batches_timed\": " << batches.size() << ", \"batches\": " << all.size() << ", \"gflop\": " << flops / 1e9
      << ", \"cudnn\": " << cudnnGetVersion() << ", \"kernels\": [{\"kernel\": \"cudnn-ragged\", \"us_per_batch\": "
      << total_us / batches.size() << ", \"tflops\": " << flops / (total_us * 1e-6) / 1e12
      << ", \"build_ms_mean\": " << build_ms / batches.size() << ", \"max_rel_err\": " << worst << "}]}\n";
  }
  return worst < 1e-2 ? 0 : 1;
}
