package consumer

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// DeadLetter is one record on a model's dead-letter subject.
type DeadLetter struct {
	ID         string // Seq-Id, "" when the record had none
	Reason     string // one of the Reason* codes
	Error      string // the full error message
	StreamSeq  uint64 // the input's stream sequence (0 for records dead-lettered by the publisher)
	InputIndex int64  // the record's Seq-Index (its position in its input), -1 when it had none
	DLQSeq     uint64 // the copy's own stream sequence
	Data       []byte // the original body, or a prefix of it when BodyBytes > len(Data)
	BodyBytes  int    // the original body's length (Seqembed-Body-Truncated on a cut copy)
	Truncated  bool   // Data is only a prefix of the body (the whole did not fit max_payload)
}

// getMsgTimeout bounds each message ReadDeadLetters reads (within the caller's ctx).
const getMsgTimeout = 2 * time.Minute

// ReadDeadLetters returns up to max dead letters of model's job (JobDLQSubject; "" = outside any
// job) from stream, oldest first, without
// consuming them (direct gets: the DLQ shares the work-queue stream, where reading through a
// consumer would remove them). max <= 0 means all.
func ReadDeadLetters(ctx context.Context, js jetstream.JetStream, stream, model, job string, max int) ([]DeadLetter, error) {
	s, err := js.Stream(ctx, stream)
	if err != nil {
		return nil, fmt.Errorf("reading dead letters of %s: %w", model, err)
	}
	var out []DeadLetter
	for seq := uint64(1); max <= 0 || len(out) < max; {
		// Without a deadline of its own a request gets nats.go's 5 s, too short for a dead letter
		// as large as max_payload (up to 64 MiB, base64 in JSON): a 16 MiB one took longer on a
		// loaded CI machine.
		gctx, cancel := context.WithTimeout(ctx, getMsgTimeout)
		m, err := s.GetMsg(gctx, seq, jetstream.WithGetMsgSubject(JobDLQSubject(model, job)))
		cancel()
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			break
		}
		if err != nil {
			return out, fmt.Errorf("reading dead letters of %s from seq %d: %w", model, seq, err)
		}
		in, _ := strconv.ParseUint(headerGet(m.Header, HeaderStreamSeq), 10, 64)
		d := DeadLetter{ID: headerGet(m.Header, HeaderID), Reason: headerGet(m.Header, HeaderReason),
			Error: headerGet(m.Header, HeaderError), StreamSeq: in, DLQSeq: m.Sequence, Data: m.Data, BodyBytes: len(m.Data)}
		d.InputIndex = -1
		if n, err := strconv.ParseInt(headerGet(m.Header, HeaderIndex), 10, 64); err == nil && n >= 0 {
			d.InputIndex = n
		}
		if n, err := strconv.Atoi(headerGet(m.Header, HeaderBodyTruncated)); err == nil && n > len(m.Data) {
			d.BodyBytes, d.Truncated = n, true
		}
		out = append(out, d)
		seq = m.Sequence + 1
	}
	return out, nil
}
