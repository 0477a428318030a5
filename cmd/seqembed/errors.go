package main

import "errors"

// errNoCustomOps: model build was asked for a graph that only seqembed's custom-op library runs
// (--fused-gelu, --fp16-linear, --cudnn-attention, --precision fp8) and the library is neither in
// the output directory nor at $SEQEMBED_CUSTOM_OPS.
var errNoCustomOps = errors.New("no custom-op library")
