// See se_graph.h.
#define _GNU_SOURCE  // vasprintf
#include "se_graph.h"

#include <dlfcn.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "se_cuda.h"

static char *fmt(const char *f, ...) {
	va_list ap;
	va_start(ap, f);
	char *s = NULL;
	if (vasprintf(&s, f, ap) < 0) s = strdup(f);
	va_end(ap);
	return s;
}

char *se_ort_api(const char *ortlib, const OrtApi **api) {
	void *h = dlopen(ortlib, RTLD_NOW | RTLD_NOLOAD);
	if (!h) h = dlopen(ortlib, RTLD_NOW);
	if (!h) return strdup(dlerror());
	const OrtApiBase *(*get_base)(void) = (const OrtApiBase *(*)(void))dlsym(h, "OrtGetApiBase");
	if (!get_base) return strdup("OrtGetApiBase not found in the ONNX Runtime library");
	*api = get_base()->GetApi(ORT_API_VERSION);
	if (!*api) return fmt("ONNX Runtime does not serve C API version %d", ORT_API_VERSION);
	return NULL;
}

struct se_gsess {
	const OrtApi *api;
	OrtEnv *env;
	OrtSession *sess;
	OrtMemoryInfo *cuda_mem, *cpu_mem;
	OrtRunOptions *no_graph;  // gpu_graph_id -1
	void *stream;
	int dev;
	char *names[3];  // ids, mask, output
};

struct se_gshape {
	se_gsess *gs;
	int64_t rows, cols, dim;
	void *ids, *mask, *pad_ids, *pad_mask, *out;  // device memory
	OrtValue *v_ids, *v_mask, *v_out;
	OrtIoBinding *bind;
	OrtRunOptions *ro;
};

#define ORT_TRY(api, call, what)                                               \
	do {                                                                       \
		OrtStatus *st_ = (call);                                               \
		if (st_) {                                                             \
			char *m_ = fmt("%s: %s", what, (api)->GetErrorMessage(st_));       \
			(api)->ReleaseStatus(st_);                                         \
			return m_;                                                         \
		}                                                                      \
	} while (0)
#define CUDA_TRY(call, what)                                          \
	do {                                                              \
		int rc_ = (call);                                             \
		if (rc_) return fmt("%s: CUDA error %d (%s)", what, rc_, se_err(rc_)); \
	} while (0)

char *se_gs_open(const char *ortlib, void *opts, const char *model, int dev, void *stream,
                 const char *in_ids, const char *in_mask, const char *output, se_gsess **out) {
	se_gsess *gs = calloc(1, sizeof *gs);
	*out = gs;
	if (!gs) return strdup("out of memory");
	gs->stream = stream;
	gs->dev = dev;
	gs->names[0] = strdup(in_ids);
	gs->names[1] = strdup(in_mask);
	gs->names[2] = strdup(output);
	char *err = se_ort_api(ortlib, &gs->api);
	if (err) return err;
	const OrtApi *api = gs->api;
	// ORT's environment is a process singleton: this takes a reference to onnxruntime_go's.
	ORT_TRY(api, api->CreateEnv(ORT_LOGGING_LEVEL_WARNING, "seqembed", &gs->env), "environment");
	ORT_TRY(api, api->CreateSession(gs->env, model, (OrtSessionOptions *)opts, &gs->sess), "creating the session");
	ORT_TRY(api, api->CreateMemoryInfo("Cuda", OrtDeviceAllocator, dev, OrtMemTypeDefault, &gs->cuda_mem), "CUDA memory info");
	ORT_TRY(api, api->CreateCpuMemoryInfo(OrtDeviceAllocator, OrtMemTypeDefault, &gs->cpu_mem), "CPU memory info");
	ORT_TRY(api, api->CreateRunOptions(&gs->no_graph), "run options");
	ORT_TRY(api, api->AddRunConfigEntry(gs->no_graph, "gpu_graph_id", "-1"), "run options");
	return NULL;
}

void se_gs_close(se_gsess *gs) {
	if (!gs) return;
	const OrtApi *api = gs->api;
	if (api) {
		if (gs->no_graph) api->ReleaseRunOptions(gs->no_graph);
		if (gs->cpu_mem) api->ReleaseMemoryInfo(gs->cpu_mem);
		if (gs->cuda_mem) api->ReleaseMemoryInfo(gs->cuda_mem);
		if (gs->sess) api->ReleaseSession(gs->sess);
		if (gs->env) api->ReleaseEnv(gs->env);
	}
	if (gs->stream) se_stream_destroy(gs->stream);
	for (int i = 0; i < 3; i++) free(gs->names[i]);
	free(gs);
}

static char *tensor(se_gsess *gs, OrtMemoryInfo *mem, void *p, int64_t a, int64_t b, size_t elem,
                    ONNXTensorElementDataType t, OrtValue **v) {
	const int64_t shape[2] = {a, b};
	ORT_TRY(gs->api, gs->api->CreateTensorWithDataAsOrtValue(mem, p, (size_t)(a * b) * elem, shape, 2, t, v), "tensor");
	return NULL;
}

char *se_gs_shape(se_gsess *gs, int64_t rows, int64_t cols, int64_t dim, int graph_id,
                  const int64_t *pad_ids, const int64_t *pad_mask, se_gshape **out) {
	se_gshape *sh = calloc(1, sizeof *sh);
	*out = sh;
	if (!sh) return strdup("out of memory");
	sh->gs = gs;
	sh->rows = rows, sh->cols = cols, sh->dim = dim;
	const OrtApi *api = gs->api;
	const size_t tok = (size_t)(rows * cols) * sizeof(int64_t);
	CUDA_TRY(se_malloc(gs->dev, &sh->ids, tok), "cudaMalloc");
	CUDA_TRY(se_malloc(gs->dev, &sh->mask, tok), "cudaMalloc");
	CUDA_TRY(se_malloc(gs->dev, &sh->pad_ids, tok), "cudaMalloc");
	CUDA_TRY(se_malloc(gs->dev, &sh->pad_mask, tok), "cudaMalloc");
	CUDA_TRY(se_malloc(gs->dev, &sh->out, (size_t)(rows * dim) * sizeof(float)), "cudaMalloc");
	CUDA_TRY(se_memcpy_async(sh->pad_ids, pad_ids, tok, gs->stream), "copying padding rows");
	CUDA_TRY(se_memcpy_async(sh->pad_mask, pad_mask, tok, gs->stream), "copying padding rows");
	CUDA_TRY(se_stream_sync(gs->stream), "cudaStreamSynchronize");
	char *err;
	const ONNXTensorElementDataType i64 = ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64;
	if ((err = tensor(gs, gs->cuda_mem, sh->ids, rows, cols, sizeof(int64_t), i64, &sh->v_ids)) ||
	    (err = tensor(gs, gs->cuda_mem, sh->mask, rows, cols, sizeof(int64_t), i64, &sh->v_mask)) ||
	    (err = tensor(gs, gs->cuda_mem, sh->out, rows, dim, sizeof(float), ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT, &sh->v_out)))
		return err;
	ORT_TRY(api, api->CreateIoBinding(gs->sess, &sh->bind), "IoBinding");
	ORT_TRY(api, api->BindInput(sh->bind, gs->names[0], sh->v_ids), "binding the input ids");
	ORT_TRY(api, api->BindInput(sh->bind, gs->names[1], sh->v_mask), "binding the attention mask");
	ORT_TRY(api, api->BindOutput(sh->bind, gs->names[2], sh->v_out), "binding the output");
	char id[16];
	snprintf(id, sizeof id, "%d", graph_id);
	ORT_TRY(api, api->CreateRunOptions(&sh->ro), "run options");
	ORT_TRY(api, api->AddRunConfigEntry(sh->ro, "gpu_graph_id", id), "run options");
	return NULL;
}

void se_gs_shape_free(se_gshape *sh) {
	if (!sh) return;
	const OrtApi *api = sh->gs->api;
	if (sh->ro) api->ReleaseRunOptions(sh->ro);
	if (sh->bind) api->ReleaseIoBinding(sh->bind);
	if (sh->v_ids) api->ReleaseValue(sh->v_ids);
	if (sh->v_mask) api->ReleaseValue(sh->v_mask);
	if (sh->v_out) api->ReleaseValue(sh->v_out);
	void *bufs[] = {sh->ids, sh->mask, sh->pad_ids, sh->pad_mask, sh->out};
	for (int i = 0; i < 5; i++)
		if (bufs[i]) se_free(bufs[i]);
	free(sh);
}

char *se_gs_replay(se_gshape *sh, const int64_t *ids, const int64_t *mask, int64_t real, float *out, int graph) {
	se_gsess *gs = sh->gs;
	const size_t row = (size_t)sh->cols * sizeof(int64_t), n = (size_t)real * row, rest = (size_t)(sh->rows - real) * row;
	CUDA_TRY(se_set_device(gs->dev), "cudaSetDevice");
	if (n) {
		CUDA_TRY(se_memcpy_async(sh->ids, ids, n, gs->stream), "copying input ids");
		CUDA_TRY(se_memcpy_async(sh->mask, mask, n, gs->stream), "copying the attention mask");
	}
	if (rest) {
		CUDA_TRY(se_memcpy_async((char *)sh->ids + n, (char *)sh->pad_ids + n, rest, gs->stream), "padding input ids");
		CUDA_TRY(se_memcpy_async((char *)sh->mask + n, (char *)sh->pad_mask + n, rest, gs->stream), "padding the attention mask");
	}
	// The session runs on ORT's stream: the inputs must be in place before it starts.
	CUDA_TRY(se_stream_sync(gs->stream), "cudaStreamSynchronize");
	ORT_TRY(gs->api, gs->api->RunWithBinding(gs->sess, graph ? sh->ro : gs->no_graph, sh->bind), "run");
	if (out && real)
		CUDA_TRY(se_memcpy_async(out, sh->out, (size_t)(real * sh->dim) * sizeof(float), gs->stream), "copying the output");
	CUDA_TRY(se_stream_sync(gs->stream), "cudaStreamSynchronize");
	return NULL;
}

char *se_gs_run(se_gsess *gs, const int64_t *ids, const int64_t *mask, int64_t rows, int64_t cols,
                float *out, int64_t dim) {
	const OrtApi *api = gs->api;
	const ONNXTensorElementDataType i64 = ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64;
	OrtValue *in[2] = {NULL, NULL}, *res = NULL;
	char *err = tensor(gs, gs->cpu_mem, (void *)ids, rows, cols, sizeof(int64_t), i64, &in[0]);
	if (!err) err = tensor(gs, gs->cpu_mem, (void *)mask, rows, cols, sizeof(int64_t), i64, &in[1]);
	if (!err) err = tensor(gs, gs->cpu_mem, out, rows, dim, sizeof(float), ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT, &res);
	if (!err) {
		const char *in_names[2] = {gs->names[0], gs->names[1]};
		const char *out_names[1] = {gs->names[2]};
		OrtStatus *st = api->Run(gs->sess, gs->no_graph, in_names, (const OrtValue *const *)in, 2, out_names, 1, &res);
		if (st) {
			err = fmt("run: %s", api->GetErrorMessage(st));
			api->ReleaseStatus(st);
		}
	}
	if (!err) {
		int rc = se_stream_sync(gs->stream);
		if (rc) err = fmt("cudaStreamSynchronize: CUDA error %d (%s)", rc, se_err(rc));
	}
	for (int i = 0; i < 2; i++)
		if (in[i]) api->ReleaseValue(in[i]);
	if (res) api->ReleaseValue(res);
	return err;
}
