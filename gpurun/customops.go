package gpurun

/*
#cgo CFLAGS: -I${SRCDIR}/ortops
#cgo LDFLAGS: -ldl
#include <stdlib.h>
#include <string.h>
#include "se_graph.h"

// se_register_ops registers the custom-op library ops (its RegisterCustomOps) on the session
// options opts, through the OrtApi of the already loaded ONNX Runtime library ortlib. It returns
// NULL or an error message the caller frees.
static char *se_register_ops(void *opts, const char *ortlib, const char *ops) {
	const OrtApi *api = NULL;
	char *err = se_ort_api(ortlib, &api);
	if (err) return err;
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

// cSessionOptions is the C OrtSessionOptions pointer of so. onnxruntime_go has no accessor, so it
// is read from its SessionOptions, whose only field it is; a changed layout is reported, never
// guessed at.
func cSessionOptions(so *ort.SessionOptions) (unsafe.Pointer, error) {
	t := reflect.TypeOf(*so)
	if t.NumField() != 1 || t.Field(0).Type.Kind() != reflect.Pointer {
		return nil, fmt.Errorf("%w: onnxruntime_go's SessionOptions layout changed", ErrSession)
	}
	p := *(*unsafe.Pointer)(unsafe.Pointer(so))
	if p == nil {
		return nil, fmt.Errorf("%w: session options not created", ErrSession)
	}
	return p, nil
}

// registerCustomOps loads the custom-operator library at ops (gpurun/ortops, built by
// scripts/build-ops.sh) into so, using the ONNX Runtime library at lib (already loaded).
func registerCustomOps(so *ort.SessionOptions, lib, ops string) error {
	cOpts, err := cSessionOptions(so)
	if err != nil {
		return fmt.Errorf("custom ops %s: %w", ops, err)
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
