package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
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
	"github.com/seqembed/seqembed/telemetry"
)

// workerConfig is every setting of the pipeline; flags fill it (see register).
type workerConfig struct {
	ModelDir        string
	Device          string
	Threads         int
	MaxBatchTokens  int
	MaxBatchRows    int
	MaxWait         time.Duration
	BucketStep      int
	Overlength      string
	MaxRecordBytes  int
	AckWait         time.Duration
	MaxAckPending   int
	MaxDeliver      int
	Inflight        int
	InStream        string
	OutStream       string
	ShutdownTimeout time.Duration
	CUDAOptions     string
	CUDAGraphs      string

	collectLatency bool // keep per-record latencies (bench); not a flag
}

// runnerOptions are the gpurun options for one runner on dev.
func (c *workerConfig) runnerOptions(dev gpurun.Device) ([]gpurun.Option, error) {
	cuda, err := gpurun.ParseProviderOptions(c.CUDAOptions)
	if err != nil {
		return nil, fmt.Errorf("--cuda-options: %w", err)
	}
	if _, err := gpurun.ParseCUDAGraphs(c.CUDAGraphs); err != nil {
		return nil, fmt.Errorf("--cuda-graphs: %w", err)
	}
	return []gpurun.Option{gpurun.WithDevice(dev), gpurun.WithThreads(c.Threads), gpurun.WithMaxRows(c.MaxBatchRows),
		gpurun.WithCUDAProviderOptions(cuda), gpurun.WithCUDAGraphs(c.CUDAGraphs), gpurun.WithConcurrentRuns(max(1, c.Inflight))}, nil
}

func (c *workerConfig) register(fs *flag.FlagSet) {
	fs.StringVar(&c.ModelDir, "model", "testdata/esm2-tiny", "model directory holding model.onnx and model.json")
	fs.StringVar(&c.Device, "device", "cpu", "where inference runs: cpu, cuda:N, a list (cuda:0,cuda:1: one runner per GPU fed by one batcher) or cuda:all")
	fs.IntVar(&c.Threads, "threads", 0, "ONNX Runtime intra-op threads on the CPU (0 = one per core)")
	fs.IntVar(&c.MaxBatchTokens, "max-batch-tokens", 16384, "padded-token budget of one batch (rows × bucket length)")
	fs.IntVar(&c.MaxBatchRows, "max-batch-rows", 256, "most sequences in one batch")
	fs.DurationVar(&c.MaxWait, "max-wait", 50*time.Millisecond, "a bucket flushes once its oldest record has waited this long")
	fs.IntVar(&c.BucketStep, "bucket-step", 64, "bucket lengths are multiples of this many tokens: smaller pads less but makes more shapes to warm up")
	fs.StringVar(&c.Overlength, "overlength", "truncate", "sequences over the model's max length: truncate (flagged in the output) or reject (dead-lettered)")
	fs.IntVar(&c.MaxRecordBytes, "max-record-bytes", 1<<20, "records with a larger body are dead-lettered")
	fs.DurationVar(&c.AckWait, "ack-wait", 60*time.Second, "server redelivers a record not acked within this time")
	fs.IntVar(&c.MaxAckPending, "max-ack-pending", 4096, "unacked records allowed across all workers of the durable consumer")
	fs.IntVar(&c.MaxDeliver, "max-deliver", 5, "deliveries of one record before it is given up")
	fs.StringVar(&c.CUDAOptions, "cuda-options", "", "extra ONNX Runtime CUDA provider options, key=value,... (e.g. sdpa_kernel=8 for cuDNN attention in mha graphs); they override seqembed's own")
	fs.StringVar(&c.CUDAGraphs, "cuda-graphs", gpurun.GraphsAuto, "CUDA graphs, one per bucket shape captured at warm-up: auto (for --fused mha exports on CUDA), on or off")
	fs.IntVar(&c.Inflight, "inflight", 2, "batches in flight at once per device (inference and publishing overlap)")
	fs.StringVar(&c.InStream, "in-stream", "SEQS", "input stream (work queue, subjects seqs.>)")
	fs.StringVar(&c.OutStream, "out-stream", arrowout.DefaultStreamName, "output stream (subjects embeddings.>)")
	fs.DurationVar(&c.ShutdownTimeout, "shutdown-timeout", 30*time.Second, "on SIGTERM, time allowed to finish in-flight batches")
}

// worker is the whole pipeline of one process: consumer → batcher → gpurun → arrowout.
type worker struct {
	cfg     workerConfig
	nc      *nats.Conn
	js      jetstream.JetStream
	log     *zap.Logger
	metrics *telemetry.Metrics
	health  *telemetry.Health

	runner  *gpurun.Runner   // runners[0]: the model's manifest
	runners []*gpurun.Runner // one per device
	slots   chan *gpurun.Runner
	runs    []atomic.Int64 // batches run per device
	alloc   *gpurun.HostAllocator
	tok     *batcher.Tokenizer
	bat     *batcher.Batcher
	cons    *consumer.Consumer
	pub     *arrowout.Publisher
	model   string

	// embed runs one batch; runner.Embed unless a test wraps it.
	embed  func(ctx context.Context, in gpurun.Input, dst []float32) ([]float32, error)
	warmup time.Duration // how long the bucket-shape warm-up took (CUDA only)
	stats  *workerStats
	queued atomic.Int64 // records taken from the consumer and not yet acked or nak'd
}

// workerStats are the counters the bench harness reads; latencies are kept only if collect.
type workerStats struct {
	busy    *gpurun.BusyMeter
	collect bool

	mu           sync.Mutex
	batches      int
	rows         int
	realTokens   int64
	paddedTokens int64
	latencies    []time.Duration // arrival at the worker → inputs acked, per record
	timeline     []batchPoint    // per batch, kept only if collect (bench --report; report.go)
}

func (s *workerStats) batch(b *batcher.Batch) {
	s.mu.Lock()
	s.batches++
	s.rows += b.Rows
	s.realTokens += int64(b.Tokens)
	s.paddedTokens += int64(b.Rows * b.Cols)
	s.recordBatchLocked(b)
	s.mu.Unlock()
}

func (s *workerStats) acked(items []batcher.Item, at time.Time) {
	if !s.collect {
		return
	}
	s.mu.Lock()
	for _, it := range items {
		s.latencies = append(s.latencies, at.Sub(it.Arrived))
	}
	s.mu.Unlock()
}

// newWorker loads the model and sets up the streams; nothing is pulled until run.
func newWorker(ctx context.Context, cfg workerConfig, nc *nats.Conn, log *zap.Logger, reg prometheus.Registerer, health *telemetry.Health) (*worker, error) {
	js, err := jetstream.New(nc)
	if err != nil {
		return nil, err
	}
	w := &worker{cfg: cfg, nc: nc, js: js, log: log, health: health, stats: &workerStats{busy: gpurun.NewBusyMeter()}}
	if err := w.init(ctx, reg); err != nil {
		w.close()
		return nil, err
	}
	return w, nil
}

func (w *worker) init(ctx context.Context, reg prometheus.Registerer) error {
	cfg := w.cfg
	devs, err := gpurun.ParseDevices(cfg.Device)
	if err != nil {
		return err
	}
	cuda := devs[0].Kind == "cuda"
	overlength, err := consumer.ParseOverlength(cfg.Overlength)
	if err != nil {
		return err
	}
	if cfg.Inflight <= 0 {
		return fmt.Errorf("--inflight %d must be > 0", cfg.Inflight)
	}
	// One runner per device, each with Inflight slots in a pool: a batch runs on whichever
	// device has a free slot first.
	w.slots = make(chan *gpurun.Runner, cfg.Inflight*len(devs))
	w.runs = make([]atomic.Int64, len(devs))
	for _, dev := range devs {
		opts, err := cfg.runnerOptions(dev)
		if err != nil {
			return err
		}
		r, err := gpurun.New(cfg.ModelDir, opts...)
		if err != nil {
			return err
		}
		w.runners = append(w.runners, r)
	}
	for range cfg.Inflight {
		for _, r := range w.runners {
			w.slots <- r
		}
	}
	w.runner = w.runners[0]
	w.embed = w.embedOnFreeDevice
	man := w.runner.Manifest()
	w.model = man.Name
	if w.metrics, err = telemetry.NewMetrics(reg, man.Name); err != nil {
		return err
	}
	if w.tok, err = batcher.NewTokenizer(man.Residues); err != nil {
		return err
	}
	if w.alloc, err = gpurun.NewHostAllocator(cfg.MaxBatchTokens, cuda); err != nil {
		return err
	}
	if w.bat, err = batcher.New(man.MaxLength, batcher.WithTokenizer(w.tok), batcher.WithAllocator(w.alloc),
		batcher.WithMaxBatchTokens(cfg.MaxBatchTokens), batcher.WithMaxBatchRows(cfg.MaxBatchRows),
		batcher.WithMaxWait(cfg.MaxWait), batcher.WithOutputSize(cfg.Inflight*len(devs)), batcher.WithBucketStep(cfg.BucketStep)); err != nil {
		return err
	}
	if w.cons, err = consumer.New(w.js, man.Name, w.tok.Validate, consumer.WithStream(cfg.InStream),
		consumer.WithAckWait(cfg.AckWait), consumer.WithMaxAckPending(cfg.MaxAckPending),
		consumer.WithMaxDeliver(cfg.MaxDeliver), consumer.WithMaxResidues(man.MaxLength),
		consumer.WithOverlength(overlength), consumer.WithMaxRecordBytes(cfg.MaxRecordBytes),
		consumer.WithLogger(w.log), consumer.WithObserver(w.metrics)); err != nil {
		return err
	}
	if cuda {
		// Every bucket shape at its full row count runs once on every device before the worker
		// is ready, so no real batch pays for kernel selection or arena growth (CUDA-graph
		// runners capture each shape's graph instead).
		var shapes [][2]int
		for _, b := range w.bat.Buckets() {
			shapes = append(shapes, [2]int{b.Rows, b.Cols})
		}
		for _, r := range w.runners {
			d, err := r.Warmup(ctx, shapes, w.alloc)
			if err != nil {
				hint := ""
				if r.CUDAGraphs() {
					hint = " (--cuda-graphs off runs the model without CUDA graphs)"
				}
				return fmt.Errorf("%s: %w%s", r.Device(), err, hint)
			}
			w.warmup += d
		}
		w.log.Info("warm-up done", zap.Int("shapes", len(shapes)), zap.Int("devices", len(w.runners)),
			zap.Bool("cuda_graphs", w.runner.CUDAGraphs()), zap.Duration("took", w.warmup))
	}
	if err := startupRetry(ctx, func(ctx context.Context) error { return w.cons.Setup(ctx) }); err != nil {
		return err
	}
	// Create the output stream if it is missing, but never reset an existing one's limits
	// (seqembed streams is the command that changes them).
	if err := startupRetry(ctx, func(ctx context.Context) error {
		_, err := w.js.Stream(ctx, cfg.OutStream)
		if errors.Is(err, jetstream.ErrStreamNotFound) {
			_, err = arrowout.EnsureStream(ctx, w.js, arrowout.StreamConfig{Name: cfg.OutStream})
		}
		return err
	}); err != nil {
		return fmt.Errorf("output stream %s: %w", cfg.OutStream, err)
	}
	meta := arrowout.Meta{Model: man.Name, ModelSHA256: man.SHA256, Pooling: man.Pooling, Dim: man.EmbeddingDim}
	// A short PubAck timeout: after a failover a lost PubAck is retried (same Msg-Ids, deduped)
	// in seconds rather than after the 30 s default; measured in the 3-node cluster test.
	w.pub, err = arrowout.NewPublisher(w.js, "embeddings."+man.Name, meta,
		arrowout.WithMaxPayload(int(w.nc.MaxPayload())-4096), arrowout.WithAckTimeout(5*time.Second))
	return err
}

// startupRetry runs a JetStream set-up call with a 10 s limit per try, up to 6 tries: in a
// cluster that is electing leaders a request can go unanswered (seen in the cluster test: a
// stream lookup waited out the whole context), and a worker must not hang at start.
func startupRetry(ctx context.Context, call func(context.Context) error) error {
	var err error
	for try := 1; try <= 6; try++ {
		tctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		err = call(tctx)
		cancel()
		if err == nil || ctx.Err() != nil || !errors.Is(err, context.DeadlineExceeded) {
			return err
		}
	}
	return err
}

// embedOnFreeDevice runs a batch on the first device with a free slot.
func (w *worker) embedOnFreeDevice(ctx context.Context, in gpurun.Input, dst []float32) ([]float32, error) {
	var r *gpurun.Runner
	select {
	case r = <-w.slots:
	case <-ctx.Done():
		return dst, ctx.Err()
	}
	defer func() { w.slots <- r }()
	for i, x := range w.runners {
		if x == r {
			w.runs[i].Add(1)
		}
	}
	return r.Embed(ctx, in, dst)
}

func (w *worker) close() {
	for _, r := range w.runners {
		r.Close()
	}
	if w.alloc != nil {
		w.alloc.Close()
	}
}

// run pulls and embeds until ctx is done, then shuts down gracefully: stop pulling, nak what the
// client buffered, flush the batcher, finish in-flight batches (publish, ack), return.
func (w *worker) run(ctx context.Context) error {
	defer w.close()
	// The pipeline runs on its own context so that finishing in-flight work outlives ctx.
	pipeCtx, cancelPipe := context.WithCancel(context.Background())
	defer cancelPipe()
	ch, err := w.cons.Start(pipeCtx)
	if err != nil {
		return err
	}
	bh := w.bat.Start(pipeCtx)
	// Records that exhaust MaxDeliver go to the dead-letter subject (every worker watches; the
	// copies are deduplicated).
	adv, err := w.cons.WatchMaxDeliveries(pipeCtx)
	if err != nil {
		ch.Stop()
		bh.Stop()
		return err
	}
	defer func() { adv.Stop(); <-adv.Done() }()

	// feeder: consumer records → batcher.
	go func() {
		for rec := range ch.Records() {
			it := batcher.Item{ID: rec.ID, Residues: rec.Residues, StreamSeq: rec.StreamSeq, Truncated: rec.Truncated, Ref: rec.Msg}
			w.queued.Add(1)
			if err := w.bat.Add(pipeCtx, it); err != nil {
				w.queued.Add(-1)
				_ = rec.Msg.Nak()
			}
		}
		bh.Drain()
	}()

	if w.runner.Device().Kind == "cuda" {
		stopGPU := w.watchGPU(pipeCtx)
		defer stopGPU()
	}
	var wg sync.WaitGroup
	for range w.cfg.Inflight * len(w.runners) {
		wg.Go(func() { w.process(pipeCtx) })
	}
	w.health.SetReady(true)
	w.log.Info("worker ready", zap.String("model", w.model), zap.String("device", w.cfg.Device),
		zap.String("subject", consumer.Subject(w.model)))

	<-ctx.Done()
	w.health.SetReady(false)
	w.log.Info("shutting down: no more pulls, finishing in-flight batches")
	ch.Stop()
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(w.cfg.ShutdownTimeout):
		w.log.Warn("shutdown timeout: cancelling in-flight batches (their records will be redelivered)")
		cancelPipe()
		<-done
	}
	<-bh.Done()
	for _, it := range bh.Pending() {
		_ = it.Ref.(jetstream.Msg).Nak()
		w.queued.Add(-1)
	}
	w.log.Info("worker stopped")
	return nil
}

// process takes batches off the batcher until it closes: embed, publish, then ack.
func (w *worker) process(ctx context.Context) {
	var emb []float32
	var out arrowout.Batch
	var msgs []jetstream.Msg
	idleSince := time.Now()
	for b := range w.bat.Out() {
		w.metrics.ObserveRunnerIdle(time.Since(idleSince))
		w.metrics.InflightAdd(1)
		w.metrics.ObserveBatch(b.Reason, b.Rows, b.Rows*b.Cols, b.Tokens, time.Since(b.Oldest))
		w.stats.batch(b)
		msgs = msgs[:0]
		for _, it := range b.Items {
			msgs = append(msgs, it.Ref.(jetstream.Msg))
		}
		emb = w.embedPublish(ctx, b, emb[:0], &out, msgs)
		w.queued.Add(-int64(len(msgs)))
		w.metrics.InflightAdd(-1)
		idleSince = time.Now()
	}
}

// rowError is one batch row that failed on its own.
type rowError struct {
	row int
	err error
}

// embedPublish embeds one batch, publishes the rows that worked and acks their inputs. A failed
// run is split in halves and retried, so a CUDA out-of-memory shrinks the batch and a record that
// breaks the model is isolated: a row that fails alone while other rows of its batch succeed is
// dead-lettered (reason model_error); if no row succeeds, every input is nak'd for redelivery
// (a failing device is not the records' fault). While the batch is in flight its inputs get
// InProgress every AckWait/3, so a long batch is never redelivered.
func (w *worker) embedPublish(ctx context.Context, b *batcher.Batch, emb []float32, out *arrowout.Batch, msgs []jetstream.Msg) []float32 {
	defer heartbeat(msgs, w.cfg.AckWait/3)()
	t0 := time.Now()
	emb, failed := w.embedRows(ctx, b, 0, b.Rows, emb, nil)
	w.metrics.ObserveInference(time.Since(t0))
	b.Release()           // token buffers are no longer needed; Items stay readable
	if ctx.Err() != nil { // shutdown timeout: hand the records to another worker now
		w.log.Warn("batch abandoned at shutdown; records nak'd", zap.Uint64("batch", b.Seq), zap.Int("rows", b.Rows))
		consumer.NakAll(msgs, 0)
		return emb
	}
	if len(failed) == b.Rows {
		w.log.Error("inference failed; records nak'd", zap.Uint64("batch", b.Seq), zap.Int("rows", b.Rows),
			zap.Uint64("first_stream_seq", b.Items[0].StreamSeq), zap.Error(failed[0].err))
		consumer.NakAll(msgs, time.Second)
		return emb
	}
	out.Seq = b.Seq
	out.IDs, out.StreamSeqs, out.Lengths, out.Truncated = out.IDs[:0], out.StreamSeqs[:0], out.Lengths[:0], out.Truncated[:0]
	okMsgs := make([]jetstream.Msg, 0, len(msgs))
	okItems := make([]batcher.Item, 0, len(b.Items))
	next := 0
	for r, it := range b.Items {
		if next < len(failed) && failed[next].row == r {
			rej := &consumer.RejectError{Reason: consumer.ReasonModelError, ID: it.ID, StreamSeq: it.StreamSeq,
				Err: fmt.Errorf("the model fails on this record alone (batch %d): %w", b.Seq, failed[next].err)}
			if err := consumer.DeadLetterMsg(ctx, w.js, w.model, msgs[r], rej, w.metrics, w.log); err != nil {
				w.log.Error("dead-letter", zap.Error(err))
			}
			next++
			continue
		}
		okMsgs, okItems = append(okMsgs, msgs[r]), append(okItems, it)
		out.IDs = append(out.IDs, it.ID)
		out.StreamSeqs = append(out.StreamSeqs, it.StreamSeq)
		out.Lengths = append(out.Lengths, int32(len(it.Residues)))
		out.Truncated = append(out.Truncated, it.Truncated)
	}
	out.Embeddings = emb
	crashPoint("before-publish")
	t1 := time.Now()
	if err := w.publish(ctx, out); err != nil {
		w.log.Warn("publish abandoned at shutdown; records nak'd", zap.Uint64("batch", b.Seq), zap.Error(err))
		consumer.NakAll(okMsgs, 0)
		return emb
	}
	w.metrics.ObservePublish(time.Since(t1))
	crashPoint("after-publish")
	if crashAt == "partial-ack" {
		ackHalfThenCrash(ctx, w.nc, okMsgs)
	}
	if err := consumer.AckAll(ctx, w.nc, okMsgs); err != nil {
		// The outputs are stored; a redelivery is deduplicated downstream by id.
		w.log.Warn("ack failed after publish", zap.Uint64("batch", b.Seq), zap.Error(err))
		return emb
	}
	w.metrics.RecordsOut(len(okMsgs))
	w.stats.acked(okItems, time.Now())
	return emb
}

// publish stores a batch's outputs, retrying with backoff (100 ms doubling to 5 s) for as long
// as it takes: the output stream may be full or the connection down. The inputs stay in flight
// (InProgress keeps them) instead of being nak'd, which would spend their MaxDeliver on a fault
// that is not theirs. It gives up only when ctx ends (shutdown timeout).
func (w *worker) publish(ctx context.Context, out *arrowout.Batch) error {
	delay := 100 * time.Millisecond
	for attempt := 1; ; attempt++ {
		_, err := w.pub.Publish(ctx, out)
		if err == nil {
			return nil
		}
		if ctx.Err() != nil {
			return err
		}
		if attempt == 1 || attempt%10 == 0 {
			w.log.Error("publish failed; retrying (inputs held, not nak'd)", zap.Uint64("batch", out.Seq),
				zap.Int("attempt", attempt), zap.Error(err))
		}
		select {
		case <-ctx.Done():
			return err
		case <-time.After(delay):
		}
		delay = min(2*delay, 5*time.Second)
	}
}

// embedRows embeds rows [lo, hi) of b, appending their embeddings to emb in row order; a failed
// run is split in halves down to single rows. Rows that failed are returned in row order.
func (w *worker) embedRows(ctx context.Context, b *batcher.Batch, lo, hi int, emb []float32, failed []rowError) ([]float32, []rowError) {
	c := b.Cols
	in := gpurun.Input{IDs: b.InputIDs[lo*c : hi*c], Mask: b.Mask[lo*c : hi*c], Rows: hi - lo, Cols: c}
	n0 := len(emb)
	end := w.stats.busy.Begin()
	emb, err := w.embed(ctx, in, emb)
	end()
	if err == nil {
		return emb, failed
	}
	emb = emb[:n0]
	if hi-lo == 1 || ctx.Err() != nil {
		for r := lo; r < hi; r++ {
			failed = append(failed, rowError{r, err})
		}
		return emb, failed
	}
	w.log.Warn("batch failed; retrying in halves", zap.Uint64("batch", b.Seq), zap.Int("rows", hi-lo),
		zap.Int("cols", c), zap.Uint64("first_stream_seq", b.Items[lo].StreamSeq), zap.Error(err))
	mid := (lo + hi) / 2
	emb, failed = w.embedRows(ctx, b, lo, mid, emb, failed)
	return w.embedRows(ctx, b, mid, hi, emb, failed)
}

// heartbeat sends InProgress for msgs every interval until the returned stop is called; stop
// returns once the heartbeat goroutine has finished with msgs.
func heartbeat(msgs []jetstream.Msg, interval time.Duration) (stop func()) {
	if interval <= 0 {
		return func() {}
	}
	done, finished := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(finished)
		t := time.NewTicker(interval)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-t.C:
				for _, m := range msgs {
					_ = m.InProgress()
				}
			}
		}
	}()
	return func() { close(done); <-finished }
}

// watchGPU samples the worker's GPU every second through NVML (when the library is there) and
// exports utilisation, memory and the bottleneck tier; it logs when the GPU starves.
func (w *worker) watchGPU(ctx context.Context) (stop func()) {
	// NVML numbers GPUs in PCI order, CUDA by CUDA_VISIBLE_DEVICES: equal unless that is set.
	var idx []int
	for _, r := range w.runners {
		idx = append(idx, r.Device().Index)
	}
	s, err := gpurun.NewNVMLSampler(idx,
		gpurun.WithQueued(func() bool { return w.queued.Load() > 0 }),
		gpurun.WithReport(func(g gpurun.GPUSample, tier gpurun.Tier) {
			w.metrics.SetGPU(g.Index, g.Util, g.MemUsed, int(tier))
			if tier == gpurun.TierSevere || tier == gpurun.TierMild {
				w.log.Warn("GPU waiting for input", zap.Int("gpu", g.Index), zap.Float64("busy", g.Util),
					zap.String("tier", tier.String()))
			}
		}))
	if err != nil {
		w.log.Warn("no GPU telemetry", zap.Error(err))
		return func() {}
	}
	if !s.Available() {
		w.log.Warn("no GPU telemetry: NVML unavailable", zap.String("reason", s.Reason()))
		return func() { s.Close() }
	}
	h := s.Start(ctx)
	return func() { h.Stop(); <-h.Done(); s.Close() }
}

func runWorkerCmd(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("worker", flag.ContinueOnError)
	var cfg workerConfig
	cfg.register(fs)
	var nf natsFlags
	nf.register(fs)
	httpAddr := fs.String("http-addr", ":9090", "address of /metrics, /healthz and /readyz (empty = off)")
	logLevel := fs.String("log-level", "info", "debug, info, warn or error")
	logFormat := fs.String("log-format", "json", "json or console")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	log, err := telemetry.NewLogger(*logLevel, *logFormat)
	if err != nil {
		return err
	}
	defer log.Sync()
	nc, err := nf.connect("seqembed worker", log)
	if err != nil {
		return err
	}
	defer nc.Drain()
	reg := prometheus.NewRegistry()
	health := telemetry.NewHealth()
	if *httpAddr != "" {
		srv, err := telemetry.NewServer(*httpAddr, reg, health, log)
		if err != nil {
			return err
		}
		if err := srv.Start(); err != nil {
			return err
		}
		defer srv.Shutdown(context.Background())
		log.Info("telemetry", zap.String("addr", srv.Addr()))
	}
	w, err := newWorker(ctx, cfg, nc, log, reg, health)
	if err != nil {
		health.Fail(err)
		return err
	}
	return w.run(ctx)
}
