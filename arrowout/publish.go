package arrowout

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/fnv"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Headers set on every published message, besides jetstream.MsgIDHeader.
const (
	// HeaderRows is the number of rows in the message, in decimal.
	HeaderRows = "Seqembed-Rows"
	// HeaderStreamSeqs is "<min>-<max>": the smallest and largest input
	// stream sequence among the message's rows.
	HeaderStreamSeqs = "Seqembed-Stream-Seqs"
	// HeaderContentType is set to ContentType.
	HeaderContentType = "Content-Type"
)

// ContentType is the media type of an Arrow IPC stream.
const ContentType = "application/vnd.apache.arrow.stream"

// Publisher defaults.
const (
	// DefaultAckTimeout bounds a whole Publish call (see WithAckTimeout).
	DefaultAckTimeout = 30 * time.Second
	// HeaderHeadroom is subtracted from the server's max_payload to get the
	// default part size limit, leaving room for the message headers.
	HeaderHeadroom = 4 << 10
	// fallbackServerMaxPayload is assumed when the connection does not
	// report max_payload (not connected yet): the nats-server default.
	fallbackServerMaxPayload = 1 << 20
)

// PublisherOption configures a Publisher.
type PublisherOption func(*publisherConfig) error

type publisherConfig struct {
	maxPayload int
	ackTimeout time.Duration
	prefix     string
}

// WithMaxPayload sets the largest encoded part, in bytes of Arrow data
// (headers excluded); batches that encode larger are split (see
// Encoder.Split). n must be > 0 and, when the connection reports the
// server's max_payload, at most max_payload - HeaderHeadroom.
// Default: the connection's max_payload (nc.MaxPayload(), read in
// NewPublisher) minus HeaderHeadroom, or 1 MiB - HeaderHeadroom when the
// connection reports none.
func WithMaxPayload(n int) PublisherOption {
	return func(c *publisherConfig) error {
		if n <= 0 {
			return fmt.Errorf("%w: WithMaxPayload(%d): must be > 0", ErrOption, n)
		}
		c.maxPayload = n
		return nil
	}
}

// WithAckTimeout bounds each Publish call, from encoding to the last PubAck;
// past it Publish fails with ErrPublish. It guards against a server that
// never answers, since JetStream async publish futures do not time out by
// themselves (unless the JetStream context was made with
// jetstream.WithPublishAsyncTimeout). d must be > 0. Default:
// DefaultAckTimeout (30s). A ctx deadline that comes earlier wins.
func WithAckTimeout(d time.Duration) PublisherOption {
	return func(c *publisherConfig) error {
		if d <= 0 {
			return fmt.Errorf("%w: WithAckTimeout(%s): must be > 0", ErrOption, d)
		}
		c.ackTimeout = d
		return nil
	}
}

// WithMsgIDPrefix sets the first field of every Nats-Msg-Id. It must be
// non-empty and contain no whitespace or control characters. Default:
// Meta.Model with whitespace and control characters replaced by '_'.
func WithMsgIDPrefix(s string) PublisherOption {
	return func(c *publisherConfig) error {
		if s == "" || sanitizeMsgIDPrefix(s) != s {
			return fmt.Errorf("%w: WithMsgIDPrefix(%q): must be non-empty without whitespace or control characters", ErrOption, s)
		}
		c.prefix = s
		return nil
	}
}

// sanitizeMsgIDPrefix replaces whitespace and control characters by '_'.
func sanitizeMsgIDPrefix(s string) string {
	return strings.Map(func(r rune) rune {
		if r <= ' ' || r == 0x7f {
			return '_'
		}
		return r
	}, s)
}

// Publisher encodes Batches and publishes them to a JetStream subject,
// returning only once every part has its PubAck.
//
// A Publisher is safe for concurrent use: encoding is serialized on an
// internal mutex, while sending and waiting for PubAcks of different
// batches overlap.
type Publisher struct {
	js         jetstream.JetStream
	subject    string
	maxPayload int
	ackTimeout time.Duration
	prefix     string

	mu  sync.Mutex // guards enc
	enc *Encoder

	bufs sync.Pool // *[]byte, encode buffers whose messages are all resolved
}

// PublishResult reports what one Publish call stored.
type PublishResult struct {
	Parts      int // messages sent (on success: the batch's part count)
	Bytes      int // total Arrow bytes of those messages (headers excluded)
	Duplicates int // parts the stream reported as already stored (PubAck.Duplicate)
}

// NewPublisher returns a Publisher that publishes batches described by m to
// subject, which must be bound to a stream (see EnsureStream). Invalid
// arguments fail with ErrOption.
func NewPublisher(js jetstream.JetStream, subject string, m Meta, opts ...PublisherOption) (*Publisher, error) {
	if js == nil {
		return nil, fmt.Errorf("%w: nil JetStream", ErrOption)
	}
	if subject == "" || strings.ContainsAny(subject, " \t\r\n*>") {
		return nil, fmt.Errorf("%w: publish subject %q must be non-empty, without whitespace or wildcards", ErrOption, subject)
	}
	enc, err := NewEncoder(m)
	if err != nil {
		return nil, err
	}
	serverMax := 0
	if nc := js.Conn(); nc != nil {
		serverMax = int(nc.MaxPayload())
	}
	cfg := publisherConfig{ackTimeout: DefaultAckTimeout, prefix: sanitizeMsgIDPrefix(m.Model)}
	for _, o := range opts {
		if err := o(&cfg); err != nil {
			return nil, err
		}
	}
	switch {
	case cfg.maxPayload == 0 && serverMax > 0:
		cfg.maxPayload = serverMax - HeaderHeadroom
	case cfg.maxPayload == 0:
		cfg.maxPayload = fallbackServerMaxPayload - HeaderHeadroom
	case serverMax > 0 && cfg.maxPayload > serverMax-HeaderHeadroom:
		return nil, fmt.Errorf("%w: WithMaxPayload(%d) leaves no header room under the server max_payload %d (max %d)",
			ErrOption, cfg.maxPayload, serverMax, serverMax-HeaderHeadroom)
	}
	if cfg.maxPayload <= 0 {
		return nil, fmt.Errorf("%w: server max_payload %d is below the %d-byte header headroom", ErrOption, serverMax, HeaderHeadroom)
	}
	return &Publisher{
		js:         js,
		subject:    subject,
		maxPayload: cfg.maxPayload,
		ackTimeout: cfg.ackTimeout,
		prefix:     cfg.prefix,
		enc:        enc,
	}, nil
}

// MaxPayload returns the part size limit in effect (see WithMaxPayload).
func (p *Publisher) MaxPayload() int { return p.maxPayload }

// errAckTimeout is the cancel cause of a Publish call that ran out of time.
var errAckTimeout = errors.New("ack timeout")

// Publish encodes b (see Encoder.Split with the MaxPayload limit) and
// publishes the parts in row order, each with headers
//
//	Nats-Msg-Id:          <prefix>:<first seq>-<last seq>:<hash>:<part>/<nparts>
//	Seqembed-Rows:        rows in the part
//	Seqembed-Stream-Seqs: <min seq>-<max seq> of the part's rows
//	Content-Type:         application/vnd.apache.arrow.stream
//
// where first/last seq are b.StreamSeqs[0] and b.StreamSeqs[n-1], hash is
// 16 hex digits of FNV-1a 64 over all of b.StreamSeqs in row order (each as
// 8 little-endian bytes) and part counts from 1. The Msg-Ids depend only on
// the prefix, b.StreamSeqs, the rows' contents and the part limit, so a
// replay of the same batch is dropped by the stream's duplicate window and
// acknowledged as a duplicate, which counts as success.
//
// Parts are sent back to back without waiting (async publish) and then
// awaited. A single connection delivers them in order, but after an outage
// or a retry they may be stored out of order: readers that need row order
// across parts sort by the Msg-Id's part number.
//
// Publish returns nil only when every part is stored. Otherwise the error
// wraps ErrPublish, names the batch, its stream sequence range and the
// failed part, and wraps the cause (for instance nats.ErrDisconnected,
// context.DeadlineExceeded, or the stream's API error); republishing the
// same batch is then safe. The call is bounded by ctx and WithAckTimeout.
// Encoding errors (ErrTooLarge, ErrInvalidBatch) do not wrap ErrPublish:
// nothing was sent and retrying cannot help. An empty batch publishes
// nothing and succeeds. On error the result counts the parts sent so far.
func (p *Publisher) Publish(ctx context.Context, b *Batch) (PublishResult, error) {
	var res PublishResult
	ctx, cancel := context.WithTimeoutCause(ctx, p.ackTimeout,
		fmt.Errorf("%w: no PubAck within %s: %w", errAckTimeout, p.ackTimeout, context.DeadlineExceeded))
	defer cancel()

	bufp, _ := p.bufs.Get().(*[]byte)
	if bufp == nil {
		bufp = new([]byte)
	}
	p.mu.Lock()
	buf, parts, err := p.enc.split((*bufp)[:0], nil, b, p.maxPayload)
	p.mu.Unlock()
	if err != nil {
		return res, err
	}
	if len(parts) == 0 {
		return res, nil
	}

	lo, hi := b.seqRange(0, b.Rows())
	fail := func(i int, cause error) (PublishResult, error) {
		return res, fmt.Errorf("%w: batch %d (stream seqs %d-%d): part %d/%d (rows [%d,%d)): %w",
			ErrPublish, b.Seq, lo, hi, i+1, len(parts), parts[i].Lo, parts[i].Hi, cause)
	}
	ctxErr := func() error {
		if cause := context.Cause(ctx); errors.Is(cause, errAckTimeout) {
			return cause
		}
		return ctx.Err()
	}

	idBase := msgIDBase(p.prefix, b)
	futures := make([]jetstream.PubAckFuture, len(parts))
	for i, part := range parts {
		if ctx.Err() != nil {
			return fail(i, ctxErr())
		}
		minSeq, maxSeq := b.seqRange(part.Lo, part.Hi)
		msg := &nats.Msg{
			Subject: p.subject,
			Data:    part.Data,
			Header: nats.Header{
				jetstream.MsgIDHeader: {idBase + strconv.Itoa(i+1) + "/" + strconv.Itoa(len(parts))},
				HeaderRows:            {strconv.Itoa(part.Hi - part.Lo)},
				HeaderStreamSeqs:      {strconv.FormatUint(minSeq, 10) + "-" + strconv.FormatUint(maxSeq, 10)},
				HeaderContentType:     {ContentType},
			},
		}
		f, err := p.js.PublishMsgAsync(msg)
		if err != nil {
			return fail(i, err)
		}
		futures[i] = f
		res.Parts++
		res.Bytes += len(part.Data)
	}
	for i, f := range futures {
		select {
		case ack := <-f.Ok():
			if ack.Duplicate {
				res.Duplicates++
			}
		case err := <-f.Err():
			return fail(i, err)
		case <-ctx.Done():
			return fail(i, ctxErr())
		}
	}
	// Every future is resolved, so nats.go will not resend (and read) the
	// part data any more: the buffer can be reused.
	*bufp = buf[:0]
	p.bufs.Put(bufp)
	return res, nil
}

// msgIDBase returns "<prefix>:<first seq>-<last seq>:<fnv1a-64 hex>:" for b,
// which must have at least one row.
func msgIDBase(prefix string, b *Batch) string {
	h := fnv.New64a()
	var le [8]byte
	for _, s := range b.StreamSeqs {
		binary.LittleEndian.PutUint64(le[:], s)
		h.Write(le[:])
	}
	return fmt.Sprintf("%s:%d-%d:%016x:", prefix, b.StreamSeqs[0], b.StreamSeqs[len(b.StreamSeqs)-1], h.Sum64())
}
