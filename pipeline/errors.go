package pipeline

import "errors"

var (
	// ErrConfig wraps a setting that cannot work (the message names its flag).
	ErrConfig = errors.New("pipeline: bad configuration")
	// ErrSetup wraps a failure to load the model or set up the streams at start.
	ErrSetup = errors.New("pipeline: set-up failed")
	// ErrDevice: --device names a GPU this machine cannot use (no driver, no CUDA provider, a
	// CUDA library missing); the message says what is missing, in one sentence.
	ErrDevice = errors.New("pipeline: device unusable")
	// ErrShutdown reports work abandoned because the shutdown timeout passed.
	ErrShutdown = errors.New("pipeline: shutdown timeout")
)
