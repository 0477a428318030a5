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
#include "se_cuda.h"

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
	void *stream;            // CUDA-graph sessions: the stream inputs (and outputs) are copied on, else NULL
	void *out_stream;        // CUDA-graph sessions: the stream outputs are copied on; NULL: stream
} se_sess_cfg;

typedef struct se_sess se_sess;
typedef struct se_gshape se_gshape;

// se_sess_open creates a session. With cfg->stream it is a CUDA-graph session (cfg->cuda_dev set,
// enable_cuda_graph among the CUDA options): it adopts the streams, also on error, and can bind
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

// se_sess_sync waits for the copy streams of a CUDA-graph session.
char *se_sess_sync(se_sess *s);

// A CUDA-graph shape: device buffers for [rows, cols] batches (output [rows, dim]) in n_sets
// buffer sets (at most SE_MAX_SETS), each bound through its own IoBinding and run with its own
// CUDA graph id, graph_id + its index, so that one set's inputs can be copied in while another
// set's graph replays. Rows beyond a batch's real ones are filled with padding rows (pad_ids,
// pad_mask: rows * cols host values, copied to the device); a set keeps track of the rows that
// hold padding already and copies only the rest.
#define SE_MAX_SETS 2

// se_gshape_new binds the shape's buffers. *out is set even on error; se_gshape_free frees it.
char *se_gshape_new(se_sess *s, int64_t rows, int64_t cols, int64_t dim, int graph_id, int n_sets,
                    const int64_t *pad_ids, const int64_t *pad_mask, se_gshape **out);
void se_gshape_free(se_gshape *sh);

// se_gshape_copy_in enqueues, on the session's stream, the copy of real rows of ids and mask
// (host memory, row-major, the shape's cols; NULL when real is 0) into the set's inputs and the
// padding of the rows after them; with ev, it records the copy's start and end there.
// se_gshape_copy_out enqueues the copy of real rows × dim floats of the set's output into out
// (host memory) on the session's out_stream (else its stream), with ev likewise. Both return
// once the work is enqueued (a copy from pageable memory returns once the source is read); on
// error nothing they enqueued is left in flight.
char *se_gshape_copy_in(se_gshape *sh, int set, const int64_t *ids, const int64_t *mask, int64_t real, se_events *ev);
char *se_gshape_copy_out(se_gshape *sh, int set, float *out, int64_t real, se_events *ev);

// se_gshape_run runs the session on the set's buffers: with graph, with the set's gpu_graph_id
// (ORT captures the graph on the run it chooses and replays it after), else with run options
// plain (gpu_graph_id -1). The inputs must be in place: ORT's stream cannot wait for the copy
// streams. It returns once ORT's Run has, which with a graph is once the replay is done.
char *se_gshape_run(se_gshape *sh, int set, OrtRunOptions *plain, int graph);

#endif
