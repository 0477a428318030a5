package gpurun

/*
#cgo LDFLAGS: -ldl
#include <dlfcn.h>
#include <stdlib.h>

// The CUDA runtime is loaded at run time (dlopen), so seqembed builds and runs without CUDA.
typedef int (*se_host_alloc_t)(void **, size_t, unsigned int);
typedef int (*se_free_host_t)(void *);
// cudaPointerAttributes starts with the memory type; newer CUDA releases add fields after it, so
// the callee gets a buffer much larger than any known layout.
typedef struct { int type; int device; void *devicePointer; void *hostPointer; char reserved[512]; } se_ptr_attr;
typedef int (*se_ptr_attr_t)(se_ptr_attr *, const void *);
typedef const char *(*se_err_str_t)(int);
typedef int (*se_dev_count_t)(int *);

static void *se_cudart;
static se_host_alloc_t se_host_alloc_fn;
static se_free_host_t se_free_host_fn;
static se_ptr_attr_t se_ptr_attr_fn;
static se_err_str_t se_err_str_fn;
static se_dev_count_t se_dev_count_fn;

static int se_cudart_load(const char *name) {
	if (se_cudart) return 0;
	void *h = dlopen(name, RTLD_NOW | RTLD_GLOBAL);
	if (!h) return -1;
	se_host_alloc_fn = (se_host_alloc_t)dlsym(h, "cudaHostAlloc");
	se_free_host_fn = (se_free_host_t)dlsym(h, "cudaFreeHost");
	se_ptr_attr_fn = (se_ptr_attr_t)dlsym(h, "cudaPointerGetAttributes");
	se_err_str_fn = (se_err_str_t)dlsym(h, "cudaGetErrorString");
	se_dev_count_fn = (se_dev_count_t)dlsym(h, "cudaGetDeviceCount");
	if (!se_host_alloc_fn || !se_free_host_fn || !se_ptr_attr_fn || !se_err_str_fn || !se_dev_count_fn) { dlclose(h); return -2; }
	se_cudart = h;
	return 0;
}
// cudaHostAllocPortable = 1: pinned for every device.
static int se_host_alloc(void **p, size_t n) { return se_host_alloc_fn(p, n, 1); }
static int se_free_host(void *p) { return se_free_host_fn(p); }
// Returns the cudaMemoryType of p (1 = host, pinned), or -1 - error code.
static int se_ptr_type(const void *p) {
	se_ptr_attr a = {0};
	int rc = se_ptr_attr_fn(&a, p);
	return rc ? -1 - rc : a.type;
}
static const char *se_err(int rc) { return se_err_str_fn(rc); }
static int se_dev_count(int *n) { return se_dev_count_fn(n); }
*/
import "C"

import (
	"fmt"
	"sync"
	"unsafe"
)

// cudartNames are tried in order when loading the CUDA runtime for pinned memory.
var cudartNames = []string{"libcudart.so", "libcudart.so.13", "libcudart.so.12"}

var (
	cudartOnce sync.Once
	cudartErr  error
)

func loadCudart() error {
	cudartOnce.Do(func() {
		for _, n := range cudartNames {
			cs := C.CString(n)
			rc := C.se_cudart_load(cs)
			C.free(unsafe.Pointer(cs))
			if rc == 0 {
				return
			}
		}
		cudartErr = fmt.Errorf("%w: CUDA runtime not found (tried %v): no pinned host memory", ErrDevice, cudartNames)
	})
	return cudartErr
}

// hostMem allocates host memory that C (ORT) may hold: plain malloc, or page-locked (pinned)
// memory from cudaHostAlloc, which the GPU reads by DMA without a staging copy.
type hostMem struct{ pinned bool }

func (m hostMem) alloc(bytes int) unsafe.Pointer {
	if !m.pinned {
		return cMalloc(bytes)
	}
	var p unsafe.Pointer
	if rc := C.se_host_alloc(&p, C.size_t(bytes)); rc != 0 {
		panic(fmt.Sprintf("gpurun: cudaHostAlloc(%d bytes): %s", bytes, C.GoString(C.se_err(rc))))
	}
	return p
}

func (m hostMem) free(p unsafe.Pointer) {
	if m.pinned {
		C.se_free_host(p)
		return
	}
	C.free(p)
}

// isPinned asks the CUDA runtime whether p is page-locked host memory.
func isPinned(p unsafe.Pointer) (bool, error) {
	if err := loadCudart(); err != nil {
		return false, err
	}
	t := C.se_ptr_type(p)
	if t < 0 {
		return false, fmt.Errorf("%w: cudaPointerGetAttributes: %s", ErrDevice, C.GoString(C.se_err(-1-t)))
	}
	return t == 1, nil
}

// CUDADeviceCount is the number of CUDA devices the process can see (CUDA_VISIBLE_DEVICES applies).
func CUDADeviceCount() (int, error) {
	if err := loadCudart(); err != nil {
		return 0, err
	}
	var n C.int
	if rc := C.se_dev_count(&n); rc != 0 {
		return 0, fmt.Errorf("%w: cudaGetDeviceCount: %s", ErrDevice, C.GoString(C.se_err(rc)))
	}
	return int(n), nil
}
