// See se_cuda.h.
#include "se_cuda.h"

#include <dlfcn.h>

static void *cudart;
static int (*host_alloc_fn)(void **, size_t, unsigned int);
static int (*free_host_fn)(void *);
// cudaPointerAttributes starts with the memory type; newer CUDA releases add fields after it, so
// the callee gets a buffer much larger than any known layout.
typedef struct { int type; int device; void *devicePointer; void *hostPointer; char reserved[512]; } ptr_attr;
static int (*ptr_attr_fn)(ptr_attr *, const void *);
static const char *(*err_str_fn)(int);
static int (*dev_count_fn)(int *);
static int (*set_device_fn)(int);
static int (*malloc_fn)(void **, size_t);
static int (*free_fn)(void *);
static int (*stream_create_fn)(void **, unsigned int);
static int (*stream_destroy_fn)(void *);
static int (*stream_sync_fn)(void *);
static int (*memcpy_async_fn)(void *, const void *, size_t, int, void *);

#define LOAD(fn, name) ((*(void **)&fn = dlsym(h, name)) != NULL)

int se_cudart_load(const char *name) {
	if (cudart) return 0;
	void *h = dlopen(name, RTLD_NOW | RTLD_GLOBAL);
	if (!h) return -1;
	if (!LOAD(host_alloc_fn, "cudaHostAlloc") || !LOAD(free_host_fn, "cudaFreeHost") ||
	    !LOAD(ptr_attr_fn, "cudaPointerGetAttributes") || !LOAD(err_str_fn, "cudaGetErrorString") ||
	    !LOAD(dev_count_fn, "cudaGetDeviceCount") || !LOAD(set_device_fn, "cudaSetDevice") ||
	    !LOAD(malloc_fn, "cudaMalloc") || !LOAD(free_fn, "cudaFree") ||
	    !LOAD(stream_create_fn, "cudaStreamCreateWithFlags") || !LOAD(stream_destroy_fn, "cudaStreamDestroy") ||
	    !LOAD(stream_sync_fn, "cudaStreamSynchronize") || !LOAD(memcpy_async_fn, "cudaMemcpyAsync")) {
		dlclose(h);
		return -2;
	}
	cudart = h;
	return 0;
}

const char *se_err(int rc) { return err_str_fn(rc); }
int se_dev_count(int *n) { return dev_count_fn(n); }
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
