package gpurun

import "errors"

var (
	// ErrManifest: model.json is missing, unreadable or inconsistent with the model.
	ErrManifest = errors.New("gpurun: bad model manifest")
	// ErrLibrary: the ONNX Runtime shared library could not be found or loaded.
	ErrLibrary = errors.New("gpurun: onnxruntime library")
	// ErrSession: creating the ORT session failed (bad model file, unknown provider).
	ErrSession = errors.New("gpurun: session")
	// ErrRun: one inference run failed.
	ErrRun = errors.New("gpurun: run")
	// ErrShape: the input does not match the declared rows and columns, or the output is too small.
	ErrShape = errors.New("gpurun: shape")
	// ErrClosed: the runner was closed.
	ErrClosed = errors.New("gpurun: runner closed")
	// ErrOption: an option value is invalid.
	ErrOption = errors.New("gpurun: invalid option")
	// ErrDevice: the requested device is not available.
	ErrDevice = errors.New("gpurun: device")
	// ErrAlloc: host memory (malloc, or cudaHostAlloc for pinned memory) could not be allocated.
	ErrAlloc = errors.New("gpurun: host memory allocation")
)
