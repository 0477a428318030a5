// The CUDA runtime, loaded at run time (dlopen) so that seqembed builds and runs without CUDA.
// se_cudart_load must succeed before any other call. Functions return CUDA error codes (0 = ok).
#ifndef SEQEMBED_SE_CUDA_H
#define SEQEMBED_SE_CUDA_H
#include <stddef.h>

int se_cudart_load(const char *name);
const char *se_err(int rc);
int se_dev_count(int *n);

// Pinned host memory (cudaHostAllocPortable: pinned for every device).
int se_host_alloc(void **p, size_t n);
int se_free_host(void *p);
// se_ptr_type returns p's cudaMemoryType (1 = pinned host), or -1 - error code.
int se_ptr_type(const void *p);

// Device memory, streams and copies (cudaMemcpyDefault: direction from the pointers), for the
// CUDA-graph sessions. Calls that touch a device set it first where they take one.
int se_set_device(int dev);
int se_malloc(int dev, void **p, size_t n);
int se_free(void *p);
int se_stream_create(int dev, void **stream);
int se_stream_destroy(void *stream);
int se_stream_sync(void *stream);
int se_memcpy_async(void *dst, const void *src, size_t n, void *stream);

#endif
