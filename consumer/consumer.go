package consumer

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"

	"github.com/seqembed/seqembed/internal/natsconn"
	"github.com/seqembed/seqembed/internal/retry"
)

// Observer receives counts; telemetry.Metrics satisfies it. Methods must be safe for concurrent use.
type Observer interface {
	// RecordIn counts a record pulled on its first delivery (a message without JetStream
	// metadata counts here too).
	RecordIn()
	// Redelivered counts a record pulled again (its delivery count, NumDelivered, is above 1).
	Redelivered()
	// DeadLettered counts a record whose copy the dead-letter subject stored (duplicates of a
	// stored copy are not counted again), by reason code.
	DeadLettered(reason string)
	// Dropped counts a record terminated without a dead-letter copy because none could be
	// stored (ErrCopyUnfit), by the reason code it would have carried.
	Dropped(reason string)
	// Truncated counts a record whose sequence was cut to the model's max length.
	Truncated()
}

type nopObserver struct{}

func (nopObserver) RecordIn()           {}
func (nopObserver) Redelivered()        {}
func (nopObserver) DeadLettered(string) {}
func (nopObserver) Dropped(string)      {}
func (nopObserver) Truncated()          {}

type options struct {
	stream         string
	streamMaxBytes int64
	replicas       int
	ackWait        time.Duration
	maxAckPending  int
	maxDeliver     int
	pullBatch      int
	gate           func(ctx context.Context) (int, error)
	buffer         int
	policy         Policy
	log            *zap.Logger
	obs            Observer
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

// WithPullGate makes every pull ask gate first how many records it may bring: gate blocks until
// the caller has room and returns a count (at least 1; more than the pull batch is capped), or an
// error (ctx ends when Stop is called). The pipeline uses it to hold only as much work as its
// budget allows, leaving the rest on the server. Default: none (every pull asks for the batch).
func WithPullGate(gate func(ctx context.Context) (int, error)) Option {
	return func(o *options) error {
		if gate == nil {
			return fmt.Errorf("%w: WithPullGate(nil)", ErrOption)
		}
		o.gate = gate
		return nil
	}
}

// WithPullBatch sets how many records one pull asks for, and so the most the client buffers
// before they are handed out: one pull is in flight at a time. Default 256.
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

// WithMaxResidues sets the model's max sequence length in residues (with Chunk: the window;
// longer records are chunked). Default 1022.
func WithMaxResidues(n int) Option {
	return func(o *options) error { o.policy.MaxResidues = n; return positive("max residues", int64(n)) }
}

// WithOverlength chooses truncate (default), reject or chunk for sequences over the max length.
func WithOverlength(p Overlength) Option {
	return func(o *options) error { o.policy.Overlength = p; return nil }
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

// Subject is where producers publish records for model outside any job: seqs.in.<model>.
func Subject(model string) string { return "seqs.in." + model }

// DLQSubject is where bad records of model outside any job go: seqs.dlq.<model>.
func DLQSubject(model string) string { return "seqs.dlq." + model }

// JobSubject is where the records of a job go: seqs.in.<model>.<job> (Subject for job "").
// A job namespaces one run's records, dead letters and outputs (embeddings.<model>.<job>), so
// that a sink can read that run alone and know when it is complete. The workers of a model
// serve every job's records through one durable consumer.
func JobSubject(model, job string) string {
	if job == "" {
		return Subject(model)
	}
	return Subject(model) + "." + job
}

// JobDLQSubject is where the bad records of a job go: seqs.dlq.<model>.<job> (DLQSubject for "").
func JobDLQSubject(model, job string) string {
	if job == "" {
		return DLQSubject(model)
	}
	return DLQSubject(model) + "." + job
}

// JobOf returns the job of a record of model that came on subject (JobSubject): "" for
// Subject(model) or a subject of another model.
func JobOf(model, subject string) string {
	job, ok := strings.CutPrefix(subject, Subject(model)+".")
	if !ok {
		return ""
	}
	return job
}

// MaxJobBytes is the longest job name accepted.
const MaxJobBytes = 64

// CheckJob accepts job names of 1..MaxJobBytes letters, digits, '-' and '_' (one NATS subject
// token, safe in file names and KV keys).
func CheckJob(job string) error {
	if job == "" || len(job) > MaxJobBytes {
		return fmt.Errorf("%w: job name %q: want 1 to %d characters", ErrOption, job, MaxJobBytes)
	}
	for i := 0; i < len(job); i++ {
		c := job[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
			return fmt.Errorf("%w: job name %q: character %d (%q) is not a letter, digit, '-' or '_'", ErrOption, job, i+1, c)
		}
	}
	return nil
}

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
		Durable:     Durable(c.model),
		Description: "seqembed workers for model " + c.model,
		// The model's records outside any job and those of every job (JobSubject).
		FilterSubjects: []string{Subject(c.model), JobSubject(c.model, "*")},
		AckPolicy:      jetstream.AckExplicitPolicy,
		AckWait:        c.opts.ackWait,
		MaxAckPending:  c.opts.maxAckPending,
		MaxDeliver:     c.opts.maxDeliver,
		DeliverPolicy:  jetstream.DeliverAllPolicy,
	}
}

// Setup creates the input stream if it is missing (an existing one's limits are never reset:
// `seqembed streams` changes only what its flags name) and creates or updates the durable
// consumer, with the stream's replica count. Idempotent.
func (c *Consumer) Setup(ctx context.Context) error {
	st, err := c.js.Stream(ctx, c.opts.stream)
	switch {
	case errors.Is(err, jetstream.ErrStreamNotFound):
		st, err = c.js.CreateStream(ctx, c.StreamConfig())
		if errors.Is(err, jetstream.ErrStreamNameAlreadyInUse) { // another worker created it first
			st, err = c.js.Stream(ctx, c.opts.stream)
		}
	}
	if err != nil {
		return fmt.Errorf("%w: stream %s: %w", ErrSetup, c.opts.stream, err)
	}
	cc := c.ConsumerConfig()
	// The stream's replica count, set explicitly: a consumer left at 0 ("the stream's") is R3 on
	// an R3 stream, but nats-server 2.15 takes it for R1 when a node shuts down: it ends the
	// consumer's pulls with "409 Server Shutdown" while still sending them records for 50 ms,
	// which the client, its pull ended, drops; each such record then waits out AckWait
	// (docs/reliability.md, 2026-12-04; TestLeaderShutdownKeepsPulls).
	cc.Replicas = st.CachedInfo().Config.Replicas
	cons, err := c.js.CreateOrUpdateConsumer(ctx, c.opts.stream, cc)
	if ReplicasRefused(err) {
		// The stream is still being scaled: its new count is in its config before the server
		// applies it (~10 s in a 3-node test cluster), and until then the server refuses every
		// consumer update, 0 ("the stream's") included. The durable is used as it is; the next
		// Setup or `seqembed streams` updates it.
		c.opts.log.Warn("durable consumer used as it is while its stream scales",
			zap.String("consumer", cc.Durable), zap.Int("stream_replicas", cc.Replicas), zap.Error(err))
		cons, err = c.js.Consumer(ctx, c.opts.stream, cc.Durable)
	}
	if err != nil {
		return fmt.Errorf("%w: consumer %s on %s: %w", ErrSetup, Durable(c.model), c.opts.stream, err)
	}
	c.cons = cons
	return nil
}

// ReplicasRefused reports whether err is the server refusing a consumer's replica count for its
// stream (exceeds it, or differs on a work-queue stream): what a consumer update answers while
// the stream's own scaling is still being applied.
func ReplicasRefused(err error) bool {
	var apiErr *jetstream.APIError
	return errors.As(err, &apiErr) && (apiErr.ErrorCode == errCodeReplicasExceedStream || apiErr.ErrorCode == errCodeReplicasMatchStream)
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

// Stop stops pulling; records already buffered in the client, or still arriving for the pull in
// flight, are nak'd (redelivered to another worker within seconds: see stopNakDelay) and then
// Records is closed. It does not wait: see Done.
func (h *Handle) Stop() { h.once.Do(func() { close(h.stop) }) }

// Done is closed when the loop has ended and every buffered message was delivered or nak'd.
func (h *Handle) Done() <-chan struct{} { return h.done }

// Pull timing.
const (
	// pullExpiry is one pull's life on the server, which ends the request then (a 408 status)
	// unless the batch filled first; the client gives up on a pull a second after its last
	// message if that end never came (a server or cluster leader that went away: measured in a
	// 3-node cluster, a 30 s pull stalled progress for 30 s). Records are handed out as they
	// arrive, so the expiry costs no throughput; it is short so that a stopping worker, which
	// waits for its pull to end on the server's side (see stopNakDelay), stops within half a
	// second. An idle worker so sends two requests a second.
	pullExpiry = 500 * time.Millisecond
	// After Stop no pull is made and the one in flight is left to end on the server's side:
	// cancelling it would unsubscribe while the server may still be sending, and a record so sent
	// would come back only after AckWait. What it brings meanwhile is nak'd with stopNakDelay,
	// longer than the pull can still live, so that the server does not hand a nak'd record straight
	// back to this stopping pull (each such bounce would spend one of its MaxDeliver).
	stopNakDelay = pullExpiry + time.Second
)

// pullPolicy paces the pull loop after a failed pull (a server error or status, the
// consumer missing): 100 ms doubling to 2 s, until Stop. A pull that ended normally (the batch
// was filled or the request expired) is followed by the next one at once.
var pullPolicy = retry.Policy{Initial: 100 * time.Millisecond, Max: 2 * time.Second}

// Start begins pulling. Setup must have run. Cancelling ctx acts as Stop.
//
// Records are pulled one request at a time (jetstream Fetch of WithPullBatch records), the next
// request sent once the previous one is filled or expired, and only while the connection is up.
// The client so never holds more than one batch, whatever the connection does: the jetstream
// Messages iterator of nats.go v1.55 reissues a full pull after a reconnect while its buffer
// (a channel of exactly one batch) can still hold messages of the previous one, and sends pulls
// while reconnecting that the reconnect then delivers on top, so a reconnect under load overflowed
// it (nats: slow consumer, messages dropped on _INBOX…), each drop costing a record a delivery.
func (c *Consumer) Start(ctx context.Context) (*Handle, error) {
	if c.cons == nil {
		return nil, fmt.Errorf("%w: Start before Setup", ErrSetup)
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
	}()
	go c.loop(h)
	return h, nil
}

// puller is the state of one pull loop; only the loop's goroutine uses it.
type puller struct {
	c       *Consumer
	h       *Handle
	stopped bool // Stop was seen: no more pulls, what arrives is nak'd
}

func (c *Consumer) loop(h *Handle) {
	defer close(h.done)
	defer close(h.records) // only now: every message is handed out or nak'd
	p := &puller{c: c, h: h}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		select {
		case <-h.stop:
			cancel()
		case <-ctx.Done():
		}
	}()
	log := c.opts.log.With(zap.String("consumer", Durable(c.model)))
	pol := pullPolicy
	pol.Retryable = func(err error) bool { return !errors.Is(err, nats.ErrConnectionClosed) }
	pol.OnRetry = func(try int, err error, wait time.Duration) {
		if try == 1 || try%10 == 0 {
			log.Warn("pull failed; retrying", zap.Int("try", try), zap.Duration("wait", wait), zap.Error(err))
		}
	}
	for !p.stopped {
		if err := retry.Do(ctx, pol, p.pull); err != nil {
			if ctx.Err() == nil {
				log.Error("pull loop ends", zap.Error(err))
			}
			return
		}
	}
}

func (p *puller) stopRequested() bool {
	select {
	case <-p.h.stop:
		return true
	default:
		return false
	}
}

// pull makes one pull request and hands out (or, after Stop, naks) every message it brings. It
// returns nil when the request ended normally, else the error (retried by the loop).
func (p *puller) pull(ctx context.Context) error {
	c := p.c
	if p.stopRequested() {
		p.stopped = true
		return nil
	}
	nc := c.js.Conn()
	if err := natsconn.AwaitConnected(ctx, nc); err != nil {
		return fmt.Errorf("%w: %s: waiting for the connection: %w", ErrPull, Durable(c.model), err)
	}
	n := c.opts.pullBatch
	if c.opts.gate != nil {
		room, err := c.opts.gate(ctx)
		if err != nil {
			if ctx.Err() != nil || p.stopRequested() {
				p.stopped = true
				return nil
			}
			return fmt.Errorf("%w: %s: pull gate: %w", ErrPull, Durable(c.model), err)
		}
		n = min(max(room, 1), n)
	}
	batch, err := c.cons.Fetch(n, jetstream.FetchMaxWait(pullExpiry))
	if err != nil {
		return fmt.Errorf("%w: %s: %w", ErrPull, Durable(c.model), err)
	}
	p.drain(batch.Messages())
	if err := batch.Error(); err != nil {
		return fmt.Errorf("%w: %s: %w", ErrPull, Durable(c.model), err)
	}
	return nil
}

// drain takes every message of one pull until its channel closes: the batch filled, the server
// ended the request (its expiry), or the pull failed; never earlier (see stopNakDelay). Once
// Stop is seen, what arrives is nak'd with stopNakDelay and no pull follows.
func (p *puller) drain(msgs <-chan jetstream.Msg) {
	for msg := range msgs {
		if p.stopped || p.stopRequested() {
			p.stopped = true
			_ = msg.NakWithDelay(stopNakDelay)
			continue
		}
		if !p.handle(msg) {
			p.stopped = true
		}
	}
}

// handle counts, validates and hands out one message; bad records are dead-lettered. It
// returns false when Stop came while it waited to hand the record out (the record is nak'd).
func (p *puller) handle(msg jetstream.Msg) bool {
	c := p.c
	meta, err := msg.Metadata()
	if err != nil {
		c.opts.obs.RecordIn()
		c.opts.log.Error("message without JetStream metadata", zap.Error(err))
		_ = msg.Term()
		return true
	}
	if meta.NumDelivered > 1 {
		c.opts.obs.Redelivered()
	} else {
		c.opts.obs.RecordIn()
	}
	rec, err := Decode(msg.Headers(), msg.Data(), meta.Sequence.Stream, c.opts.policy)
	var rej *RejectError
	if errors.As(err, &rej) {
		if derr := c.deadLetter(context.Background(), msg, rej); derr != nil {
			c.opts.log.Error("dead-letter", zap.Error(derr))
		}
		return true
	}
	rec.Delivered, rec.Msg = meta.NumDelivered, msg
	if rec.Truncated {
		c.opts.obs.Truncated()
	}
	select {
	case p.h.records <- rec:
		return true
	case <-p.h.stop:
		_ = msg.NakWithDelay(stopNakDelay) // see stopNakDelay
		return false
	}
}

// deadLetter copies msg to the dead-letter subject with the reason, waits for the PubAck, then
// terminates msg (see DeadLetterMsg).
func (c *Consumer) deadLetter(ctx context.Context, msg jetstream.Msg, rej *RejectError) error {
	return DeadLetterMsg(ctx, c.js, c.model, msg, rej, c.opts.obs, c.opts.log)
}

// DeadLetterMsg copies msg to model's dead-letter subject with headers Seqembed-Error (the message),
// Seqembed-Reason (the code) and Seqembed-Stream-Seq, waits for the PubAck, then terminates msg.
// The copy's Nats-Msg-Id is derived from the stream sequence, so a retry is deduplicated.
//
// The copy always fits under the connection's max_payload as it is at the time of the call:
// what does not fit is cut, the body first (to a prefix, with Seqembed-Body-Truncated holding its
// full length), then the error text and the record's other headers (see dlqCopy). If the copy
// fails for another reason (the stream is full or unreachable, the connection is down), msg is
// nak'd with a 5 s delay and an error wrapping ErrDeadLetter is returned: a record is never
// dropped for a fault that may pass. If no copy can be stored at any size (ErrCopyUnfit), msg
// is terminated anyway, counted by obs.Dropped, logged with its id and stream sequence, and an
// error wrapping ErrDropped is returned: it is never left to be redelivered for ever. obs counts
// a stored copy (DeadLettered) only when the stream did not report it as a duplicate.
func DeadLetterMsg(ctx context.Context, js jetstream.JetStream, model string, msg jetstream.Msg, rej *RejectError, obs Observer, log *zap.Logger) error {
	ack, fit, err := storeCopy(ctx, js, JobDLQSubject(model, JobOf(model, msg.Subject())), model, msg.Data(), msg.Headers(), rej.Reason, rej.Error(), rej.StreamSeq)
	if errors.Is(err, ErrCopyUnfit) {
		if terr := msg.TermWithReason(rej.Reason); terr != nil {
			return fmt.Errorf("%w: term of stream seq %d, which has no dead-letter copy (%w): %w", ErrAck, rej.StreamSeq, err, terr)
		}
		obs.Dropped(rej.Reason)
		log.Error("record terminated without a dead-letter copy: none fits", zap.String("id", rej.ID),
			zap.Uint64("stream_seq", rej.StreamSeq), zap.String("reason", rej.Reason), zap.Int("body_bytes", fit.bodyLen),
			zap.Int("limit", fit.limit), zap.String("error", rej.Err.Error()), zap.NamedError("copy_error", err))
		return fmt.Errorf("%w: record %q at stream seq %d (%s): %w", ErrDropped, rej.ID, rej.StreamSeq, rej.Reason, err)
	}
	if err != nil {
		_ = msg.NakWithDelay(5 * time.Second)
		return fmt.Errorf("%w: record %q at stream seq %d (%s): %w", ErrDeadLetter, rej.ID, rej.StreamSeq, rej.Reason, err)
	}
	if err := msg.TermWithReason(rej.Reason); err != nil {
		return fmt.Errorf("%w: term of stream seq %d after dead-lettering: %w", ErrAck, rej.StreamSeq, err)
	}
	if ack.Duplicate {
		log.Debug("dead-letter copy was a duplicate", zap.String("id", rej.ID), zap.Uint64("stream_seq", rej.StreamSeq))
		return nil
	}
	obs.DeadLettered(rej.Reason)
	logCut(log, rej.ID, rej.StreamSeq, fit)
	log.Info("dead-lettered", zap.String("id", rej.ID), zap.Uint64("stream_seq", rej.StreamSeq),
		zap.String("reason", rej.Reason), zap.String("error", rej.Err.Error()))
	return nil
}

// logCut warns when a stored dead-letter copy had to be cut to fit.
func logCut(log *zap.Logger, id string, seq uint64, fit copyFit) {
	if !fit.cut() {
		return
	}
	log.Warn("dead-letter copy cut to fit max_payload", zap.String("id", id), zap.Uint64("stream_seq", seq),
		zap.Int("limit", fit.limit), zap.Int("body_bytes", fit.bodyLen), zap.Bool("body_cut", fit.bodyCut),
		zap.Bool("error_cut", fit.errorCut), zap.Int("headers_left_out", fit.headersLeft), zap.Bool("id_cut", fit.idCut))
}

// ackFlushTimeout bounds AckAll's flush when ctx has no deadline.
const ackFlushTimeout = 10 * time.Second

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
