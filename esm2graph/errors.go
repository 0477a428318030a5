package esm2graph

import "errors"

var (
	// ErrCheckpoint: the checkpoint cannot be read, or its tensors are missing or have the wrong
	// shapes for its configuration. The message names the file and the tensor.
	ErrCheckpoint = errors.New("esm2graph: bad checkpoint")
	// ErrUnsupported: a readable checkpoint of a model the fused graph does not implement (not
	// ESM-2: learned positions, an embedding LayerNorm, a non-erf activation, another alphabet).
	ErrUnsupported = errors.New("esm2graph: unsupported model")
	// ErrOption: an Options value is invalid, or the options contradict each other.
	ErrOption = errors.New("esm2graph: invalid option")
	// ErrWrite: writing the model files failed.
	ErrWrite = errors.New("esm2graph: writing the model")
)
