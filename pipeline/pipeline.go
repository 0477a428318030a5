package pipeline

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/seqembed/seqembed/arrowout"
	"github.com/seqembed/seqembed/batcher"
	"github.com/seqembed/seqembed/consumer"
	"github.com/seqembed/seqembed/gpurun"
	"github.com/seqembed/seqembed/internal/retry"
	"github.com/seqembed/seqembed/telemetry"
)

// Deps are what a pipeline runs against: a NATS connection (required) and where it reports.
type Deps struct {
	Conn       *nats.Conn            // required; the pipeline does not close it
	Log        *zap.Logger           // nil: no logs
	Registerer prometheus.Registerer // nil: metrics go to a private registry
	Health     *telemetry.Health     // nil: a private one; Run sets it ready once pulling
}

// Pipeline is one worker: consumer → batcher → gpurun → arrowout, each stage owned here.
// New loads the model and sets up the streams; Run pulls, embeds, publishes and acks until its
// context ends, then shuts down gracefully. A Pipeline runs once.
type Pipeline struct {
	cfg     Config
	deps    Deps
	log     *zap.Logger
	js      jetstream.JetStream
	eng     *Engine
	bat     *batcher.Batcher
	cons    *consumer.Consumer
	pub     *arrowout.Publisher
	metrics *telemetry.Metrics
	model   string
	stats   statsBook
	queued  atomic.Int64 // records taken from the consumer and not yet acked, nak'd or termed
	keep    *keeper      // heartbeats every held record
	// chunkQ hands chunked records (--overlength chunk) from the feeder to the chunk loops
	// (chunk.go); sized like the batcher's queue, so the feeder never waits on it. nil without
	// chunking.
	chunkQ chan chunkRec

	stopOnce sync.Once
	stop     chan struct{} // Stop: abandon in-flight work now
}

// New validates cfg, loads the model on every device (warming up every bucket shape on CUDA),
// creates the input stream, the model's durable consumer and the output stream where they are
// missing (never resetting an existing stream's limits), and returns the pipeline ready to Run.
func New(ctx context.Context, cfg Config, deps Deps) (*Pipeline, error) {
	if deps.Conn == nil {
		return nil, fmt.Errorf("%w: no NATS connection", ErrConfig)
	}
	if deps.Log == nil {
		deps.Log = zap.NewNop()
	}
	if deps.Registerer == nil {
		deps.Registerer = prometheus.NewRegistry()
	}
	if deps.Health == nil {
		deps.Health = telemetry.NewHealth()
	}
	eng, err := NewEngine(cfg, deps.Log)
	if err != nil {
		return nil, err
	}
	p := &Pipeline{cfg: cfg, deps: deps, log: deps.Log, eng: eng, stop: make(chan struct{}),
		stats: statsBook{collect: cfg.CollectLatency}}
	if err := p.init(ctx); err != nil {
		eng.Close()
		return nil, err
	}
	return p, nil
}

func (p *Pipeline) init(ctx context.Context) error {
	cfg, man := p.cfg, p.eng.Manifest()
	p.model = man.Name
	var err error
	if p.js, err = jetstream.New(p.deps.Conn); err != nil {
		return fmt.Errorf("%w: JetStream: %w", ErrSetup, err)
	}
	if p.metrics, err = telemetry.NewMetrics(p.deps.Registerer, man.Name, telemetry.Labels{
		DeadLetterReasons: consumer.DeadLetterReasons(), FlushReasons: batcher.Reasons}); err != nil {
		return fmt.Errorf("%w: metrics: %w", ErrSetup, err)
	}
	// The queue holds as many records as the server lets a worker hold, so the feeder never
	// blocks and nothing waits unheartbeated in the client (heartbeat.go).
	if p.bat, err = p.eng.NewBatcher(batcher.WithQueueSize(max(cfg.MaxAckPending, batcher.DefaultQueueSize))); err != nil {
		return err
	}
	overlength, _ := consumer.ParseOverlength(cfg.Overlength) // Validate checked it
	maxResidues := man.MaxLength
	if p.eng.chunk != nil { // records longer than the window are chunked, whole
		maxResidues = p.eng.chunk.window
		p.chunkQ = make(chan chunkRec, max(cfg.MaxAckPending, batcher.DefaultQueueSize))
	}
	replicas := StreamReplicas(cfg.Replicas, p.deps.Conn)
	// The keeper (heartbeat.go) must exist before the consumer, which asks it for room.
	p.keep = newKeeper(cfg.AckWait/3, cfg.MaxHeldTokens)
	consOpts := []consumer.Option{}
	if cfg.MaxHeldTokens > 0 {
		consOpts = append(consOpts, consumer.WithPullGate(p.keep.Room))
	}
	if p.cons, err = consumer.New(p.js, man.Name, p.eng.Tokenizer().Validate, append(consOpts, consumer.WithStream(cfg.InStream),
		consumer.WithAckWait(cfg.AckWait), consumer.WithMaxAckPending(cfg.MaxAckPending),
		consumer.WithMaxDeliver(cfg.MaxDeliver), consumer.WithMaxResidues(maxResidues),
		consumer.WithOverlength(overlength), consumer.WithMaxRecordBytes(cfg.MaxRecordBytes),
		consumer.WithReplicas(replicas), consumer.WithStreamMaxBytes(cfg.InMaxBytes), consumer.WithLogger(p.log), consumer.WithObserver(p.metrics))...); err != nil {
		return fmt.Errorf("%w: consumer: %w", ErrConfig, err)
	}
	if err := p.eng.Warmup(ctx, p.bat, p.log); err != nil {
		return err
	}
	if err := retry.Do(ctx, setupPolicy, p.cons.Setup); err != nil {
		return fmt.Errorf("%w: input stream %s and consumer: %w", ErrSetup, cfg.InStream, err)
	}
	// Create the output stream if it is missing, but never reset an existing one's limits
	// (seqembed streams is the command that changes them).
	if err := retry.Do(ctx, setupPolicy, func(ctx context.Context) error {
		_, err := p.js.Stream(ctx, cfg.OutStream)
		if errors.Is(err, jetstream.ErrStreamNotFound) {
			_, err = arrowout.EnsureStream(ctx, p.js, cfg.OutStreamConfig(replicas))
		}
		return err
	}); err != nil {
		return fmt.Errorf("%w: output stream %s: %w", ErrSetup, cfg.OutStream, err)
	}
	meta := p.eng.outputs.meta(man) // with the model's extra outputs as columns (layout version 3)
	// A short PubAck timeout: after a failover a lost PubAck is retried (same Msg-Ids, deduped)
	// in seconds rather than after the 30 s default; measured in the 3-node cluster test. The
	// publisher reads the connection's max_payload at every publish (it can change on a
	// reconnect).
	if p.pub, err = arrowout.NewPublisher(p.js, arrowout.Subject(man.Name, ""), meta, arrowout.WithAckTimeout(5*time.Second)); err != nil {
		return fmt.Errorf("%w: publisher: %w", ErrSetup, err)
	}
	return nil
}

// StreamReplicas is n, or for 0 the replicas of a stream created here: 3 when nc is connected
// to a cluster whose pool holds three or more servers (configured or discovered), else 1.
func StreamReplicas(n int, nc *nats.Conn) int {
	if n > 0 {
		return n
	}
	if nc.ConnectedClusterName() != "" && len(nc.Servers()) >= 3 {
		return 3
	}
	return 1
}

// setupPolicy retries a JetStream set-up call that went unanswered (10 s a try, 6 tries): in a
// cluster electing leaders a request can go unanswered (seen in the cluster test: a stream
// lookup waited out the whole context), and a worker must not hang at start. Other errors are
// final.
var setupPolicy = retry.Policy{Initial: 100 * time.Millisecond, Max: time.Second, Tries: 6,
	PerTry: 10 * time.Second, Retryable: retry.Timeouts}

// publishPolicy is the publish rule: outputs are retried with backoff (100 ms doubling to 5 s)
// for as long as it takes — the output stream may be full or the connection down — while the
// inputs stay in flight under InProgress instead of being nak'd, which would spend their
// MaxDeliver on a fault that is not theirs. Only the end of the pipeline's context (shutdown
// timeout, Stop) gives up.
var publishPolicy = retry.Policy{Initial: 100 * time.Millisecond, Max: 5 * time.Second}

// Model is the model's name (model.json), the suffix of its subjects.
func (p *Pipeline) Model() string { return p.model }

// Engine is the pipeline's model side.
func (p *Pipeline) Engine() *Engine { return p.eng }

// Stats is a snapshot of what the pipeline has done so far.
func (p *Pipeline) Stats() Stats { return p.stats.snapshot() }

// shutdownMargin is the part of the shutdown timeout kept for cancelling in-flight batches and
// nak'ing their records: a tenth, at most 2 s.
func shutdownMargin(timeout time.Duration) time.Duration { return min(timeout/10, 2*time.Second) }

// Stop abandons in-flight work at once: batches still running or publishing are nak'd for
// another worker and Run returns. Cancelling Run's context is the graceful way (Drain).
func (p *Pipeline) Stop() { p.stopOnce.Do(func() { close(p.stop) }) }

// Run pulls and embeds until ctx ends, then shuts down inside Config.ShutdownTimeout: stop
// pulling; nak every record not yet in a batch loop (the client's buffer, the batcher's queue
// and buckets), so other workers take them at once; finish the batches in flight (embed,
// publish, ack) until the timeout less a margin, then cancel them and nak their records; return.
// It releases the model on return.
func (p *Pipeline) Run(ctx context.Context) error {
	defer p.eng.Close()
	defer p.keep.Stop()
	// The stages run on their own context so that finishing in-flight work outlives ctx.
	pipeCtx, cancelPipe := context.WithCancel(context.Background())
	defer cancelPipe()
	ch, err := p.cons.Start(pipeCtx)
	if err != nil {
		return err
	}
	bh := p.bat.Start(pipeCtx)
	// Records that exhaust MaxDeliver go to the dead-letter subject (every worker watches; the
	// copies are deduplicated).
	adv, err := p.cons.WatchMaxDeliveries(pipeCtx)
	if err != nil {
		ch.Stop()
		bh.Stop()
		return err
	}
	defer func() { adv.Stop(); <-adv.Done() }()

	// feeder: consumer records → batcher.
	// Records the batcher refused once the shutdown began: nak'd with the batcher's Pending once
	// the pull subscription is gone (see below). The feeder owns the slice until feederDone.
	var stopping atomic.Bool
	var refused []jetstream.Msg
	feederDone := make(chan struct{})
	go func() {
		defer close(feederDone)
		for rec := range ch.Records() {
			if rec.Chunk {
				p.queued.Add(1)
				p.keep.Hold(rec.Msg, p.eng.chunk.tokens(len(rec.Residues)))
				select {
				case p.chunkQ <- chunkRec{rec: rec, arrived: time.Now()}: // Run naks what is left at shutdown
				default: // cannot happen: the queue holds MaxAckPending records
					p.log.Error("chunk queue full; record nak'd", zap.String("id", rec.ID))
					_ = rec.Msg.Nak()
					p.keep.Release(rec.Msg)
					p.queued.Add(-1)
				}
				continue
			}
			it := batcher.Item{ID: rec.ID, Residues: rec.Residues, StreamSeq: rec.StreamSeq, Truncated: rec.Truncated,
				Description: rec.Description, InputLength: rec.Length, SeqSHA256: rec.SeqSHA256, StopStripped: rec.StopStripped,
				InputIndex: rec.InputIndex, Ref: rec.Msg}
			p.queued.Add(1)
			p.keep.Hold(rec.Msg, len(rec.Residues)+2) // + <cls> and <eos>
			if err := p.bat.Add(pipeCtx, it); err != nil {
				if stopping.Load() {
					refused = append(refused, rec.Msg)
					continue
				}
				p.log.Error("batcher refused a record; nak'd", zap.String("id", rec.ID), zap.Error(err))
				_ = rec.Msg.Nak()
				p.keep.Release(rec.Msg)
				p.queued.Add(-1)
			}
		}
		bh.Drain()
	}()
	if p.eng.CUDA() {
		defer p.watchGPU(pipeCtx)()
	}
	backlogDone := make(chan struct{})
	go func() { defer close(backlogDone); p.watchBacklog(pipeCtx) }()
	defer func() { cancelPipe(); <-backlogDone }()
	var wg sync.WaitGroup
	for range p.eng.Slots() {
		wg.Go(func() { p.batches(pipeCtx) })
	}
	chunkStop := make(chan struct{}) // the chunk loops take no more records
	if p.chunkQ != nil {
		for range p.eng.Slots() {
			wg.Go(func() { p.chunkLoop(pipeCtx, p.chunkQ, chunkStop) })
		}
	}
	p.deps.Health.SetReady(true)
	p.log.Info("worker ready", zap.String("model", p.model), zap.String("device", p.cfg.Device),
		zap.Strings("subjects", []string{consumer.Subject(p.model), consumer.JobSubject(p.model, "*")}))

	select {
	case <-ctx.Done():
	case <-p.stop:
	}
	p.deps.Health.SetReady(false)
	p.log.Info("shutting down: no more pulls; held records nak'd, batches in flight finishing")
	// The in-flight batches get the shutdown timeout less a margin, so that cancelling them and
	// nak'ing their records still ends inside --shutdown-timeout.
	timeout := time.NewTimer(p.cfg.ShutdownTimeout - shutdownMargin(p.cfg.ShutdownTimeout))
	defer timeout.Stop()
	stopping.Store(true)
	ch.Stop() // the consumer naks what its client had buffered
	bh.Stop() // the batcher emits nothing more: what it holds goes to Pending
	<-feederDone
	<-bh.Done()
	// Nak only once the server has seen the pull subscription go: a record nak'd while one of
	// this worker's pull requests is still open comes straight back to it, unread, and waits out
	// AckWait. The consumer's loop has ended (feederDone); a flush is a round trip after its
	// unsubscribe.
	<-ch.Done()
	_ = p.deps.Conn.FlushTimeout(5 * time.Second)
	held := refused
	for _, it := range bh.Pending() { // records not yet in a batch loop: another worker takes them now
		held = append(held, it.Ref.(jetstream.Msg))
	}
	close(chunkStop) // chunked records not yet in a chunk loop, likewise (the feeder is done)
	for len(p.chunkQ) > 0 {
		select {
		case cr := <-p.chunkQ:
			held = append(held, cr.rec.Msg)
		default: // a chunk loop took the last one (and naks it itself)
		}
	}
	consumer.NakAll(held, 0)
	p.keep.Release(held...)
	p.queued.Add(-int64(len(held)))
	if len(held) > 0 {
		p.log.Info("held records nak'd for other workers", zap.Int("records", len(held)))
	}
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-p.stop:
		cancelPipe()
		<-done
	case <-timeout.C:
		p.log.Warn("shutdown timeout: cancelling in-flight batches (their records are nak'd)")
		cancelPipe()
		<-done
	}
	p.log.Info("worker stopped")
	return nil
}

// batches is one batch loop: take a batch off the batcher, embed, publish, ack, until the
// batcher closes. Eng.Slots() of them run at once.
func (p *Pipeline) batches(ctx context.Context) {
	var acc embedded
	var out arrowout.Batch
	var msgs []jetstream.Msg
	idleSince := time.Now()
	for b := range p.bat.Out() {
		p.metrics.ObserveRunnerIdle(time.Since(idleSince))
		p.metrics.InflightAdd(1)
		p.metrics.ObserveBatch(b.Reason, b.Rows, b.Rows*b.Cols, b.Tokens, time.Since(b.Oldest))
		p.stats.batch(b)
		msgs = msgs[:0]
		for _, it := range b.Items {
			msgs = append(msgs, it.Ref.(jetstream.Msg))
		}
		acc = embedded{emb: acc.emb[:0]} // the embeddings' buffer is reused, the rest is the batch's
		p.batch(ctx, b, &acc, &out, msgs)
		p.keep.Release(msgs...) // acked, nak'd or termed, every one
		p.queued.Add(-int64(len(msgs)))
		p.metrics.InflightAdd(-1)
		idleSince = time.Now()
	}
}

// batch embeds one batch, publishes the rows that worked and acks their inputs, under the rules:
//   - heartbeat: the keeper gives every input InProgress every AckWait/3 until it is acked,
//     nak'd or termed (batches releases them after this returns);
//   - retry in halves (embedInHalves), then judge: rows that failed alone while others worked
//     are dead-lettered (model_error); if no row worked every input is nak'd;
//   - publish until stored (publishPolicy), inputs held, not nak'd;
//   - ack only once every output carrying an input has its PubAck.
//
// At shutdown timeout (ctx ended) whatever is not yet stored is nak'd for another worker.
func (p *Pipeline) batch(ctx context.Context, b *batcher.Batch, acc *embedded, out *arrowout.Batch, msgs []jetstream.Msg) {
	if b.Err != nil { // the batcher could not allocate its buffers: not the records' fault
		p.log.Error("no buffers for the batch; records nak'd", zap.Uint64("batch", b.Seq), zap.Error(b.Err))
		consumer.NakAll(msgs, time.Second)
		return
	}
	t0 := time.Now()
	embedInHalves(ctx, p.eng.run, b, 0, b.Rows, acc, p.log)
	failed := acc.failed
	p.metrics.ObserveInference(time.Since(t0))
	b.Release()           // token buffers are no longer needed; Items stay readable
	if ctx.Err() != nil { // shutdown timeout: hand the records to another worker now
		p.log.Warn("batch abandoned at shutdown; records nak'd", zap.Uint64("batch", b.Seq), zap.Int("rows", b.Rows))
		consumer.NakAll(msgs, 0)
		return
	}
	switch judge(b.Rows, failed) {
	case nakAll:
		p.log.Error("inference failed; records nak'd", zap.Uint64("batch", b.Seq), zap.Int("rows", b.Rows),
			zap.Uint64("first_stream_seq", b.Items[0].StreamSeq), zap.Error(failed[0].err))
		consumer.NakAll(msgs, time.Second)
		return
	case deadLetterBad, allOK:
	}
	out.Reset()
	out.Seq = b.Seq
	okMsgs := make([]jetstream.Msg, 0, len(msgs))
	okItems := make([]batcher.Item, 0, len(b.Items))
	next := 0
	for r, it := range b.Items {
		if next < len(failed) && failed[next].row == r {
			rej := &consumer.RejectError{Reason: consumer.ReasonModelError, ID: it.ID, StreamSeq: it.StreamSeq,
				Err: fmt.Errorf("the model fails on this record alone (batch %d): %w", b.Seq, failed[next].err)}
			if err := consumer.DeadLetterMsg(ctx, p.js, p.model, msgs[r], rej, p.metrics, p.log); err != nil {
				p.log.Error("dead-letter", zap.Error(err))
			}
			next++
			continue
		}
		okMsgs, okItems = append(okMsgs, msgs[r]), append(okItems, it)
		out.IDs = append(out.IDs, it.ID)
		out.StreamSeqs = append(out.StreamSeqs, it.StreamSeq)
		out.Lengths = append(out.Lengths, int32(len(it.Residues)))
		out.Truncated = append(out.Truncated, it.Truncated)
		out.SeqSHA256s = append(out.SeqSHA256s, it.SeqSHA256)
		out.Descriptions = append(out.Descriptions, it.Description)
		out.InputLengths = append(out.InputLengths, int32(it.InputLength))
		out.StopStripped = append(out.StopStripped, it.StopStripped)
		out.InputIndexes = append(out.InputIndexes, it.InputIndex)
	}
	out.Embeddings = acc.emb
	if err := p.eng.outputs.fill(out, acc.all); err != nil { // a bug, not the records' fault
		p.log.Error("outputs do not match the batch; records nak'd", zap.Uint64("batch", b.Seq), zap.Error(err))
		consumer.NakAll(okMsgs, time.Second)
		return
	}
	p.storeAndAck(ctx, out, okMsgs, okItems, zap.Uint64("batch", b.Seq))
}

// storeAndAck publishes out (publishFitting: rows that can never fit are dead-lettered) and then
// acks msgs, the rows' input messages (items their records), with the fault-injection points
// around both; at shutdown (ctx ended while publishing) the records are nak'd instead. which
// names the batch or record in the log.
func (p *Pipeline) storeAndAck(ctx context.Context, out *arrowout.Batch, msgs []jetstream.Msg, items []batcher.Item, which zap.Field) {
	p.cfg.Hooks.at(ctx, PointBeforePublish, msgs)
	t1 := time.Now()
	msgs, items, err := p.publishFitting(ctx, out, msgs, items)
	if err != nil {
		p.log.Warn("publish abandoned at shutdown; records nak'd", which, zap.Error(err))
		consumer.NakAll(msgs, 0)
		return
	}
	p.metrics.ObservePublish(time.Since(t1))
	p.cfg.Hooks.at(ctx, PointAfterPublish, msgs)
	p.cfg.Hooks.at(ctx, PointBeforeAck, msgs)
	if err := consumer.AckAll(ctx, p.deps.Conn, msgs); err != nil {
		// The outputs are stored; a redelivery is deduplicated downstream by id and seq_sha256.
		p.log.Warn("ack failed after publish", which, zap.Error(err))
		return
	}
	p.metrics.RecordsOut(len(msgs))
	p.stats.acked(items, time.Now())
}

// publishFitting is publishJobs for a batch some rows of which may not fit in a message alone,
// even as row slices (arrowout.Part: a row without per-residue outputs, or one residue over the
// limit, under a tiny max_payload): such a row's record is dead-lettered
// (reason output_too_large, naming its size and the limit) and taken out of the batch, and the
// rest is published again, so a record that can never be stored is neither retried for ever
// nor dropped in silence. It returns the messages and items of the rows stored.
func (p *Pipeline) publishFitting(ctx context.Context, out *arrowout.Batch, msgs []jetstream.Msg, items []batcher.Item) ([]jetstream.Msg, []batcher.Item, error) {
	for {
		err := p.publishJobs(ctx, out, msgs)
		var tl *arrowout.TooLargeError
		if !errors.As(err, &tl) {
			return msgs, items, err
		}
		r := slices.IndexFunc(out.StreamSeqs, func(s uint64) bool { return s == tl.StreamSeq })
		if r < 0 { // cannot happen: the row is one of out's
			return msgs, items, err
		}
		rej := &consumer.RejectError{Reason: consumer.ReasonOutputTooLarge, ID: items[r].ID, StreamSeq: items[r].StreamSeq,
			Err: fmt.Errorf("row too large for max_payload: %d bytes encoded, the limit is %d (max_payload less %d header bytes); raise the server's max_payload, or write float16 per-residue outputs or fewer layers",
				tl.Size, tl.Limit, arrowout.HeaderHeadroom)}
		if err := consumer.DeadLetterMsg(ctx, p.js, p.model, msgs[r], rej, p.metrics, p.log); err != nil {
			p.log.Error("dead-letter", zap.Error(err))
		}
		var rest arrowout.Batch
		rest.Seq = out.Seq
		for i := range out.Rows() {
			if i != r {
				rest.AppendRow(out, i, p.eng.Manifest().EmbeddingDim)
			}
		}
		*out = rest
		msgs, items = slices.Delete(msgs, r, r+1), slices.Delete(items, r, r+1)
		if out.Rows() == 0 {
			return msgs, items, nil
		}
	}
}

// publish stores a batch's outputs on subject under publishPolicy; it gives up only when ctx ends.
func (p *Pipeline) publish(ctx context.Context, subject string, out *arrowout.Batch) error {
	pol := publishPolicy
	pol.OnRetry = func(try int, err error, _ time.Duration) {
		p.deps.Health.PublishFailed() // failing for longer than a bound makes /readyz false
		if try == 1 || try%10 == 0 {
			p.log.Error("publish failed; retrying (inputs held, not nak'd)", zap.Uint64("batch", out.Seq),
				zap.Int("attempt", try), zap.Error(err))
		}
	}
	// A row too large for any message is not retried: publishFitting takes it out.
	pol.Retryable = func(err error) bool { return !errors.Is(err, arrowout.ErrTooLarge) }
	err := retry.Do(ctx, pol, func(ctx context.Context) error {
		_, err := p.pub.PublishTo(ctx, subject, out)
		return err
	})
	if err == nil {
		p.deps.Health.PublishSucceeded()
	}
	return err
}

// watchBacklog reads the durable consumer's pending and unacked counts every BacklogEvery into
// the backlog gauge (what an autoscaler without KEDA can scale on), until ctx ends. In a cluster
// the consumer's leader answers the info request, so the figure is the accurate one.
func (p *Pipeline) watchBacklog(ctx context.Context) {
	t := time.NewTicker(p.cfg.BacklogEvery)
	defer t.Stop()
	for {
		// js.Consumer is one consumer-info request; its cached info is that answer.
		ictx, cancel := context.WithTimeout(ctx, p.cfg.BacklogEvery)
		c, err := p.js.Consumer(ictx, p.cfg.InStream, consumer.Durable(p.model))
		if err == nil {
			info := c.CachedInfo()
			p.metrics.SetBacklog(info.NumPending + uint64(info.NumAckPending))
		}
		cancel()
		if err != nil && ctx.Err() == nil {
			p.log.Debug("backlog: consumer info", zap.Error(err))
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// watchGPU samples the pipeline's GPUs every second through NVML (when the library is there)
// and exports utilisation, memory and the bottleneck tier; it logs when a GPU starves.
func (p *Pipeline) watchGPU(ctx context.Context) (stop func()) {
	// NVML numbers GPUs in PCI order, CUDA by CUDA_VISIBLE_DEVICES: equal unless that is set.
	var idx []int
	for _, d := range p.eng.Devices() {
		idx = append(idx, d.Index)
	}
	s, err := gpurun.NewNVMLSampler(idx,
		gpurun.WithQueued(func() bool { return p.queued.Load() > 0 }),
		gpurun.WithReport(func(g gpurun.GPUSample, tier gpurun.Tier) {
			p.metrics.SetGPU(g.Index, g.Util, g.MemUsed, int(tier))
			if tier == gpurun.TierSevere || tier == gpurun.TierMild {
				p.log.Warn("GPU waiting for input", zap.Int("gpu", g.Index), zap.Float64("busy", g.Util),
					zap.String("tier", tier.String()))
			}
		}))
	if err != nil {
		p.log.Warn("no GPU telemetry", zap.Error(err))
		return func() {}
	}
	if !s.Available() {
		p.log.Warn("no GPU telemetry: NVML unavailable", zap.String("reason", s.Reason()))
		return func() { s.Close() }
	}
	h := s.Start(ctx)
	return func() { h.Stop(); <-h.Done(); s.Close() }
}
