// See se_cuda.h.
#include "se_cuda.h"

#include <dlfcn.h>
#include <stdlib.h>

static void *cudart;
static int (*host_alloc_fn)(void **, size_t, unsigned int);
static int (*free_host_fn)(void *);
// cudaPointerAttributes starts with the memory type; newer CUDA releases add fields after it, so
// the callee gets a buffer much larger than any known layout.
typedef struct { int type; int device; void *devicePointer; void *hostPointer; char reserved[512]; } ptr_attr;
static int (*ptr_attr_fn)(ptr_attr *, const void *);
static const char *(*err_str_fn)(int);
static int (*dev_count_fn)(int *);
static int (*dev_attr_fn)(int *, int, int);
static int (*set_device_fn)(int);
static int (*malloc_fn)(void **, size_t);
static int (*free_fn)(void *);
static int (*stream_create_fn)(void **, unsigned int);
static int (*stream_destroy_fn)(void *);
static int (*stream_sync_fn)(void *);
static int (*memcpy_async_fn)(void *, const void *, size_t, int, void *);
// Optional (looked up, not required, so that pinned memory works with any runtime): without the
// event functions CUDA-graph copy overlap is refused; without cudaEventElapsedTime copies are
// not timed.
static int (*last_err_fn)(void);
static int (*event_create_fn)(void **, unsigned int);
static int (*event_destroy_fn)(void *);
static int (*event_record_fn)(void *, void *);
static int (*event_sync_fn)(void *);
static int (*event_elapsed_fn)(float *, void *, void *);

#define LOAD(fn, name) ((*(void **)&fn = dlsym(h, name)) != NULL)

int se_cudart_load(const char *name) {
	if (cudart) return 0;
	void *h = dlopen(name, RTLD_NOW | RTLD_GLOBAL);
	if (!h) return -1;
	if (!LOAD(host_alloc_fn, "cudaHostAlloc") || !LOAD(free_host_fn, "cudaFreeHost") ||
	    !LOAD(ptr_attr_fn, "cudaPointerGetAttributes") || !LOAD(err_str_fn, "cudaGetErrorString") ||
	    !LOAD(dev_count_fn, "cudaGetDeviceCount") || !LOAD(set_device_fn, "cudaSetDevice") ||
	    !LOAD(dev_attr_fn, "cudaDeviceGetAttribute") ||
	    !LOAD(malloc_fn, "cudaMalloc") || !LOAD(free_fn, "cudaFree") ||
	    !LOAD(stream_create_fn, "cudaStreamCreateWithFlags") || !LOAD(stream_destroy_fn, "cudaStreamDestroy") ||
	    !LOAD(stream_sync_fn, "cudaStreamSynchronize") || !LOAD(memcpy_async_fn, "cudaMemcpyAsync")) {
		dlclose(h);
		return -2;
	}
	(void)LOAD(last_err_fn, "cudaGetLastError");
	if (!LOAD(event_create_fn, "cudaEventCreateWithFlags") || !LOAD(event_destroy_fn, "cudaEventDestroy") ||
	    !LOAD(event_record_fn, "cudaEventRecord") || !LOAD(event_sync_fn, "cudaEventSynchronize"))
		event_create_fn = NULL;
	(void)LOAD(event_elapsed_fn, "cudaEventElapsedTime");
	cudart = h;
	return 0;
}

const char *se_err(int rc) { return err_str_fn(rc); }
int se_dev_count(int *n) { return dev_count_fn(n); }

// cudaDevAttrComputeCapabilityMajor = 75, cudaDevAttrComputeCapabilityMinor = 76.
int se_dev_cc(int dev, int *major, int *minor) {
	int rc = dev_attr_fn(major, 75, dev);
	return rc ? rc : dev_attr_fn(minor, 76, dev);
}
int se_host_alloc(void **p, size_t n) { return host_alloc_fn(p, n, 1); }
int se_free_host(void *p) { return free_host_fn(p); }

int se_ptr_type(const void *p) {
	ptr_attr a = {0};
	int rc = ptr_attr_fn(&a, p);
	return rc ? -1 - rc : a.type;
}

int se_set_device(int dev) { return set_device_fn(dev); }

int se_malloc(int dev, void **p, size_t n) {
	int rc = set_device_fn(dev);
	return rc ? rc : malloc_fn(p, n);
}

int se_free(void *p) { return free_fn(p); }

// cudaStreamNonBlocking = 1: no implicit synchronisation with the legacy default stream.
int se_stream_create(int dev, void **stream) {
	int rc = set_device_fn(dev);
	return rc ? rc : stream_create_fn(stream, 1);
}

int se_stream_destroy(void *stream) { return stream_destroy_fn(stream); }
int se_stream_sync(void *stream) { return stream_sync_fn(stream); }
// cudaMemcpyDefault = 4.
int se_memcpy_async(void *dst, const void *src, size_t n, void *stream) { return memcpy_async_fn(dst, src, n, 4, stream); }

void se_clear_err(void) {
	if (last_err_fn) last_err_fn();
}

struct se_events {
	int timing;
	void *in_start, *in_done, *out_start, *out_done;  // cudaEvent_t; the starts only with timing
	int in_started, out_started;  // a start was recorded since the last end
	int in_timed, out_timed;      // the last end was recorded after its start
};

// cudaErrorNotSupported; cudaEventDisableTiming.
#define SE_NOT_SUPPORTED 801
#define SE_EVENT_NO_TIMING 2u

void se_events_free(se_events *e) {
	if (!e) return;
	void *evs[] = {e->in_start, e->in_done, e->out_start, e->out_done};
	for (int i = 0; i < 4; i++)
		if (evs[i]) event_destroy_fn(evs[i]);
	free(e);
}

int se_events_new(int dev, int timing, se_events **out) {
	*out = NULL;
	if (!event_create_fn) return SE_NOT_SUPPORTED;
	int rc = set_device_fn(dev);
	if (rc) return rc;
	se_events *e = calloc(1, sizeof *e);
	if (!e) return 2;  // cudaErrorMemoryAllocation
	e->timing = timing && event_elapsed_fn;
	const unsigned flags = e->timing ? 0u : SE_EVENT_NO_TIMING;
	rc = event_create_fn(&e->in_done, flags);
	if (!rc) rc = event_create_fn(&e->out_done, flags);
	if (!rc && e->timing) rc = event_create_fn(&e->in_start, 0);
	if (!rc && e->timing) rc = event_create_fn(&e->out_start, 0);
	if (rc) {
		se_clear_err();
		se_events_free(e);
		return rc;
	}
	*out = e;
	return 0;
}

int se_events_record(se_events *e, int in, int start, void *stream) {
	int *started = in ? &e->in_started : &e->out_started, *timed = in ? &e->in_timed : &e->out_timed;
	if (start) {
		if (!e->timing) return 0;
		*started = 0;
		int rc = event_record_fn(in ? e->in_start : e->out_start, stream);
		if (!rc) *started = 1;
		return rc;
	}
	*timed = 0;
	int rc = event_record_fn(in ? e->in_done : e->out_done, stream);
	if (!rc) *timed = *started;
	*started = 0;
	return rc;
}

int se_events_wait(se_events *e, int in) { return event_sync_fn(in ? e->in_done : e->out_done); }

float se_events_ms(se_events *e, int in) {
	if (!(in ? e->in_timed : e->out_timed)) return -1;
	float ms = 0;
	if (event_elapsed_fn(&ms, in ? e->in_start : e->out_start, in ? e->in_done : e->out_done)) {
		se_clear_err();
		return -1;
	}
	return ms;
}
