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
	"github.com/seqembed/seqembed/internal/natsconn"
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
	// HeaderResidues marks a row slice (see Part): "<lo>-<hi>/<length>", the message's one row
	// holds residues [lo,hi) of the row's length in its per-residue columns. A row's slices are
	// the messages with its stream_seq and the same Nats-Msg-Id up to the part number; they cover
	// 0..length once, in part order. Messages of whole rows have no such header.
	HeaderResidues = "Seqembed-Residues"
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
)

// PublisherOption configures a Publisher.
type PublisherOption func(*publisherConfig) error

type publisherConfig struct {
	maxPayload int
	ackTimeout time.Duration
	prefix     string
}

// WithMaxPayload caps the largest encoded part, in bytes of Arrow data
// (headers excluded); batches that encode larger are split (see
// Encoder.Split). n must be > 0 and, when the connection reports the
// server's max_payload, at most max_payload - HeaderHeadroom at
// construction. The cap never raises the limit: each Publish uses the
// smaller of n and the connection's max_payload at that moment minus
// HeaderHeadroom, so a server restarted with a smaller max_payload is
// followed. Default: no cap (the connection's current max_payload minus
// HeaderHeadroom, or 1 MiB - HeaderHeadroom while the connection reports
// none).
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
	maxPayload int // WithMaxPayload's cap; 0: none
	ackTimeout time.Duration
	prefix     string
	serverMax  func() int // natsconn.MaxStored now: max_payload, at most the file store's 32 MiB (tests replace it)

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
	if serverMax > 0 && cfg.maxPayload > serverMax-HeaderHeadroom {
		return nil, fmt.Errorf("%w: WithMaxPayload(%d) leaves no header room under the server max_payload %d (max %d)",
			ErrOption, cfg.maxPayload, serverMax, serverMax-HeaderHeadroom)
	}
	if serverMax > 0 && serverMax <= HeaderHeadroom {
		return nil, fmt.Errorf("%w: server max_payload %d is below the %d-byte header headroom", ErrOption, serverMax, HeaderHeadroom)
	}
	return &Publisher{
		js:         js,
		subject:    subject,
		maxPayload: cfg.maxPayload,
		ackTimeout: cfg.ackTimeout,
		prefix:     cfg.prefix,
		serverMax:  func() int { return natsconn.MaxStored(js.Conn()) },
		enc:        enc,
	}, nil
}

// MaxPayload returns the part size limit in effect now (see WithMaxPayload):
// the connection's current max_payload, at most natsconn.FileStoreMaxMsg
// (32 MiB: JetStream's file store keeps no larger message), minus
// HeaderHeadroom, capped by WithMaxPayload; 0 when the server's max_payload
// leaves no room.
func (p *Publisher) MaxPayload() int { return max(p.partLimit(), 0) }

// partLimit is MaxPayload, possibly <= 0.
func (p *Publisher) partLimit() int {
	limit := p.serverMax() - HeaderHeadroom
	if p.maxPayload > 0 {
		limit = min(limit, p.maxPayload)
	}
	return limit
}

// splitAttempts bounds how many times one Publish splits a batch again after
// a part was refused as larger than the connection's max_payload.
const splitAttempts = 4

// errAckTimeout is the cancel cause of a Publish call that ran out of time.
var errAckTimeout = errors.New("ack timeout")

// Publish encodes b (see Encoder.Split with the MaxPayload limit, read at
// the call) and publishes the parts in row order, each with headers
//
//	Nats-Msg-Id:          <prefix>:<first seq>-<last seq>:<hash>:<part>/<nparts>
//	Seqembed-Rows:        rows in the part
//	Seqembed-Stream-Seqs: <min seq>-<max seq> of the part's rows
//	Content-Type:         application/vnd.apache.arrow.stream
//	Seqembed-Residues:    <lo>-<hi>/<length> (row slices only, see HeaderResidues)
//
// where first/last seq are b.StreamSeqs[0] and b.StreamSeqs[n-1], hash is
// 16 hex digits of FNV-1a 64 over all of b.StreamSeqs in row order (each as
// 8 little-endian bytes) and part counts from 1. The Msg-Ids depend only on
// the prefix, b.StreamSeqs, the rows' contents and the part limit, so a
// replay of the same batch under the same limit is dropped by the stream's
// duplicate window and acknowledged as a duplicate, which counts as success.
//
// The limit follows the connection: after a reconnect to a server with a
// smaller max_payload the next Publish splits into more parts. Parts are
// published only while the connection is up (Publish waits for a reconnect,
// within its time bound): a part buffered for the reconnect could reach a
// server with a smaller max_payload, which closes the connection for good.
// If a part is still refused as too large (natsconn.TooLarge: the limit
// shrank between the split and the send, or the stream's max_msg_size is
// lower), the batch is split again under the
// new limit and published again, up to 4 splits in one call; rows of parts
// already sent under the old split may then be stored twice, under other
// Msg-Ids (readers deduplicate by id and seq_sha256, as they do for
// redeliveries).
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
	return p.PublishTo(ctx, p.subject, b)
}

// PublishTo is Publish to subject (which must be bound to a stream) instead of the Publisher's
// own: the pipeline publishes each job's rows to that job's Subject.
func (p *Publisher) PublishTo(ctx context.Context, subject string, b *Batch) (PublishResult, error) {
	var res PublishResult
	if subject == "" || strings.ContainsAny(subject, " \t\r\n*>") {
		return res, fmt.Errorf("%w: publish subject %q must be non-empty, without whitespace or wildcards", ErrOption, subject)
	}
	if b.Rows() == 0 {
		return res, b.validate(p.enc.dim)
	}
	ctx, cancel := context.WithTimeoutCause(ctx, p.ackTimeout,
		fmt.Errorf("%w: no PubAck within %s: %w", errAckTimeout, p.ackTimeout, context.DeadlineExceeded))
	defer cancel()
	ctxErr := func() error {
		if cause := context.Cause(ctx); errors.Is(cause, errAckTimeout) {
			return cause
		}
		return ctx.Err()
	}
	if err := b.validate(p.enc.dim); err != nil {
		return res, err
	}
	lo, hi := b.seqRange(0, b.Rows())
	limit := 0
	for split := 1; ; split++ {
		if err := natsconn.AwaitConnected(ctx, p.js.Conn()); err != nil {
			if ctx.Err() != nil {
				err = ctxErr()
			}
			return res, fmt.Errorf("%w: batch %d (stream seqs %d-%d): waiting for the NATS connection: %w", ErrPublish, b.Seq, lo, hi, err)
		}
		next := p.partLimit()
		if limit > 0 && next >= limit {
			// Refused under a limit the connection still reports: go below it.
			next = limit / 2
		}
		limit = next
		if limit <= 0 {
			return res, fmt.Errorf("%w: batch %d (stream seqs %d-%d): server max_payload %d leaves no room beyond the %d-byte header headroom",
				ErrPublish, b.Seq, lo, hi, p.serverMax(), HeaderHeadroom)
		}
		r, refused, err := p.publishSplit(ctx, ctxErr, subject, b, limit)
		res.Parts += r.Parts
		res.Bytes += r.Bytes
		res.Duplicates += r.Duplicates
		if !refused || split == splitAttempts {
			if err == nil {
				// The last split's parts are the batch's parts.
				res = r
			}
			return res, err
		}
	}
}

// publishSplit splits b under limit and publishes the parts (see Publish).
// refused reports a part refused for its size, before or while sending
// (natsconn.TooLarge: the connection's max_payload, the stream's max_msg_size
// or the file store's record limit).
func (p *Publisher) publishSplit(ctx context.Context, ctxErr func() error, subject string, b *Batch, limit int) (res PublishResult, refused bool, err error) {
	bufp, _ := p.bufs.Get().(*[]byte)
	if bufp == nil {
		bufp = new([]byte)
	}
	p.mu.Lock()
	buf, parts, err := p.enc.split((*bufp)[:0], nil, b, limit)
	p.mu.Unlock()
	if err != nil {
		return res, false, err
	}

	lo, hi := b.seqRange(0, b.Rows())
	fail := func(i int, cause error) (PublishResult, bool, error) {
		return res, natsconn.TooLarge(cause), fmt.Errorf("%w: batch %d (stream seqs %d-%d): part %d/%d (rows [%d,%d)) of %d bytes under a %d-byte limit: %w",
			ErrPublish, b.Seq, lo, hi, i+1, len(parts), parts[i].Lo, parts[i].Hi, len(parts[i].Data), limit, cause)
	}

	idBase := msgIDBase(p.prefix, b)
	msgs := make([]*nats.Msg, len(parts))
	serverMax := p.serverMax()
	for i, part := range parts {
		minSeq, maxSeq := b.seqRange(part.Lo, part.Hi)
		msgs[i] = &nats.Msg{
			Subject: subject,
			Data:    part.Data,
			Header: nats.Header{
				jetstream.MsgIDHeader: {idBase + strconv.Itoa(i+1) + "/" + strconv.Itoa(len(parts))},
				HeaderRows:            {strconv.Itoa(part.Hi - part.Lo)},
				HeaderStreamSeqs:      {strconv.FormatUint(minSeq, 10) + "-" + strconv.FormatUint(maxSeq, 10)},
				HeaderContentType:     {ContentType},
			},
		}
		if part.ResHi > 0 {
			msgs[i].Header[HeaderResidues] = []string{fmt.Sprintf("%d-%d/%d", part.ResLo, part.ResHi, b.Lengths[part.Lo])}
		}
		// The connection may have moved to a server with a smaller limit since
		// the split: refuse before sending anything rather than part-way.
		if size := msgs[i].Size() - len(msgs[i].Subject); size > serverMax {
			*bufp = buf[:0] // nothing was sent: the buffer is free
			p.bufs.Put(bufp)
			return fail(i, fmt.Errorf("%w: %d bytes with headers, server max_payload now %d", nats.ErrMaxPayload, size, serverMax))
		}
	}
	futures := make([]jetstream.PubAckFuture, len(parts))
	for i, msg := range msgs {
		if ctx.Err() != nil {
			return fail(i, ctxErr())
		}
		f, err := p.js.PublishMsgAsync(msg)
		if err != nil {
			return fail(i, err)
		}
		futures[i] = f
		res.Parts++
		res.Bytes += len(msg.Data)
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
	return res, false, nil
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
