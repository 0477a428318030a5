// The CUDA runtime, loaded at run time (dlopen) so that seqembed builds and runs without CUDA.
// se_cudart_load must succeed before any other call. Functions return CUDA error codes (0 = ok).
#ifndef SEQEMBED_SE_CUDA_H
#define SEQEMBED_SE_CUDA_H
#include <stddef.h>

int se_cudart_load(const char *name);
const char *se_err(int rc);
int se_dev_count(int *n);
// se_dev_cc gives device dev's compute capability (major.minor).
int se_dev_cc(int dev, int *major, int *minor);

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
// se_clear_err clears the calling thread's last CUDA error after a failed call, so that a later
// cudaGetLastError on the thread (ORT checks kernel launches that way) does not report it.
void se_clear_err(void);

// se_events are the CUDA events of one buffer set of a CUDA-graph session: in_done and out_done
// mark the end of the set's last copy in and copy out (the host waits for them: nothing can wait
// on ORT's own stream); with timing, in_start and out_start also mark their starts, and
// se_events_ms gives the copies' device time. Events may be recorded and waited for from any
// thread. se_events_new fails with cudaErrorNotSupported (801) when the CUDA runtime lacks the
// event functions; *out is NULL on error.
typedef struct se_events se_events;
int se_events_new(int dev, int timing, se_events **out);
void se_events_free(se_events *ev);
// se_events_record records the start (start != 0; nothing without timing) or the end of the copy
// in (in != 0) or out on stream.
int se_events_record(se_events *ev, int in, int start, void *stream);
// se_events_wait blocks until the last recorded end of the copy in (in != 0) or out is done.
int se_events_wait(se_events *ev, int in);
// se_events_ms is the device time in milliseconds between the last start and end of the copy in
// or out, once both are done; -1 when they were not both recorded with timing, or not done.
float se_events_ms(se_events *ev, int in);

#endif
