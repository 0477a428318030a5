// gpurun/ortops/ragged_attn_graph.h — the one builder of cuDNN's SDPA forward graph on packed
// (ragged, THD) float16 batches: seqembed_ops.cu's RaggedAttention runs it, bench/cudnn_attn_probe.cpp
// times it. Header-only; needs cudnn-frontend (cudnn_frontend.h) and cuDNN 9 on the include path.
//
// The graph: q, k, v and o [B, H, S, hd] with strides [-, hd, H*hd, 1] — token t of sequence i at
// row (off[i] + t) of a [tokens, H*hd] matrix, so the row-major packed activations are read and
// written in place — ragged offsets off[i] = cu_seqlens[i]*H*hd (int32 [B + 1]) and a padding mask
// from the sequence lengths (int32 [B]; a length may be 0); float32 softmax and accumulation.
// Building one costs ~100 ms (docs/perf.md, tenth session): callers keep them per shape.
#pragma once

#include <cudnn_frontend.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace seqembed {
namespace ragged_sdpa {

// The graph's tensor uids, the keys of its variant pack.
enum : int64_t { kQ = 1, kK, kV, kO, kSeqQ, kSeqKV, kOffQ, kOffK, kOffV, kOffO };

struct Graph {
  int64_t rows = 0;       // B the graph was built for
  std::shared_ptr<cudnn_frontend::graph::Graph> graph;
  int64_t workspace = 0;  // bytes of scratch its execute needs
};

// Build builds the graph for b rows of at most s tokens, heads × hd, softmax scale, on handle h
// into out. It returns "" on success, else what cuDNN said.
inline std::string Build(cudnnHandle_t h, int64_t b, int64_t s, int64_t heads, int64_t hd, float scale, Graph* out) {
  namespace fe = cudnn_frontend;
  auto g = std::make_shared<fe::graph::Graph>();
  g->set_io_data_type(fe::DataType_t::HALF)
      .set_intermediate_data_type(fe::DataType_t::FLOAT)
      .set_compute_data_type(fe::DataType_t::FLOAT);
  auto ints = [&](const char* name, int64_t uid, int64_t n) {
    return g->tensor(fe::graph::Tensor_attributes().set_name(name).set_uid(uid).set_data_type(fe::DataType_t::INT32)
                         .set_dim({n, 1, 1, 1}).set_stride({1, 1, 1, 1}));
  };
  const std::vector<int64_t> dims{b, heads, s, hd}, strides{s * heads * hd, hd, heads * hd, 1};
  auto qkv = [&](const char* name, int64_t uid, const char* off, int64_t off_uid) {
    return g->tensor(fe::graph::Tensor_attributes().set_name(name).set_uid(uid).set_dim(dims).set_stride(strides)
                         .set_ragged_offset(ints(off, off_uid, b + 1)));
  };
  auto Q = qkv("q", kQ, "off_q", kOffQ), K = qkv("k", kK, "off_k", kOffK), V = qkv("v", kV, "off_v", kOffV);
  auto opts = fe::graph::SDPA_attributes().set_name("sdpa").set_generate_stats(false).set_attn_scale(scale)
                  .set_padding_mask(true).set_seq_len_q(ints("seq_q", kSeqQ, b))
                  .set_seq_len_kv(ints("seq_kv", kSeqKV, b));
  auto [O, stats] = g->sdpa(Q, K, V, opts);
  (void)stats;
  O->set_output(true).set_uid(kO).set_dim(dims).set_stride(strides).set_ragged_offset(ints("off_o", kOffO, b + 1));
  auto st = g->build(h, {fe::HeurMode_t::A});
  if (!st.is_good()) return "no SDPA plan for this shape: " + st.get_message();
  int64_t need = 0;
  if (auto ws = g->get_workspace_size(need); !ws.is_good()) return "workspace size: " + ws.get_message();
  *out = Graph{b, g, need};
  return "";
}

}  // namespace ragged_sdpa
}  // namespace seqembed
