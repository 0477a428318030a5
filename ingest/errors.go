package ingest

import "errors"

var (
	// ErrOption reports invalid Publish options.
	ErrOption = errors.New("ingest: invalid option")
	// ErrNoStream: no JetStream stream captures the records' subject (no worker or
	// `seqembed streams` made one yet); nothing was published.
	ErrNoStream = errors.New("ingest: no input stream")
)
