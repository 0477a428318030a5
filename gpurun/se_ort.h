// seqembed's one binding to ONNX Runtime's C API (headers: third_party/onnxruntime/include): the
// library and its environment, sessions with their options (execution provider, threads, custom
// ops), runs from host memory, and the IoBinding runs of CUDA-graph sessions. Every ORT C API
// function gpurun uses is called from se_ort.c and nowhere else.
//
// Functions returning char * return NULL or an error message the caller frees with free(). No
// function keeps a pointer it was given past its return, except where it says it adopts one: C
// never holds Go memory.
#ifndef SEQEMBED_SE_ORT_H
#define SEQEMBED_SE_ORT_H
#include <stdint.h>

#include "onnxruntime_c_api.h"

// se_env_open loads the ONNX Runtime library at ortlib on its first call (the library then stays
// loaded for the life of the process; later calls reuse it whatever their path) and creates the
// process's ORT environment (log level warning). se_env_close releases the environment. The
// caller serialises the two and pairs them.
char *se_env_open(const char *ortlib);
void se_env_close(void);

// se_tensor is one run input or output: data (host memory, row-major) of ORT element type type
// and shape[0..ndim).
typedef struct {
	void *data;
	int32_t type;  // ONNXTensorElementDataType
	int32_t ndim;  // at most 4
	int64_t shape[4];
} se_tensor;

// se_sess_cfg describes a session. The strings and arrays are only read during se_sess_open.
typedef struct {
	const char *model;       // the .onnx file
	int threads;             // intra-op threads; 0: ORT's default (one per core)
	int cuda_dev;            // CUDA device for the CUDA execution provider; -1: the CPU
	const char *const *cuda_keys, *const *cuda_vals;  // CUDA provider options (device_id included)
	int n_cuda;
	const char *custom_ops;  // custom-op library to register, or NULL
	const char *const *inputs, *const *outputs;  // names, in the order runs give tensors
	int n_inputs, n_outputs;
	void *stream;            // CUDA-graph sessions: the stream inputs and outputs are copied on, else NULL
} se_sess_cfg;

typedef struct se_sess se_sess;
typedef struct se_gshape se_gshape;

// se_sess_open creates a session. With cfg->stream it is a CUDA-graph session (cfg->cuda_dev set,
// enable_cuda_graph among the CUDA options): it adopts the stream, also on error, and can bind
// se_gshape shapes; its kernels run on ORT's own stream. *device is set to 1 when the CUDA
// execution provider could not be appended (the device is the problem), else 0. *out is set even
// on error; se_sess_close frees what was made.
char *se_sess_open(const se_sess_cfg *cfg, int *device, se_sess **out);
void se_sess_close(se_sess *s);

// se_ro_new creates run options, with the run config entry gpu_graph_id = graph_id unless
// graph_id is NULL. se_ro_terminate (from any thread) makes the runs using ro stop at their next
// kernel boundary with an error, until se_ro_unterminate.
char *se_ro_new(const char *graph_id, OrtRunOptions **out);
void se_ro_free(OrtRunOptions *ro);
void se_ro_terminate(OrtRunOptions *ro);
void se_ro_unterminate(OrtRunOptions *ro);

// se_run runs s on n_in inputs and n_out outputs in host memory (the session's names, in order),
// with run options ro (NULL: none). The outputs must have the shapes the model produces. On a
// CUDA-graph session, the copy stream is synchronised after the run.
char *se_run(se_sess *s, OrtRunOptions *ro, const se_tensor *in, int n_in, const se_tensor *out, int n_out);

// se_gshape_new binds device buffers for one [rows, cols] batch shape (output [rows, dim]) of a
// CUDA-graph session, with CUDA graph id graph_id; pad_ids and pad_mask (rows * cols host values,
// copied) are what rows beyond a batch's real ones hold. *out is set even on error;
// se_gshape_free frees it.
char *se_gshape_new(se_sess *s, int64_t rows, int64_t cols, int64_t dim, int graph_id,
                    const int64_t *pad_ids, const int64_t *pad_mask, se_gshape **out);
void se_gshape_free(se_gshape *sh);

// se_gshape_run copies real rows of ids and mask (row-major, the shape's cols) in, pads the rest,
// runs the session on the bound buffers and copies real rows × dim floats out (out may be NULL).
// With graph, the run has the shape's gpu_graph_id (ORT captures the graph on the run it chooses
// and replays it after); without, it runs with plain (gpu_graph_id -1). Synchronous.
char *se_gshape_run(se_gshape *sh, OrtRunOptions *plain, const int64_t *ids, const int64_t *mask, int64_t real,
                    float *out, int graph);

#endif
