package arrowout

import (
	"errors"
	"fmt"
)

// Sentinel errors. Every error returned by this package that falls into one
// of these classes wraps the matching value (test with errors.Is) together
// with context: the batch number, the input stream sequences, the row or the
// part concerned.
var (
	// ErrOption reports an invalid constructor argument or option value.
	ErrOption = errors.New("arrowout: invalid option")

	// ErrInvalidBatch reports a Batch whose slices disagree in length with
	// its row count, or a row range outside the batch.
	ErrInvalidBatch = errors.New("arrowout: invalid batch")

	// ErrTooLarge reports a single row whose encoded IPC stream is larger
	// than the size limit, so no split can make it fit.
	ErrTooLarge = errors.New("arrowout: row too large")

	// ErrPublish reports that at least one part of a batch was not stored by
	// JetStream (publish error, negative PubAck, timeout, disconnect or
	// cancelled context). Republishing the same batch is safe: the parts
	// carry the same Nats-Msg-Id and the stream drops those already stored.
	ErrPublish = errors.New("arrowout: publish failed")

	// ErrDecode reports bytes that are not a seqembed Arrow IPC stream.
	ErrDecode = errors.New("arrowout: decode failed")

	// ErrSchemaMismatch reports an IPC message whose Meta differs from the
	// one a ParquetSink was fixed to.
	ErrSchemaMismatch = errors.New("arrowout: schema mismatch")

	// ErrIncomplete reports rows a sink could not write whole: some of their
	// row slices (HeaderResidues) never arrived.
	ErrIncomplete = errors.New("arrowout: incomplete rows")

	// ErrFormat reports an output file format that is unknown: a --format
	// other than parquet or arrow, or without one a file suffix that names
	// neither (FileFormat).
	ErrFormat = errors.New("output format")
)

// TooLargeError is the ErrTooLarge of Encoder.Split and Publish: row Row of batch Batch (id ID,
// input stream sequence StreamSeq) encodes alone to Size bytes, more than the Limit a part may
// have. It wraps ErrTooLarge. No split can make it fit: the row has to leave the batch (the
// worker dead-letters its record) or the limit has to grow.
type TooLargeError struct {
	Batch       uint64
	Row         int
	ID          string
	StreamSeq   uint64
	Size, Limit int
}

func (e *TooLargeError) Error() string {
	return fmt.Sprintf("%v: batch %d: row %d (id %q, stream seq %d) encodes to %d bytes, limit is %d",
		ErrTooLarge, e.Batch, e.Row, e.ID, e.StreamSeq, e.Size, e.Limit)
}

func (e *TooLargeError) Unwrap() error { return ErrTooLarge }
