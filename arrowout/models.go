package arrowout

import (
	"bytes"
	"context"
	"fmt"
	"slices"
	"strings"

	"github.com/apache/arrow-go/v18/arrow/ipc"
	"github.com/apache/arrow-go/v18/arrow/memory"
	"github.com/nats-io/nats.go/jetstream"
)

// ModelInfo is one subject of an output stream: one model's embeddings.
type ModelInfo struct {
	Subject  string // embeddings.<model>
	Messages uint64 // messages stored on it now
	Meta     Meta   // its first message's
	Version  int    // its first message's layout version (FormatVersion)
}

// StreamModels lists the subjects of stream that hold messages (those matching subject, or every
// subject when it is empty), sorted, each with its first message's Meta, so that a reader can
// tell before reading anything which models the stream holds. A first message that is no seqembed
// Arrow IPC stream is an error wrapping ErrDecode that names the subject.
func StreamModels(ctx context.Context, js jetstream.JetStream, stream, subject string) ([]ModelInfo, error) {
	s, err := js.Stream(ctx, stream)
	if err != nil {
		return nil, fmt.Errorf("arrowout: stream %s: %w", stream, err)
	}
	filter := subject
	if filter == "" {
		filter = ">"
	}
	info, err := s.Info(ctx, jetstream.WithSubjectFilter(filter))
	if err != nil {
		return nil, fmt.Errorf("arrowout: stream %s: %w", stream, err)
	}
	var out []ModelInfo
	for subj, n := range info.State.Subjects {
		if n > 0 {
			out = append(out, ModelInfo{Subject: subj, Messages: n})
		}
	}
	slices.SortFunc(out, func(a, b ModelInfo) int { return strings.Compare(a.Subject, b.Subject) })
	for i := range out {
		m, err := s.GetMsg(ctx, 1, jetstream.WithGetMsgSubject(out[i].Subject))
		if err != nil {
			return nil, fmt.Errorf("arrowout: stream %s subject %s: first message: %w", stream, out[i].Subject, err)
		}
		if out[i].Meta, out[i].Version, err = messageMeta(m.Data); err != nil {
			return nil, fmt.Errorf("stream %s subject %s, message at stream seq %d: %w", stream, out[i].Subject, m.Sequence, err)
		}
	}
	return out, nil
}

// messageMeta reads only the schema of the Arrow IPC stream data: its Meta and layout version.
// Errors wrap ErrDecode.
func messageMeta(data []byte) (Meta, int, error) {
	limit := int64(max(len(data), 1))
	mr := ipc.NewMessageReader(bytes.NewReader(data), ipc.WithMetadataSizeLimit(limit), ipc.WithBodySizeLimit(limit))
	r, err := ipc.NewReaderFromMessageReader(mr, ipc.WithAllocator(memory.DefaultAllocator))
	if err != nil {
		return Meta{}, 0, fmt.Errorf("%w: %w", ErrDecode, err)
	}
	defer r.Release()
	return metaFromSchema(r.Schema())
}
