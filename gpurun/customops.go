package gpurun

/*
#cgo CFLAGS: -I${SRCDIR}/ortops
#cgo LDFLAGS: -ldl
#include <dlfcn.h>
#include <stdlib.h>
#include <string.h>
#include "onnxruntime_c_api.h"

// se_register_ops registers the custom-op library ops (its RegisterCustomOps) on the session
// options opts, through the OrtApi of the already loaded ONNX Runtime library ortlib. It returns
// NULL or an error message the caller frees.
static char *se_register_ops(void *opts, const char *ortlib, const char *ops) {
	void *h = dlopen(ortlib, RTLD_NOW | RTLD_NOLOAD);
	if (!h) h = dlopen(ortlib, RTLD_NOW);
	if (!h) return strdup(dlerror());
	const OrtApiBase *(*get_base)(void) = (const OrtApiBase *(*)(void))dlsym(h, "OrtGetApiBase");
	if (!get_base) return strdup("OrtGetApiBase not found in the ONNX Runtime library");
	const OrtApi *api = get_base()->GetApi(ORT_API_VERSION);
	if (!api) return strdup("ONNX Runtime does not serve C API version 24");
	OrtStatus *st = api->RegisterCustomOpsLibrary_V2((OrtSessionOptions *)opts, ops);
	if (!st) return NULL;
	char *msg = strdup(api->GetErrorMessage(st));
	api->ReleaseStatus(st);
	return msg;
}
*/
import "C"

import (
	"fmt"
	"reflect"
	"unsafe"

	ort "github.com/yalue/onnxruntime_go"
)

// registerCustomOps loads the custom-operator library at ops (gpurun/ortops, built by
// scripts/build-ops.sh) into so, using the ONNX Runtime library at lib (already loaded).
// onnxruntime_go has no call for this, so the C OrtSessionOptions pointer is read from its
// SessionOptions, whose only field it is; a changed layout is reported, never guessed at.
func registerCustomOps(so *ort.SessionOptions, lib, ops string) error {
	t := reflect.TypeOf(*so)
	if t.NumField() != 1 || t.Field(0).Type.Kind() != reflect.Pointer {
		return fmt.Errorf("%w: custom ops %s: onnxruntime_go's SessionOptions layout changed", ErrSession, ops)
	}
	cOpts := *(*unsafe.Pointer)(unsafe.Pointer(so))
	if cOpts == nil {
		return fmt.Errorf("%w: custom ops %s: session options not created", ErrSession, ops)
	}
	cLib, cOps := C.CString(lib), C.CString(ops)
	defer C.free(unsafe.Pointer(cLib))
	defer C.free(unsafe.Pointer(cOps))
	if msg := C.se_register_ops(cOpts, cLib, cOps); msg != nil {
		defer C.free(unsafe.Pointer(msg))
		return fmt.Errorf("%w: loading custom ops %s: %s", ErrSession, ops, C.GoString(msg))
	}
	return nil
}
