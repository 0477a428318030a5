package pipeline

import "errors"

var (
	// ErrConfig wraps a setting that cannot work (the message names its flag).
	ErrConfig = errors.New("pipeline: bad configuration")
	// ErrSetup wraps a failure to load the model or set up the streams at start.
	ErrSetup = errors.New("pipeline: set-up failed")
	// ErrShutdown reports work abandoned because the shutdown timeout passed.
	ErrShutdown = errors.New("pipeline: shutdown timeout")
)
