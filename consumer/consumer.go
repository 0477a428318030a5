package consumer

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"
)

// Observer receives counts; telemetry.Metrics satisfies it. Methods must be safe for concurrent use.
type Observer interface {
	RecordIn()
	DeadLettered(reason string)
	Truncated()
}

type nopObserver struct{}

func (nopObserver) RecordIn()           {}
func (nopObserver) DeadLettered(string) {}
func (nopObserver) Truncated()          {}

type options struct {
	stream         string
	streamMaxBytes int64
	replicas       int
	ackWait        time.Duration
	maxAckPending  int
	maxDeliver     int
	pullBatch      int
	buffer         int
	policy         Policy
	log            *zap.Logger
	obs            Observer
	updateStream   bool
}

// Option configures a Consumer.
type Option func(*options) error

func positive(name string, v int64) error {
	if v <= 0 {
		return fmt.Errorf("%w: %s %d must be > 0", ErrOption, name, v)
	}
	return nil
}

// WithStream names the input stream. Default "SEQS".
func WithStream(name string) Option {
	return func(o *options) error {
		if err := checkToken(name); err != nil {
			return fmt.Errorf("%w: stream name: %w", ErrOption, err)
		}
		o.stream = name
		return nil
	}
}

// WithStreamMaxBytes caps the input stream (DiscardNew: publishers get an error when it is full).
// Default 1 GiB.
func WithStreamMaxBytes(n int64) Option {
	return func(o *options) error { o.streamMaxBytes = n; return positive("stream max bytes", n) }
}

// WithReplicas sets the input stream's replica count. Default 1.
func WithReplicas(n int) Option {
	return func(o *options) error { o.replicas = n; return positive("replicas", int64(n)) }
}

// WithAckWait sets how long the server waits for an ack before redelivering. Default 60s.
func WithAckWait(d time.Duration) Option {
	return func(o *options) error { o.ackWait = d; return positive("ack wait", int64(d)) }
}

// WithMaxAckPending caps unacknowledged records across all workers of the durable. Default 4096.
func WithMaxAckPending(n int) Option {
	return func(o *options) error { o.maxAckPending = n; return positive("max ack pending", int64(n)) }
}

// WithMaxDeliver caps deliveries of one record. Default 5.
func WithMaxDeliver(n int) Option {
	return func(o *options) error { o.maxDeliver = n; return positive("max deliver", int64(n)) }
}

// WithPullBatch sets how many records one pull asks for (and so the client's buffer). Default 256.
func WithPullBatch(n int) Option {
	return func(o *options) error { o.pullBatch = n; return positive("pull batch", int64(n)) }
}

// WithBuffer sets the capacity of the Records channel. Default 256.
func WithBuffer(n int) Option {
	return func(o *options) error { o.buffer = n; return positive("buffer", int64(n)) }
}

// WithMaxRecordBytes caps a record's body. Default 1 MiB.
func WithMaxRecordBytes(n int) Option {
	return func(o *options) error { o.policy.MaxRecordBytes = n; return positive("max record bytes", int64(n)) }
}

// WithMaxResidues sets the model's max sequence length in residues. Default 1022.
func WithMaxResidues(n int) Option {
	return func(o *options) error { o.policy.MaxResidues = n; return positive("max residues", int64(n)) }
}

// WithOverlength chooses truncate (default) or reject for sequences over the max length.
func WithOverlength(p Overlength) Option {
	return func(o *options) error { o.policy.Overlength = p; return nil }
}

// WithUpdateStream makes Setup apply the stream settings to an existing input stream. Default
// false: workers create the stream when it is missing but never reset an operator's limits.
func WithUpdateStream(v bool) Option {
	return func(o *options) error { o.updateStream = v; return nil }
}

// WithLogger sets the logger. Default: no logging.
func WithLogger(l *zap.Logger) Option {
	return func(o *options) error {
		if l == nil {
			return fmt.Errorf("%w: nil logger", ErrOption)
		}
		o.log = l
		return nil
	}
}

// WithObserver receives record counts. Default: none.
func WithObserver(obs Observer) Option {
	return func(o *options) error {
		if obs == nil {
			return fmt.Errorf("%w: nil observer", ErrOption)
		}
		o.obs = obs
		return nil
	}
}

// Consumer pulls one model's records from the input stream through a durable pull consumer that
// any number of workers share. Records are validated; bad ones are copied to the dead-letter
// subject with the reason and terminated.
type Consumer struct {
	js    jetstream.JetStream
	model string
	opts  options
	cons  jetstream.Consumer
}

// Subject is where producers publish records for model: seqs.in.<model>.
func Subject(model string) string { return "seqs.in." + model }

// DLQSubject is where bad records of model go: seqs.dlq.<model>.
func DLQSubject(model string) string { return "seqs.dlq." + model }

// Durable is the durable consumer's name for model.
func Durable(model string) string { return "seqembed-" + model }

// checkToken accepts names usable as one NATS subject token and stream/consumer name.
func checkToken(s string) error {
	if s == "" || strings.ContainsAny(s, ". *>\t\r\n/\\") {
		return fmt.Errorf("%q must be non-empty without '.', '*', '>', '/', '\\' or whitespace", s)
	}
	return nil
}

// New makes a consumer for model. validate checks a record's residues against the model's
// alphabet (batcher.Tokenizer.Validate); it must be safe for concurrent use.
func New(js jetstream.JetStream, model string, validate func([]byte) error, opts ...Option) (*Consumer, error) {
	if err := checkToken(model); err != nil {
		return nil, fmt.Errorf("%w: model name: %w", ErrOption, err)
	}
	if validate == nil {
		return nil, fmt.Errorf("%w: nil validator", ErrOption)
	}
	o := options{
		stream: "SEQS", streamMaxBytes: 1 << 30, replicas: 1,
		ackWait: 60 * time.Second, maxAckPending: 4096, maxDeliver: 5,
		pullBatch: 256, buffer: 256,
		policy: Policy{MaxRecordBytes: 1 << 20, MaxResidues: 1022, Validate: validate},
		log:    zap.NewNop(), obs: nopObserver{},
	}
	for _, opt := range opts {
		if err := opt(&o); err != nil {
			return nil, err
		}
	}
	return &Consumer{js: js, model: model, opts: o}, nil
}

// StreamConfig is the input stream's configuration: work-queue retention, file storage, DiscardNew.
func (c *Consumer) StreamConfig() jetstream.StreamConfig {
	return jetstream.StreamConfig{
		Name:       c.opts.stream,
		Subjects:   []string{"seqs.>"},
		Retention:  jetstream.WorkQueuePolicy,
		Storage:    jetstream.FileStorage,
		Discard:    jetstream.DiscardNew,
		MaxBytes:   c.opts.streamMaxBytes,
		Replicas:   c.opts.replicas,
		Duplicates: 10 * time.Minute,
	}
}

// ConsumerConfig is the durable consumer's configuration.
func (c *Consumer) ConsumerConfig() jetstream.ConsumerConfig {
	return jetstream.ConsumerConfig{
		Durable:       Durable(c.model),
		Description:   "seqembed workers for model " + c.model,
		FilterSubject: Subject(c.model),
		AckPolicy:     jetstream.AckExplicitPolicy,
		AckWait:       c.opts.ackWait,
		MaxAckPending: c.opts.maxAckPending,
		MaxDeliver:    c.opts.maxDeliver,
		DeliverPolicy: jetstream.DeliverAllPolicy,
	}
}

// Setup creates the input stream if it is missing (or updates it, WithUpdateStream) and creates
// or updates the durable consumer. Idempotent.
func (c *Consumer) Setup(ctx context.Context) error {
	_, err := c.js.Stream(ctx, c.opts.stream)
	switch {
	case errors.Is(err, jetstream.ErrStreamNotFound):
		_, err = c.js.CreateStream(ctx, c.StreamConfig())
	case err == nil && c.opts.updateStream:
		_, err = c.js.UpdateStream(ctx, c.StreamConfig())
	}
	if err != nil && !errors.Is(err, jetstream.ErrStreamNameAlreadyInUse) {
		return fmt.Errorf("%w: stream %s: %w", ErrSetup, c.opts.stream, err)
	}
	cons, err := c.js.CreateOrUpdateConsumer(ctx, c.opts.stream, c.ConsumerConfig())
	if err != nil {
		return fmt.Errorf("%w: consumer %s on %s: %w", ErrSetup, Durable(c.model), c.opts.stream, err)
	}
	c.cons = cons
	return nil
}

// Handle is a running pull loop.
type Handle struct {
	records chan Record
	done    chan struct{}
	stop    chan struct{}
	once    sync.Once
}

// Records delivers valid records in arrival order; it is closed when the loop ends.
func (h *Handle) Records() <-chan Record { return h.records }

// Stop stops pulling; records already buffered in the client are nak'd (redelivered at once to
// another worker) and Records is closed. It does not wait: see Done.
func (h *Handle) Stop() { h.once.Do(func() { close(h.stop) }) }

// Done is closed when the loop has ended and every buffered message was delivered or nak'd.
func (h *Handle) Done() <-chan struct{} { return h.done }

// Start begins pulling. Setup must have run. Cancelling ctx acts as Stop.
func (c *Consumer) Start(ctx context.Context) (*Handle, error) {
	if c.cons == nil {
		return nil, fmt.Errorf("%w: Start before Setup", ErrSetup)
	}
	// A 5 s pull expiry (default 30 s) means a pull served by a node that died is noticed in
	// seconds: measured in a 3-node cluster, the default stalled progress for 30 s.
	it, err := c.cons.Messages(jetstream.PullMaxMessages(c.opts.pullBatch), jetstream.PullExpiry(5*time.Second))
	if err != nil {
		return nil, fmt.Errorf("%w: pulling from %s: %w", ErrSetup, Durable(c.model), err)
	}
	h := &Handle{
		records: make(chan Record, c.opts.buffer),
		done:    make(chan struct{}),
		stop:    make(chan struct{}),
	}
	go func() {
		select {
		case <-ctx.Done():
			h.Stop()
		case <-h.stop:
		}
		it.Drain() // Next returns what is buffered (nak'd by the loop), then ErrMsgIteratorClosed
	}()
	go c.loop(h, it)
	return h, nil
}

func (c *Consumer) loop(h *Handle, it jetstream.MessagesContext) {
	defer close(h.done)
	defer close(h.records)
	stopped := func() bool {
		select {
		case <-h.stop:
			return true
		default:
			return false
		}
	}
	for {
		msg, err := it.Next()
		if errors.Is(err, jetstream.ErrMsgIteratorClosed) {
			return
		}
		if err != nil {
			c.opts.log.Warn("pull", zap.String("consumer", Durable(c.model)), zap.Error(err))
			continue
		}
		if stopped() {
			_ = msg.Nak()
			continue
		}
		c.opts.obs.RecordIn()
		meta, err := msg.Metadata()
		if err != nil {
			c.opts.log.Error("message without JetStream metadata", zap.Error(err))
			_ = msg.Term()
			continue
		}
		rec, err := Decode(msg.Headers(), msg.Data(), meta.Sequence.Stream, c.opts.policy)
		var rej *RejectError
		if errors.As(err, &rej) {
			if derr := c.deadLetter(context.Background(), msg, rej); derr != nil {
				c.opts.log.Error("dead-letter", zap.Error(derr))
			}
			continue
		}
		rec.Delivered, rec.Msg = meta.NumDelivered, msg
		if rec.Truncated {
			c.opts.obs.Truncated()
		}
		select {
		case h.records <- rec:
		case <-h.stop:
			_ = msg.Nak()
		}
	}
}

// deadLetter copies msg to the dead-letter subject with the reason, waits for the PubAck, then
// terminates msg. If the copy fails, msg is nak'd with a delay so it is never lost.
func (c *Consumer) deadLetter(ctx context.Context, msg jetstream.Msg, rej *RejectError) error {
	return DeadLetterMsg(ctx, c.js, c.model, msg, rej, c.opts.obs, c.opts.log)
}

// DeadLetterMsg copies msg to model's dead-letter subject with headers Seqembed-Error (the message),
// Seqembed-Reason (the code) and Seqembed-Stream-Seq, waits for the PubAck, then terminates msg.
// The copy's Nats-Msg-Id is derived from the stream sequence, so a retry is deduplicated. If the
// copy fails, msg is nak'd with a 5 s delay and the error is returned: a record is never dropped.
func DeadLetterMsg(ctx context.Context, js jetstream.JetStream, model string, msg jetstream.Msg, rej *RejectError, obs Observer, log *zap.Logger) error {
	out := dlqCopy(model, msg.Data(), msg.Headers(), rej.Reason, rej.Error(), rej.StreamSeq)
	if _, err := js.PublishMsg(ctx, out); err != nil {
		_ = msg.NakWithDelay(5 * time.Second)
		return fmt.Errorf("%w: record %q at stream seq %d (%s): %w", ErrDeadLetter, rej.ID, rej.StreamSeq, rej.Reason, err)
	}
	if err := msg.TermWithReason(rej.Reason); err != nil {
		return fmt.Errorf("%w: term of stream seq %d after dead-lettering: %w", ErrAck, rej.StreamSeq, err)
	}
	obs.DeadLettered(rej.Reason)
	log.Info("dead-lettered", zap.String("id", rej.ID), zap.Uint64("stream_seq", rej.StreamSeq),
		zap.String("reason", rej.Reason), zap.String("error", rej.Err.Error()))
	return nil
}

// ackFlushTimeout bounds AckAll's flush when ctx has no deadline.
const ackFlushTimeout = 10 * time.Second

// dlqCopy builds the dead-letter copy of a record: its body and headers (Seq-Id included; Nats-*
// headers dropped: they are server-set or publish controls such as expected-sequence checks),
// Seqembed-Error, Seqembed-Reason, Seqembed-Stream-Seq, and the Nats-Msg-Id "dlq:<model>:<seq>"
// that makes a repeated copy of the same input a duplicate.
func dlqCopy(model string, data []byte, hdr nats.Header, reason, errText string, seq uint64) *nats.Msg {
	out := nats.NewMsg(DLQSubject(model))
	out.Data = data
	for k, v := range hdr {
		if !strings.HasPrefix(strings.ToLower(k), "nats-") {
			out.Header[k] = v
		}
	}
	out.Header.Set(HeaderError, errText)
	out.Header.Set(HeaderReason, reason)
	out.Header.Set(HeaderStreamSeq, strconv.FormatUint(seq, 10))
	out.Header.Set(nats.MsgIdHdr, fmt.Sprintf("dlq:%s:%d", model, seq))
	return out
}

// AckAll acknowledges every message and flushes the connection, so the acks have reached the
// server when it returns nil. Call it only after the records' outputs have their PubAcks.
func AckAll(ctx context.Context, nc *nats.Conn, msgs []jetstream.Msg) error {
	var first error
	for _, m := range msgs {
		if err := m.Ack(); err != nil && first == nil {
			first = err
		}
	}
	if first == nil {
		if _, ok := ctx.Deadline(); !ok {
			var cancel context.CancelFunc
			ctx, cancel = context.WithTimeout(ctx, ackFlushTimeout)
			defer cancel()
		}
		first = nc.FlushWithContext(ctx)
	}
	if first != nil {
		return fmt.Errorf("%w: %d messages: %w", ErrAck, len(msgs), first)
	}
	return nil
}

// NakAll negatively acknowledges every message (redelivery after delay; 0 = at once).
func NakAll(msgs []jetstream.Msg, delay time.Duration) {
	for _, m := range msgs {
		if delay > 0 {
			_ = m.NakWithDelay(delay)
		} else {
			_ = m.Nak()
		}
	}
}
