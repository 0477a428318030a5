package consumer

import (
	"fmt"
	"unicode"
	"unicode/utf8"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Header names of the record format.
const (
	// HeaderID carries the record's id (required).
	HeaderID = "Seq-Id"
	// HeaderError carries a dead-lettered record's error message.
	HeaderError = "Seqembed-Error"
	// HeaderReason carries a dead-lettered record's reason code.
	HeaderReason = "Seqembed-Reason"
	// HeaderStreamSeq carries a dead-lettered record's input stream sequence.
	HeaderStreamSeq = "Seqembed-Stream-Seq"
	// MaxIDBytes is the longest id accepted.
	MaxIDBytes = 512
)

// Overlength says what happens to a sequence longer than the model's max length.
type Overlength int

const (
	// Truncate keeps the first max-length residues and flags the record truncated (fair-esm's way).
	Truncate Overlength = iota
	// Reject dead-letters the record with reason too_long.
	Reject
)

// ParseOverlength reads "truncate" or "reject".
func ParseOverlength(s string) (Overlength, error) {
	switch s {
	case "truncate":
		return Truncate, nil
	case "reject":
		return Reject, nil
	}
	return 0, fmt.Errorf("%w: overlength %q: want truncate or reject", ErrOption, s)
}

// Record is one valid input record. Residues has no whitespace and at most the max length.
type Record struct {
	ID        string
	Residues  []byte
	Length    int // residues before truncation
	Truncated bool
	StreamSeq uint64
	Delivered uint64        // delivery count (1 on first delivery)
	Msg       jetstream.Msg // ack/nak it through Ack/Nak once its output is stored (or not)
}

// Policy is how records are checked. Validate checks residues against the model's alphabet.
type Policy struct {
	MaxRecordBytes int
	MaxResidues    int
	Overlength     Overlength
	Validate       func(residues []byte) error
}

// Decode turns one message's headers and body into a Record, or a *RejectError saying why not.
// Whitespace (space, tab, CR, LF, VT, FF) anywhere in the body is ignored. The returned Residues
// is a fresh slice (the body is not retained).
func Decode(h nats.Header, body []byte, seq uint64, p Policy) (Record, error) {
	rej := func(reason string, err error, id string) (Record, error) {
		return Record{}, &RejectError{Reason: reason, ID: id, StreamSeq: seq, Err: err}
	}
	id := h.Get(HeaderID)
	if id == "" {
		return rej(ReasonMissingID, fmt.Errorf("%w: ids are required and never synthesised", ErrMissingID), "")
	}
	if err := checkID(id); err != nil {
		return rej(ReasonBadID, err, "")
	}
	if p.MaxRecordBytes > 0 && len(body) > p.MaxRecordBytes {
		return rej(ReasonTooLarge, fmt.Errorf("%w: %d bytes > %d", ErrTooLarge, len(body), p.MaxRecordBytes), id)
	}
	res := make([]byte, 0, len(body))
	for _, c := range body {
		switch c {
		case ' ', '\t', '\r', '\n', '\v', '\f':
		default:
			res = append(res, c)
		}
	}
	if len(res) == 0 {
		return rej(ReasonEmpty, ErrEmpty, id)
	}
	if p.Validate != nil {
		if err := p.Validate(res); err != nil {
			return rej(ReasonInvalid, fmt.Errorf("%w: %w", ErrInvalid, err), id)
		}
	}
	r := Record{ID: id, Residues: res, Length: len(res), StreamSeq: seq}
	if p.MaxResidues > 0 && len(res) > p.MaxResidues {
		if p.Overlength == Reject {
			return rej(ReasonTooLong, fmt.Errorf("%w: %d residues > %d (overlength policy reject)", ErrTooLong, len(res), p.MaxResidues), id)
		}
		r.Residues, r.Truncated = res[:p.MaxResidues:p.MaxResidues], true
	}
	return r, nil
}

func checkID(id string) error {
	if len(id) > MaxIDBytes {
		return fmt.Errorf("%w: %d bytes > %d", ErrBadID, len(id), MaxIDBytes)
	}
	if !utf8.ValidString(id) {
		return fmt.Errorf("%w: %q is not valid UTF-8", ErrBadID, id)
	}
	for _, r := range id {
		if unicode.IsSpace(r) || unicode.IsControl(r) {
			return fmt.Errorf("%w: %q contains whitespace or control characters", ErrBadID, id)
		}
	}
	return nil
}
