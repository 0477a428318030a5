package consumer

import (
	"errors"
	"fmt"
	"slices"

	"github.com/nats-io/nats.go/jetstream"
)

var (
	// ErrMissingID: the record has no Seq-Id header (ids are required, never synthesised).
	ErrMissingID = errors.New("missing Seq-Id header")
	// ErrBadID: the Seq-Id is not a usable id (whitespace, control bytes, invalid UTF-8, too long).
	ErrBadID = errors.New("bad Seq-Id")
	// ErrBadHeader: an optional record header (Seq-Index, Seqembed-Stop-Stripped) has a value
	// that cannot be read, or several values that disagree.
	ErrBadHeader = errors.New("bad record header")
	// ErrEmpty: the body holds no residues.
	ErrEmpty = errors.New("empty sequence")
	// ErrTooLarge: the body is over the record size limit.
	ErrTooLarge = errors.New("record over the size limit")
	// ErrTooLong: the sequence is over the model's max length and the policy is reject.
	ErrTooLong = errors.New("sequence over the max length")
	// ErrInvalid: the sequence has characters outside the model's alphabet.
	ErrInvalid = errors.New("invalid residues")
	// ErrDeadLetter: copying a bad record to the dead-letter subject failed (it was nak'd instead).
	ErrDeadLetter = errors.New("consumer: dead-letter publish failed")
	// ErrCopyUnfit: no dead-letter copy of a record can be stored, even with its body and headers
	// cut (a max_payload or max_msg_size of a few hundred bytes, or refusals at every size).
	ErrCopyUnfit = errors.New("consumer: dead-letter copy does not fit")
	// ErrDropped: a record was terminated (or deleted from the work queue) without a dead-letter
	// copy, because none could be stored (ErrCopyUnfit); it is counted by Observer.Dropped and
	// its content is only in the log.
	ErrDropped = errors.New("consumer: record dropped without a dead-letter copy")
	// ErrPull: a pull from the durable consumer failed (it is retried with backoff).
	ErrPull = errors.New("consumer: pull")
	// ErrAdvisory: a max-deliveries advisory could not be acted on (bad advisory, or the record
	// could not be read back from the stream). The record, if any, stays in the stream.
	ErrAdvisory = errors.New("consumer: max-deliveries advisory")
	// ErrDelete: a record was copied to the dead-letter subject but deleting the original from the
	// work queue failed (it stays; a retry is harmless since the copy is deduplicated).
	ErrDelete = errors.New("consumer: delete of dead-lettered original")
	// ErrOption: an option value is invalid.
	ErrOption = errors.New("consumer: invalid option")
	// ErrSetup: creating or updating the stream or the durable consumer failed.
	ErrSetup = errors.New("consumer: setup")
	// ErrAck: acknowledging messages failed.
	ErrAck = errors.New("consumer: ack")
)

// Reason codes carried in the Seqembed-Reason header of dead-lettered records and in metrics.
// Every one is listed by DeadLetterReasons (a test checks it).
const (
	ReasonMissingID     = "missing_id"
	ReasonBadID         = "bad_id"
	ReasonBadHeader     = "bad_header"
	ReasonEmpty         = "empty"
	ReasonTooLarge      = "too_large"
	ReasonTooLong       = "too_long"
	ReasonInvalid       = "invalid_residue"
	ReasonMaxDeliveries = "max_deliveries"
	ReasonModelError    = "model_error"
	// ReasonOutputTooLarge: the record's output row cannot be stored: it encodes larger than a
	// message may be (max_payload less the header room) even cut into row slices, or a chunked
	// record's per-residue states would exceed pipeline.MaxChunkedRowBytes; the worker stores no
	// part of it and does not retry it.
	ReasonOutputTooLarge = "output_too_large"
)

// reasons lists every Reason* constant, in declaration order.
var reasons = []string{ReasonMissingID, ReasonBadID, ReasonBadHeader, ReasonEmpty, ReasonTooLarge, ReasonTooLong,
	ReasonInvalid, ReasonMaxDeliveries, ReasonModelError, ReasonOutputTooLarge}

// DeadLetterReasons returns every reason code a dead-lettered record can carry (the Reason*
// constants), in declaration order, as a new slice: the label values to pre-register on a
// dead-letter counter (telemetry.Labels.DeadLetterReasons).
func DeadLetterReasons() []string { return slices.Clone(reasons) }

// RejectError says why a record cannot be embedded. Reason is one of the Reason* codes.
type RejectError struct {
	Reason    string
	ID        string // the record's id, when it has one
	StreamSeq uint64
	Err       error
}

func (e *RejectError) Error() string {
	id := e.ID
	if id == "" {
		id = "(no id)"
	}
	return fmt.Sprintf("record %s at stream seq %d rejected (%s): %v", id, e.StreamSeq, e.Reason, e.Err)
}

func (e *RejectError) Unwrap() error { return e.Err }

// JetStream API error codes of a consumer replica count the stream refuses (nats-server's
// JSConsumerReplicasExceedsStream, JSConsumerReplicasShouldMatchStream; ReplicasRefused).
const (
	errCodeReplicasExceedStream jetstream.ErrorCode = 10126
	errCodeReplicasMatchStream  jetstream.ErrorCode = 10134
)
