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
	void *stream;                       // CUDA-graph sessions only
	int dev;
	int n_in, n_out;
	char **in_names, **out_names;
};

struct se_gshape {
	se_sess *s;
	int64_t rows, cols, dim;
	void *ids, *mask, *pad_ids, *pad_mask, *out;  // device memory
	OrtValue *v_ids, *v_mask, *v_out;
	OrtIoBinding *bind;
	OrtRunOptions *ro;  // gpu_graph_id = the shape's
};

// A run has at most this many inputs and outputs (seqembed's models: 2 and 1).
#define SE_MAX_IO 8

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
		return strdup("out of memory");
	}
	s->stream = cfg->stream;
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

char *se_gshape_new(se_sess *s, int64_t rows, int64_t cols, int64_t dim, int graph_id,
                    const int64_t *pad_ids, const int64_t *pad_mask, se_gshape **out) {
	se_gshape *sh = calloc(1, sizeof *sh);
	*out = sh;
	if (!sh) return strdup("out of memory");
	sh->s = s;
	sh->rows = rows, sh->cols = cols, sh->dim = dim;
	if (!s->stream || s->n_in != 2 || s->n_out != 1)
		return strdup("CUDA graph shapes need a CUDA-graph session of two inputs (ids, mask) and one output");
	const size_t tok = (size_t)(rows * cols) * sizeof(int64_t);
	CUDA_TRY(se_malloc(s->dev, &sh->ids, tok), "cudaMalloc");
	CUDA_TRY(se_malloc(s->dev, &sh->mask, tok), "cudaMalloc");
	CUDA_TRY(se_malloc(s->dev, &sh->pad_ids, tok), "cudaMalloc");
	CUDA_TRY(se_malloc(s->dev, &sh->pad_mask, tok), "cudaMalloc");
	CUDA_TRY(se_malloc(s->dev, &sh->out, (size_t)(rows * dim) * sizeof(float)), "cudaMalloc");
	CUDA_TRY(se_memcpy_async(sh->pad_ids, pad_ids, tok, s->stream), "copying padding rows");
	CUDA_TRY(se_memcpy_async(sh->pad_mask, pad_mask, tok, s->stream), "copying padding rows");
	CUDA_TRY(se_stream_sync(s->stream), "cudaStreamSynchronize");
	char *err;
	const int64_t tshape[2] = {rows, cols}, oshape[2] = {rows, dim};
	const int32_t i64 = ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64;
	if ((err = value(s->cuda_mem, sh->ids, i64, tshape, 2, &sh->v_ids)) ||
	    (err = value(s->cuda_mem, sh->mask, i64, tshape, 2, &sh->v_mask)) ||
	    (err = value(s->cuda_mem, sh->out, ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT, oshape, 2, &sh->v_out)))
		return err;
	ORT_TRY(api->CreateIoBinding(s->sess, &sh->bind), "IoBinding");
	ORT_TRY(api->BindInput(sh->bind, s->in_names[0], sh->v_ids), "binding the input ids");
	ORT_TRY(api->BindInput(sh->bind, s->in_names[1], sh->v_mask), "binding the attention mask");
	ORT_TRY(api->BindOutput(sh->bind, s->out_names[0], sh->v_out), "binding the output");
	char id[16];
	snprintf(id, sizeof id, "%d", graph_id);
	return se_ro_new(id, &sh->ro);
}

void se_gshape_free(se_gshape *sh) {
	if (!sh) return;
	se_ro_free(sh->ro);
	if (sh->bind) api->ReleaseIoBinding(sh->bind);
	free_value(sh->v_ids);
	free_value(sh->v_mask);
	free_value(sh->v_out);
	void *bufs[] = {sh->ids, sh->mask, sh->pad_ids, sh->pad_mask, sh->out};
	for (int i = 0; i < 5; i++)
		if (bufs[i]) se_free(bufs[i]);
	free(sh);
}

char *se_gshape_run(se_gshape *sh, OrtRunOptions *plain, const int64_t *ids, const int64_t *mask, int64_t real,
                    float *out, int graph) {
	se_sess *s = sh->s;
	const size_t row = (size_t)sh->cols * sizeof(int64_t), n = (size_t)real * row, rest = (size_t)(sh->rows - real) * row;
	CUDA_TRY(se_set_device(s->dev), "cudaSetDevice");
	if (n) {
		CUDA_TRY(se_memcpy_async(sh->ids, ids, n, s->stream), "copying input ids");
		CUDA_TRY(se_memcpy_async(sh->mask, mask, n, s->stream), "copying the attention mask");
	}
	if (rest) {
		CUDA_TRY(se_memcpy_async((char *)sh->ids + n, (char *)sh->pad_ids + n, rest, s->stream), "padding input ids");
		CUDA_TRY(se_memcpy_async((char *)sh->mask + n, (char *)sh->pad_mask + n, rest, s->stream), "padding the attention mask");
	}
	// The session runs on ORT's stream: the inputs must be in place before it starts.
	CUDA_TRY(se_stream_sync(s->stream), "cudaStreamSynchronize");
	ORT_TRY(api->RunWithBinding(s->sess, graph ? sh->ro : plain, sh->bind), "run");
	if (out && real)
		CUDA_TRY(se_memcpy_async(out, sh->out, (size_t)(real * sh->dim) * sizeof(float), s->stream), "copying the output");
	CUDA_TRY(se_stream_sync(s->stream), "cudaStreamSynchronize");
	return NULL;
}
