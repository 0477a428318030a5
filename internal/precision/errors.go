package precision

import "errors"

var (
	// ErrMismatch wraps two sets of embeddings that cannot be compared: an id on one side only,
	// an id twice on one side, or vectors of different dimensions (the message names the id).
	ErrMismatch = errors.New("precision: candidate and reference do not match")
	// ErrGolden wraps a golden file that cannot be read or used (the message names the file and
	// the record).
	ErrGolden = errors.New("precision: bad golden file")
	// ErrEmbed wraps a failure to embed a set: the model does not load, the input cannot be read,
	// a batch fails, or no record can be embedded (the message names the model and the input).
	ErrEmbed = errors.New("precision: embedding failed")
	// ErrThreshold wraps a comparison that missed its thresholds (Report.Check; the message says
	// which, by how much).
	ErrThreshold = errors.New("precision: below threshold")
)
