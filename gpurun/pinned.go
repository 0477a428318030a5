package gpurun

/*
#cgo LDFLAGS: -ldl
#include <stdlib.h>
#include "se_cuda.h"
*/
import "C"

import (
	"context"
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

// alloc returns bytes of memory, or an error wrapping ErrAlloc when there is none. A pinned
// allocation first waits, until ctx ends, for a CUDA graph capture in progress to end
// (cudaHostAlloc would break it).
func (m hostMem) alloc(ctx context.Context, bytes int) (unsafe.Pointer, error) {
	if !m.pinned {
		return cMalloc(bytes)
	}
	if err := loadCudart(); err != nil {
		return nil, err
	}
	if err := captureMu.rlock(ctx); err != nil {
		return nil, err
	}
	var p unsafe.Pointer
	rc := C.se_host_alloc(&p, C.size_t(bytes))
	captureMu.runlock()
	if rc != 0 {
		return nil, fmt.Errorf("%w: cudaHostAlloc(%d bytes): %s", ErrAlloc, bytes, C.GoString(C.se_err(rc)))
	}
	return p, nil
}

func (m hostMem) free(p unsafe.Pointer) {
	if m.pinned {
		_ = captureMu.rlock(context.Background()) // cannot fail: Background never ends
		C.se_free_host(p)
		captureMu.runlock()
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

// CUDACapability is device dev's compute capability (major, minor), e.g. 9, 0 on a Hopper GPU.
func CUDACapability(dev int) (major, minor int, err error) {
	if err := loadCudart(); err != nil {
		return 0, 0, err
	}
	var ma, mi C.int
	if rc := C.se_dev_cc(C.int(dev), &ma, &mi); rc != 0 {
		return 0, 0, fmt.Errorf("%w: cudaDeviceGetAttribute(compute capability, device %d): %s", ErrDevice, dev, C.GoString(C.se_err(rc)))
	}
	return int(ma), int(mi), nil
}
