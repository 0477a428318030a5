// See se_ort.h.
#define _GNU_SOURCE  // vasprintf
#include "se_ort.h"

#include <dlfcn.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "se_cuda.h"

// The library's API table and the environment: process-wide, set by se_env_open.
static const OrtApi *api;
static OrtEnv *env;

static char *fmt(const char *f, ...) {
	va_list ap;
	va_start(ap, f);
	char *s = NULL;
	if (vasprintf(&s, f, ap) < 0) s = strdup(f);
	va_end(ap);
	return s;
}

// status_err turns st into the message "what: ORT's message" and releases it; NULL for NULL.
static char *status_err(OrtStatus *st, const char *what) {
	if (!st) return NULL;
	char *m = fmt("%s: %s", what, api->GetErrorMessage(st));
	api->ReleaseStatus(st);
	return m;
}

#define ORT_TRY(call, what)                           \
	do {                                              \
		char *e_ = status_err((call), (what));        \
		if (e_) return e_;                            \
	} while (0)
#define CUDA_TRY(call, what)                                                   \
	do {                                                                       \
		int rc_ = (call);                                                      \
		if (rc_) return fmt("%s: CUDA error %d (%s)", what, rc_, se_err(rc_)); \
	} while (0)

char *se_env_open(const char *ortlib) {
	if (!api) {
		// The flags ORT was loaded with through onnxruntime_go, gpurun's earlier binding.
		void *h = dlopen(ortlib, RTLD_LAZY | RTLD_LOCAL);
		if (!h) {
			const char *e = dlerror();
			return fmt("%s", e ? e : "dlopen failed");
		}
		const OrtApiBase *(*get_base)(void) = (const OrtApiBase *(*)(void))dlsym(h, "OrtGetApiBase");
		if (!get_base) {
			dlclose(h);
			return strdup("OrtGetApiBase not found in the ONNX Runtime library");
		}
		const OrtApiBase *base = get_base();
		const OrtApi *a = base->GetApi(ORT_API_VERSION);
		if (!a) {
			char *m = fmt("ONNX Runtime %s does not serve C API version %d", base->GetVersionString(), ORT_API_VERSION);
			dlclose(h);
			return m;
		}
		api = a;
	}
	if (env) return NULL;
	ORT_TRY(api->CreateEnv(ORT_LOGGING_LEVEL_WARNING, "seqembed", &env), "creating the environment");
	return NULL;
}

void se_env_close(void) {
	if (api && env) api->ReleaseEnv(env);
	env = NULL;
}

struct se_sess {
	OrtSession *sess;
	OrtMemoryInfo *cpu_mem, *cuda_mem;  // cuda_mem: CUDA-graph sessions only
	void *stream, *out_stream;          // CUDA-graph sessions only (out_stream may be NULL: stream)
	int dev;
	int n_in, n_out;
	char **in_names, **out_names;
};

// One buffer set of a shape.
typedef struct {
	void *ids, *mask, *out;  // device memory
	OrtValue *v_ids, *v_mask, *v_out;
	OrtIoBinding *bind;
	OrtRunOptions *ro;    // gpu_graph_id = the set's
	int64_t padded_from;  // rows from here on hold padding rows (rows: none known to)
} se_gset;

struct se_gshape {
	se_sess *s;
	int64_t rows, cols, dim;
	int n_sets;
	void *pad_ids, *pad_mask;  // device memory: the padding rows, shared by the sets
	se_gset set[SE_MAX_SETS];
};

// A run has at most this many inputs and outputs (seqembed's models: 2 and 1).
#define SE_MAX_IO 64

static char *copy_names(const char *const *names, int n, char ***out) {
	if (n < 0 || n > SE_MAX_IO) return fmt("%d names: at most %d", n, SE_MAX_IO);
	*out = calloc((size_t)n + 1, sizeof(char *));
	if (!*out) return strdup("out of memory");
	for (int i = 0; i < n; i++)
		if (!((*out)[i] = strdup(names[i]))) return strdup("out of memory");
	return NULL;
}

static void free_names(char **names) {
	if (!names) return;
	for (char **p = names; *p; p++) free(*p);
	free(names);
}

// session_options makes cfg's session options into *out (set even on error; the caller releases).
static char *session_options(const se_sess_cfg *cfg, int *device, OrtSessionOptions **out) {
	ORT_TRY(api->CreateSessionOptions(out), "session options");
	OrtSessionOptions *so = *out;
	ORT_TRY(api->SetSessionGraphOptimizationLevel(so, ORT_ENABLE_ALL), "graph optimisation level");
	if (cfg->threads > 0) ORT_TRY(api->SetIntraOpNumThreads(so, cfg->threads), "intra-op threads");
	if (cfg->cuda_dev >= 0) {
		OrtCUDAProviderOptionsV2 *cuda = NULL;
		ORT_TRY(api->CreateCUDAProviderOptions(&cuda), "CUDA provider options");
		char *err = NULL;
		if (cfg->n_cuda > 0)
			err = status_err(api->UpdateCUDAProviderOptions(cuda, cfg->cuda_keys, cfg->cuda_vals, (size_t)cfg->n_cuda),
			                 "CUDA provider options");
		if (!err) {
			err = status_err(api->SessionOptionsAppendExecutionProvider_CUDA_V2(so, cuda), "CUDA execution provider");
			if (err) *device = 1;
		}
		api->ReleaseCUDAProviderOptions(cuda);
		if (err) return err;
	}
	if (cfg->custom_ops) {
		char what[512];
		snprintf(what, sizeof what, "registering the custom-op library %s", cfg->custom_ops);
		ORT_TRY(api->RegisterCustomOpsLibrary_V2(so, cfg->custom_ops), what);
	}
	return NULL;
}

char *se_sess_open(const se_sess_cfg *cfg, int *device, se_sess **out) {
	*device = 0;
	se_sess *s = calloc(1, sizeof *s);
	*out = s;
	if (!s) {
		if (cfg->stream) se_stream_destroy(cfg->stream);
		if (cfg->out_stream) se_stream_destroy(cfg->out_stream);
		return strdup("out of memory");
	}
	s->stream = cfg->stream;
	s->out_stream = cfg->out_stream;
	s->dev = cfg->cuda_dev;
	if (!api || !env) return strdup("the ONNX Runtime environment is not open");
	char *err = copy_names(cfg->inputs, cfg->n_inputs, &s->in_names);
	if (!err) err = copy_names(cfg->outputs, cfg->n_outputs, &s->out_names);
	if (err) return err;
	s->n_in = cfg->n_inputs;
	s->n_out = cfg->n_outputs;
	OrtSessionOptions *so = NULL;
	err = session_options(cfg, device, &so);
	if (!err) err = status_err(api->CreateSession(env, cfg->model, so, &s->sess), "creating the session");
	if (so) api->ReleaseSessionOptions(so);
	if (err) return err;
	ORT_TRY(api->CreateCpuMemoryInfo(OrtDeviceAllocator, OrtMemTypeDefault, &s->cpu_mem), "CPU memory info");
	if (s->stream)
		ORT_TRY(api->CreateMemoryInfo("Cuda", OrtDeviceAllocator, s->dev, OrtMemTypeDefault, &s->cuda_mem), "CUDA memory info");
	return NULL;
}

void se_sess_close(se_sess *s) {
	if (!s) return;
	if (api) {
		if (s->cuda_mem) api->ReleaseMemoryInfo(s->cuda_mem);
		if (s->cpu_mem) api->ReleaseMemoryInfo(s->cpu_mem);
		if (s->sess) api->ReleaseSession(s->sess);
	}
	if (s->stream) se_stream_destroy(s->stream);
	if (s->out_stream) se_stream_destroy(s->out_stream);
	free_names(s->in_names);
	free_names(s->out_names);
	free(s);
}

char *se_ro_new(const char *graph_id, OrtRunOptions **out) {
	*out = NULL;
	ORT_TRY(api->CreateRunOptions(out), "run options");
	if (graph_id) {
		char *err = status_err(api->AddRunConfigEntry(*out, "gpu_graph_id", graph_id), "run options");
		if (err) {
			se_ro_free(*out);
			*out = NULL;
			return err;
		}
	}
	return NULL;
}

void se_ro_free(OrtRunOptions *ro) {
	if (ro) api->ReleaseRunOptions(ro);
}

// Setting and clearing a flag cannot fail; a status, if ever returned, is released.
void se_ro_terminate(OrtRunOptions *ro) { free(status_err(api->RunOptionsSetTerminate(ro), "")); }
void se_ro_unterminate(OrtRunOptions *ro) { free(status_err(api->RunOptionsUnsetTerminate(ro), "")); }

static void free_value(OrtValue *v) {
	if (v) api->ReleaseValue(v);
}

static size_t elem_size(int32_t t) {
	switch (t) {
	case ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT8: return 1;
	case ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16: return 2;
	case ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT:
	case ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32: return 4;
	case ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64:
	case ONNX_TENSOR_ELEMENT_DATA_TYPE_DOUBLE: return 8;
	}
	return 0;
}

// value makes an OrtValue over data in mem (not copied: data must outlive the value).
static char *value(OrtMemoryInfo *mem, void *data, int32_t type, const int64_t *shape, int ndim, OrtValue **v) {
	size_t n = elem_size(type);
	if (!n || ndim < 0 || ndim > 4) return fmt("tensor of element type %d with %d dimensions: not supported", type, ndim);
	for (int i = 0; i < ndim; i++) {
		if (shape[i] < 0) return fmt("tensor dimension %d is %lld", i, (long long)shape[i]);
		n *= (size_t)shape[i];
	}
	ORT_TRY(api->CreateTensorWithDataAsOrtValue(mem, data, n, shape, (size_t)ndim, (ONNXTensorElementDataType)type, v),
	        "tensor");
	return NULL;
}

char *se_run(se_sess *s, OrtRunOptions *ro, const se_tensor *in, int n_in, const se_tensor *out, int n_out) {
	if (n_in != s->n_in || n_out != s->n_out)
		return fmt("a run with %d inputs and %d outputs on a session of %d and %d", n_in, n_out, s->n_in, s->n_out);
	OrtValue *vin[SE_MAX_IO] = {0}, *vout[SE_MAX_IO] = {0};
	char *err = NULL;
	for (int i = 0; i < n_in && !err; i++) err = value(s->cpu_mem, in[i].data, in[i].type, in[i].shape, in[i].ndim, &vin[i]);
	for (int i = 0; i < n_out && !err; i++)
		err = value(s->cpu_mem, out[i].data, out[i].type, out[i].shape, out[i].ndim, &vout[i]);
	if (!err)
		err = status_err(api->Run(s->sess, ro, (const char *const *)s->in_names, (const OrtValue *const *)vin, (size_t)n_in,
		                          (const char *const *)s->out_names, (size_t)n_out, vout),
		                 "run");
	if (!err && s->stream) {
		int rc = se_stream_sync(s->stream);
		if (rc) err = fmt("cudaStreamSynchronize: CUDA error %d (%s)", rc, se_err(rc));
	}
	for (int i = 0; i < SE_MAX_IO; i++) {
		free_value(vin[i]);
		free_value(vout[i]);
	}
	return err;
}

char *se_sess_sync(se_sess *s) {
	CUDA_TRY(se_set_device(s->dev), "cudaSetDevice");
	CUDA_TRY(se_stream_sync(s->stream), "cudaStreamSynchronize");
	if (s->out_stream) CUDA_TRY(se_stream_sync(s->out_stream), "cudaStreamSynchronize");
	return NULL;
}

char *se_gshape_new(se_sess *s, int64_t rows, int64_t cols, int64_t dim, int graph_id, int n_sets,
                    const int64_t *pad_ids, const int64_t *pad_mask, se_gshape **out) {
	se_gshape *sh = calloc(1, sizeof *sh);
	*out = sh;
	if (!sh) return strdup("out of memory");
	sh->s = s;
	sh->rows = rows, sh->cols = cols, sh->dim = dim;
	if (!s->stream || s->n_in != 2 || s->n_out != 1)
		return strdup("CUDA graph shapes need a CUDA-graph session of two inputs (ids, mask) and one output");
	if (n_sets < 1 || n_sets > SE_MAX_SETS) return fmt("%d buffer sets: 1 to %d", n_sets, SE_MAX_SETS);
	if (rows <= 0 || cols <= 0 || dim <= 0) return fmt("shape %lld×%lld, dim %lld", (long long)rows, (long long)cols, (long long)dim);
	sh->n_sets = n_sets;
	const size_t tok = (size_t)(rows * cols) * sizeof(int64_t);
	CUDA_TRY(se_malloc(s->dev, &sh->pad_ids, tok), "cudaMalloc");
	CUDA_TRY(se_malloc(s->dev, &sh->pad_mask, tok), "cudaMalloc");
	CUDA_TRY(se_memcpy_async(sh->pad_ids, pad_ids, tok, s->stream), "copying padding rows");
	CUDA_TRY(se_memcpy_async(sh->pad_mask, pad_mask, tok, s->stream), "copying padding rows");
	CUDA_TRY(se_stream_sync(s->stream), "cudaStreamSynchronize");
	const int64_t tshape[2] = {rows, cols}, oshape[2] = {rows, dim};
	const int32_t i64 = ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64;
	for (int k = 0; k < n_sets; k++) {
		se_gset *g = &sh->set[k];
		g->padded_from = rows;
		CUDA_TRY(se_malloc(s->dev, &g->ids, tok), "cudaMalloc");
		CUDA_TRY(se_malloc(s->dev, &g->mask, tok), "cudaMalloc");
		CUDA_TRY(se_malloc(s->dev, &g->out, (size_t)(rows * dim) * sizeof(float)), "cudaMalloc");
		char *err;
		if ((err = value(s->cuda_mem, g->ids, i64, tshape, 2, &g->v_ids)) ||
		    (err = value(s->cuda_mem, g->mask, i64, tshape, 2, &g->v_mask)) ||
		    (err = value(s->cuda_mem, g->out, ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT, oshape, 2, &g->v_out)))
			return err;
		ORT_TRY(api->CreateIoBinding(s->sess, &g->bind), "IoBinding");
		ORT_TRY(api->BindInput(g->bind, s->in_names[0], g->v_ids), "binding the input ids");
		ORT_TRY(api->BindInput(g->bind, s->in_names[1], g->v_mask), "binding the attention mask");
		ORT_TRY(api->BindOutput(g->bind, s->out_names[0], g->v_out), "binding the output");
		char id[16];
		snprintf(id, sizeof id, "%d", graph_id + k);
		if ((err = se_ro_new(id, &g->ro))) return err;
	}
	return NULL;
}

void se_gshape_free(se_gshape *sh) {
	if (!sh) return;
	for (int k = 0; k < SE_MAX_SETS; k++) {
		se_gset *g = &sh->set[k];
		se_ro_free(g->ro);
		if (g->bind) api->ReleaseIoBinding(g->bind);
		free_value(g->v_ids);
		free_value(g->v_mask);
		free_value(g->v_out);
		void *bufs[] = {g->ids, g->mask, g->out};
		for (int i = 0; i < 3; i++)
			if (bufs[i]) se_free(bufs[i]);
	}
	if (sh->pad_ids) se_free(sh->pad_ids);
	if (sh->pad_mask) se_free(sh->pad_mask);
	free(sh);
}

static char *check_set(const se_gshape *sh, int set, int64_t real) {
	if (set < 0 || set >= sh->n_sets) return fmt("buffer set %d of a shape of %d", set, sh->n_sets);
	if (real < 0 || real > sh->rows) return fmt("%lld rows in a shape of %lld", (long long)real, (long long)sh->rows);
	return NULL;
}

// cuda_fail turns CUDA error rc of what into a message, after waiting for stream (so that nothing
// enqueued before the failure is left in flight) and clearing the thread's last error.
static char *cuda_fail(int rc, const char *what, void *stream) {
	char *m = fmt("%s: CUDA error %d (%s)", what, rc, se_err(rc));
	se_clear_err();
	if (stream && se_stream_sync(stream)) se_clear_err();
	return m;
}

// STEP runs call (a CUDA call) unless an earlier step failed, naming it what when it fails.
#define STEP(call, name)         \
	do {                         \
		if (!rc) {               \
			what = (name);       \
			rc = (call);         \
		}                        \
	} while (0)

char *se_gshape_copy_in(se_gshape *sh, int set, const int64_t *ids, const int64_t *mask, int64_t real, se_events *ev) {
	char *err = check_set(sh, set, real);
	if (err) return err;
	se_sess *s = sh->s;
	se_gset *g = &sh->set[set];
	const size_t row = (size_t)sh->cols * sizeof(int64_t), n = (size_t)real * row;
	const int64_t pad_to = g->padded_from;
	g->padded_from = sh->rows;  // unknown until the copies are enqueued
	int rc = 0;
	const char *what = "";
	STEP(se_set_device(s->dev), "cudaSetDevice");
	if (ev) STEP(se_events_record(ev, 1, 1, s->stream), "recording a CUDA event");
	if (n) {
		STEP(se_memcpy_async(g->ids, ids, n, s->stream), "copying the input ids");
		STEP(se_memcpy_async(g->mask, mask, n, s->stream), "copying the attention mask");
	}
	if (real < pad_to) {
		// Rows from pad_to on hold padding already; rows before it may hold an earlier batch's.
		const size_t rest = (size_t)(pad_to - real) * row;
		STEP(se_memcpy_async((char *)g->ids + n, (char *)sh->pad_ids + n, rest, s->stream), "padding the input ids");
		STEP(se_memcpy_async((char *)g->mask + n, (char *)sh->pad_mask + n, rest, s->stream), "padding the attention mask");
	}
	if (ev) STEP(se_events_record(ev, 1, 0, s->stream), "recording a CUDA event");
	if (rc) return cuda_fail(rc, what, s->stream);
	g->padded_from = real;
	return NULL;
}

char *se_gshape_copy_out(se_gshape *sh, int set, float *out, int64_t real, se_events *ev) {
	char *err = check_set(sh, set, real);
	if (err) return err;
	se_sess *s = sh->s;
	void *stream = s->out_stream ? s->out_stream : s->stream;
	int rc = 0;
	const char *what = "";
	STEP(se_set_device(s->dev), "cudaSetDevice");
	if (ev) STEP(se_events_record(ev, 0, 1, stream), "recording a CUDA event");
	if (real) STEP(se_memcpy_async(out, sh->set[set].out, (size_t)(real * sh->dim) * sizeof(float), stream), "copying the output");
	if (ev) STEP(se_events_record(ev, 0, 0, stream), "recording a CUDA event");
	if (rc) return cuda_fail(rc, what, stream);
	return NULL;
}

char *se_gshape_run(se_gshape *sh, int set, OrtRunOptions *plain, int graph) {
	char *err = check_set(sh, set, 0);
	if (err) return err;
	se_sess *s = sh->s;
	CUDA_TRY(se_set_device(s->dev), "cudaSetDevice");
	ORT_TRY(api->RunWithBinding(s->sess, graph ? sh->set[set].ro : plain, sh->set[set].bind), "run");
	return NULL;
}
