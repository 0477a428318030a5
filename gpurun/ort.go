package gpurun

/*
#cgo CFLAGS: -I${SRCDIR}/../third_party/onnxruntime/include
#cgo LDFLAGS: -ldl
#cgo noescape se_run
#cgo nocallback se_run
#include <stdlib.h>
#include "se_ort.h"
*/
import "C"

import (
	"context"
	"fmt"
	"maps"
	"os"
	"runtime"
	"slices"
	"sync"
	"unsafe"
)

// The Go side of se_ort.c, gpurun's one binding to ONNX Runtime's C API: the environment,
// sessions, run options and runs from host memory. graph.go adds the IoBinding runs of CUDA-graph
// sessions.

var (
	envMu   sync.Mutex
	envRefs int
)

// acquireEnv takes a reference to ORT's process-wide environment, loading the library at lib and
// creating the environment on first use. The first library loaded stays for the life of the
// process: a later lib is not loaded.
func acquireEnv(lib string) error {
	envMu.Lock()
	defer envMu.Unlock()
	if envRefs == 0 {
		if _, err := os.Stat(lib); err != nil {
			return fmt.Errorf("%w: %v (run scripts/fetch-ort.sh or set ONNXRUNTIME_SHARED_LIBRARY_PATH)", ErrLibrary, err)
		}
		cs := C.CString(lib)
		defer C.free(unsafe.Pointer(cs))
		if err := cErr(C.se_env_open(cs)); err != nil {
			return fmt.Errorf("%w: loading %s: %v", ErrLibrary, lib, err)
		}
	}
	envRefs++
	return nil
}

// releaseEnv drops a reference from acquireEnv; the last one releases the environment.
func releaseEnv() {
	envMu.Lock()
	defer envMu.Unlock()
	if envRefs--; envRefs == 0 {
		C.se_env_close()
	}
}

// cErr turns a message from se_ort.c or se_cuda.c into an error and frees it; nil for NULL.
func cErr(msg *C.char) error {
	if msg == nil {
		return nil
	}
	defer C.free(unsafe.Pointer(msg))
	return fmt.Errorf("%s", C.GoString(msg))
}

// cStrings holds C copies of Go strings for the length of one C call; free releases them.
type cStrings []unsafe.Pointer

func (cs *cStrings) str(s string) *C.char {
	p := C.CString(s)
	*cs = append(*cs, unsafe.Pointer(p))
	return p
}

// array is a C array of C copies of ss (nil for none).
func (cs *cStrings) array(ss []string) **C.char {
	if len(ss) == 0 {
		return nil
	}
	arr := (**C.char)(C.malloc(C.size_t(len(ss)) * C.size_t(unsafe.Sizeof((*C.char)(nil)))))
	*cs = append(*cs, unsafe.Pointer(arr))
	for i, s := range ss {
		unsafe.Slice(arr, len(ss))[i] = cs.str(s)
	}
	return arr
}

func (cs cStrings) free() {
	for _, p := range cs {
		C.free(p)
	}
}

// sessionConfig describes a session for openSession.
type sessionConfig struct {
	model           string
	threads         int               // intra-op threads; 0: one per core
	device          Device            // where the session runs
	cuda            map[string]string // CUDA execution provider options, device_id included (CUDA only)
	customOps       string            // custom-op library to register; "" for none
	inputs, outputs []string          // names, in the order runs pass tensors
	stream          unsafe.Pointer    // CUDA-graph sessions: adopted, also on error (see se_sess_open)
	outStream       unsafe.Pointer    // CUDA-graph sessions with copy overlap: likewise; nil: none
	note            string            // added to error messages after the device, e.g. " with CUDA graphs"
}

// session is one ORT session, made by se_ort.c. Runs may come from any number of goroutines at
// once (ORT runs them concurrently), except on CUDA-graph sessions, which graph.go drives from one
// thread.
type session struct{ c *C.se_sess }

// openSession creates cfg's session. Errors wrap ErrSession, and also ErrDevice when the CUDA
// execution provider could not be set up.
func openSession(cfg sessionConfig) (*session, error) {
	var cs cStrings
	defer cs.free()
	c := C.se_sess_cfg{model: cs.str(cfg.model), threads: C.int(cfg.threads), cuda_dev: -1,
		stream: cfg.stream, out_stream: cfg.outStream}
	if cfg.device.Kind == "cuda" {
		keys := slices.Sorted(maps.Keys(cfg.cuda))
		vals := make([]string, len(keys))
		for i, k := range keys {
			vals[i] = cfg.cuda[k]
		}
		c.cuda_dev = C.int(cfg.device.Index)
		c.cuda_keys, c.cuda_vals, c.n_cuda = cs.array(keys), cs.array(vals), C.int(len(keys))
	}
	if cfg.customOps != "" {
		c.custom_ops = cs.str(cfg.customOps)
	}
	c.inputs, c.n_inputs = cs.array(cfg.inputs), C.int(len(cfg.inputs))
	c.outputs, c.n_outputs = cs.array(cfg.outputs), C.int(len(cfg.outputs))
	var device C.int
	s := &session{}
	if err := cErr(C.se_sess_open(&c, &device, &s.c)); err != nil {
		C.se_sess_close(s.c)
		if device != 0 {
			return nil, fmt.Errorf("%w: loading %s on %s%s: %w: %v", ErrSession, cfg.model, cfg.device, cfg.note, ErrDevice, err)
		}
		return nil, fmt.Errorf("%w: loading %s on %s%s: %v", ErrSession, cfg.model, cfg.device, cfg.note, err)
	}
	return s, nil
}

func (s *session) close() {
	C.se_sess_close(s.c)
	s.c = nil
}

// tensorOf describes data (host memory: C memory, or Go memory, which runs pin) as a run input
// or output of the given shape (at most 4 dimensions).
// uint16 data is float16 (IEEE half bits); uint8 data is uint8 (the FP8 ops' E4M3 bytes).
func tensorOf[T int64 | int32 | float32 | uint16 | uint8](data []T, shape ...int64) C.se_tensor {
	t := C.se_tensor{data: unsafe.Pointer(unsafe.SliceData(data)), ndim: C.int32_t(len(shape))}
	var zero T
	switch any(zero).(type) {
	case int64:
		t._type = C.ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64
	case int32:
		t._type = C.ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32
	case float32:
		t._type = C.ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT
	case uint16:
		t._type = C.ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16
	case uint8:
		t._type = C.ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT8
	}
	for i, d := range shape {
		t.shape[i] = C.int64_t(d)
	}
	return t
}

// tensors collects tensorOf results for a run (for callers, such as tests, that cannot name
// C.se_tensor).
func tensors(ts ...C.se_tensor) []C.se_tensor { return ts }

// run runs s on in and out (the session's input and output names, in order). ctx's end
// terminates the run: ORT stops it at its next kernel boundary and run returns ORT's error once
// ORT has returned. Either way ORT is done with every buffer when run returns.
func (s *session) run(ctx context.Context, in, out []C.se_tensor) error {
	if ctx.Done() == nil {
		return s.runWith(nil, in, out)
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	ro, err := newRunOptions("")
	if err != nil {
		return err
	}
	fired := make(chan struct{})
	stop := context.AfterFunc(ctx, func() {
		C.se_ro_terminate(ro)
		close(fired)
	})
	err = s.runWith(ro, in, out)
	if !stop() {
		<-fired // the terminate call must be over before ro is freed
	}
	C.se_ro_free(ro)
	return err
}

// tokenTensors are the tensors of a seqembed model's run: in's ids and mask [Rows, Cols] in,
// out [Rows, len(out)/Rows] out.
func tokenTensors(in Input, out []float32) (ins [2]C.se_tensor, outs [1]C.se_tensor) {
	n, rows, cols := in.Rows*in.Cols, int64(in.Rows), int64(in.Cols)
	ins = [2]C.se_tensor{tensorOf(in.IDs[:n], rows, cols), tensorOf(in.Mask[:n], rows, cols)}
	if out != nil {
		outs = [1]C.se_tensor{tensorOf(out, rows, int64(len(out)/in.Rows))}
	}
	return ins, outs
}

// runTokens is run on tokenTensors(in, out).
func (s *session) runTokens(ctx context.Context, in Input, out []float32) error {
	ins, outs := tokenTensors(in, out)
	return s.run(ctx, ins[:], outs[:])
}

// outBuf is one output of a multi-output run: float32 or float16 (uint16 bits) host memory of
// the given shape.
type outBuf struct {
	f32   []float32
	f16   []uint16
	shape []int64
}

// runTokensOutputs runs s on in's ids and mask into outs (the session's outputs, in order).
func (s *session) runTokensOutputs(ctx context.Context, in Input, outs []outBuf) error {
	ins, _ := tokenTensors(in, nil)
	ts := make([]C.se_tensor, len(outs))
	for i, o := range outs {
		if o.f16 != nil {
			ts[i] = tensorOf(o.f16, o.shape...)
		} else {
			ts[i] = tensorOf(o.f32, o.shape...)
		}
	}
	return s.run(ctx, ins[:], ts)
}

// runWith runs s with run options ro (nil: none), pinning the buffers that are Go memory for the
// length of the call.
func (s *session) runWith(ro *C.OrtRunOptions, in, out []C.se_tensor) error {
	if len(in) == 0 || len(out) == 0 {
		return fmt.Errorf("a run needs inputs and outputs, got %d and %d", len(in), len(out))
	}
	var pin runtime.Pinner
	defer pin.Unpin()
	for _, ts := range [][]C.se_tensor{in, out} {
		for i := range ts {
			pin.Pin(ts[i].data)
		}
	}
	return cErr(C.se_run(s.c, ro, &in[0], C.int(len(in)), &out[0], C.int(len(out))))
}

// newRunOptions creates run options with the run config entry gpu_graph_id = graphID, or none
// for "". The caller frees them with C.se_ro_free.
func newRunOptions(graphID string) (*C.OrtRunOptions, error) {
	var id *C.char
	if graphID != "" {
		id = C.CString(graphID)
		defer C.free(unsafe.Pointer(id))
	}
	var ro *C.OrtRunOptions
	if err := cErr(C.se_ro_new(id, &ro)); err != nil {
		return nil, err
	}
	return ro, nil
}
