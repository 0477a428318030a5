// CUDA-graph sessions through ONNX Runtime's C API (onnxruntime_go has no IoBinding or run-option
// config entries). Every function returns NULL or an error message the caller frees.
#ifndef SEQEMBED_SE_GRAPH_H
#define SEQEMBED_SE_GRAPH_H
#include <stdint.h>

#include "onnxruntime_c_api.h"

// se_ort_api is the OrtApi of the ONNX Runtime library at ortlib (loaded already, or loaded now).
char *se_ort_api(const char *ortlib, const OrtApi **api);

typedef struct se_gsess se_gsess;
typedef struct se_gshape se_gshape;

// se_gs_open creates a session of model on CUDA device dev from opts (an OrtSessionOptions with
// the CUDA EP appended, enable_cuda_graph=1) and adopts stream, on which it copies inputs and
// outputs (the session's kernels run on ORT's own stream; every copy is synchronised).
// *out is set even on error; se_gs_close frees what was made.
char *se_gs_open(const char *ortlib, void *opts, const char *model, int dev, void *stream,
                 const char *in_ids, const char *in_mask, const char *output, se_gsess **out);
void se_gs_close(se_gsess *gs);

// se_gs_shape binds device buffers for one [rows, cols] batch shape (output [rows, dim]) with
// CUDA graph id graph_id; pad_ids and pad_mask (rows * cols host values) are what rows beyond
// a batch's real ones hold. *out is set even on error; se_gs_shape_free frees it.
char *se_gs_shape(se_gsess *gs, int64_t rows, int64_t cols, int64_t dim, int graph_id,
                  const int64_t *pad_ids, const int64_t *pad_mask, se_gshape **out);
void se_gs_shape_free(se_gshape *sh);

// se_gs_replay copies real rows of ids and mask (row-major, the shape's cols) in, pads the rest,
// runs the session on the bound buffers and copies real rows × dim floats out (out may be NULL).
// With graph, the run has the shape's gpu_graph_id (ORT captures the graph on the run it
// chooses and replays it after); without, it is a plain run. Synchronous.
char *se_gs_replay(se_gshape *sh, const int64_t *ids, const int64_t *mask, int64_t real, float *out, int graph);

// se_gs_run runs one [rows, cols] batch from host memory without a CUDA graph (gpu_graph_id -1).
char *se_gs_run(se_gsess *gs, const int64_t *ids, const int64_t *mask, int64_t rows, int64_t cols,
                float *out, int64_t dim);

#endif
