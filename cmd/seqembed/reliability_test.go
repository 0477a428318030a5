package main

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/seqembed/seqembed/arrowout"
	"github.com/seqembed/seqembed/consumer"
	"github.com/seqembed/seqembed/gpurun"
	"github.com/seqembed/seqembed/internal/natstest"
	"github.com/seqembed/seqembed/telemetry"
)

// Reliability tests: several workers on one durable consumer, graceful shutdown mid-stream, a full
// output stream, and duplicate ids at publish time. All run against a real in-process nats-server.

const relAminoAcids = "ACDEFGHIKLMNPQRSTVWY"

// relRandomSeqs returns n sequences of 30..400 residues drawn from the 20 standard amino acids,
// keyed by id "<prefix>0".."<prefix>n-1", from a fixed seed.
func relRandomSeqs(prefix string, n int, seed uint64) (ids []string, seqs map[string]string) {
	rng := rand.New(rand.NewPCG(seed, seed^0x5eed))
	seqs = make(map[string]string, n)
	for i := range n {
		l := 30 + rng.IntN(371)
		var b strings.Builder
		b.Grow(l)
		for range l {
			b.WriteByte(relAminoAcids[rng.IntN(len(relAminoAcids))])
		}
		id := fmt.Sprintf("%s%d", prefix, i)
		ids = append(ids, id)
		seqs[id] = b.String()
	}
	return ids, seqs
}

// relPublish publishes one record per id to the model's input subject and waits for every PubAck.
func relPublish(t *testing.T, ctx context.Context, js jetstream.JetStream, model string, ids []string, seqs map[string]string) {
	t.Helper()
	futs := make([]jetstream.PubAckFuture, 0, len(ids))
	for _, id := range ids {
		m := nats.NewMsg(consumer.Subject(model))
		m.Header.Set(consumer.HeaderID, id)
		m.Data = []byte(seqs[id])
		f, err := js.PublishMsgAsync(m)
		if err != nil {
			t.Fatal(err)
		}
		futs = append(futs, f)
	}
	for i, f := range futs {
		select {
		case <-f.Ok():
		case err := <-f.Err():
			t.Fatalf("publishing %s: %v", ids[i], err)
		case <-ctx.Done():
			t.Fatalf("publishing %s: %v", ids[i], ctx.Err())
		}
	}
}

// relWorker is a worker whose run loop is going in the background.
type relWorker struct {
	w    *worker
	stop context.CancelFunc
	done chan error
}

// relStartWorker connects to srv on its own connection, builds a worker (streams and durable
// consumer set up) and starts its run loop.
func relStartWorker(t *testing.T, ctx context.Context, srv *server.Server, cfg workerConfig) *relWorker {
	t.Helper()
	nc, _ := natstest.Connect(t, srv)
	w, err := newWorker(ctx, cfg, nc, zap.NewNop(), prometheus.NewRegistry(), telemetry.NewHealth())
	if err != nil {
		t.Fatal(err)
	}
	return relRunWorker(t, ctx, w)
}

func relRunWorker(t *testing.T, ctx context.Context, w *worker) *relWorker {
	t.Helper()
	wctx, stop := context.WithCancel(ctx)
	rw := &relWorker{w: w, stop: stop, done: make(chan error, 1)}
	go func() { rw.done <- w.run(wctx) }()
	t.Cleanup(func() { // a test that fails early still stops its workers before the server goes
		rw.stop()
		select {
		case <-rw.done:
		case <-time.After(2 * w.cfg.ShutdownTimeout):
		}
	})
	return rw
}

// shutdown cancels the worker and waits for run to return; it must return nil within within.
func (rw *relWorker) shutdown(t *testing.T, within time.Duration) {
	t.Helper()
	rw.stop()
	select {
	case err := <-rw.done:
		rw.done <- err // for the cleanup
		if err != nil {
			t.Fatalf("worker run returned %v", err)
		}
	case <-time.After(within):
		t.Fatalf("worker run did not return within %s of its context being cancelled", within)
	}
}

func (rw *relWorker) rows() int {
	rw.w.stats.mu.Lock()
	defer rw.w.stats.mu.Unlock()
	return rw.w.stats.rows
}

// relOutput reads the output stream from its start through an ordered consumer.
type relOutput struct {
	t     *testing.T
	oc    jetstream.Consumer
	seen  map[string]int // id → rows with that id
	rows  map[string]arrowout.Row
	msgs  int
	known map[string]string // id → published sequence; nil = any id accepted
}

func relNewOutput(t *testing.T, ctx context.Context, js jetstream.JetStream, known map[string]string) *relOutput {
	t.Helper()
	oc, err := js.OrderedConsumer(ctx, arrowout.DefaultStreamName, jetstream.OrderedConsumerConfig{})
	if err != nil {
		t.Fatal(err)
	}
	return &relOutput{t: t, oc: oc, seen: map[string]int{}, rows: map[string]arrowout.Row{}, known: known}
}

// next reads one output message (waiting up to wait) and records its rows; false on timeout.
func (r *relOutput) next(wait time.Duration) bool {
	r.t.Helper()
	m, err := r.oc.Next(jetstream.FetchMaxWait(wait))
	if err != nil {
		return false
	}
	meta, rows, err := arrowout.Decode(m.Data())
	if err != nil {
		r.t.Fatalf("decoding output message: %v", err)
	}
	if meta.Model != "esm2-tiny" || meta.Dim != 64 {
		r.t.Fatalf("output meta %+v", meta)
	}
	r.msgs++
	for _, row := range rows {
		if r.known != nil {
			seq, ok := r.known[row.ID]
			if !ok {
				r.t.Fatalf("output has id %q that was never published", row.ID)
			}
			if int(row.Length) != len(seq) || row.Truncated {
				r.t.Errorf("%s: length %d truncated %v, want %d false", row.ID, row.Length, row.Truncated, len(seq))
			}
		}
		if len(row.Embedding) != 64 {
			r.t.Errorf("%s: embedding of %d values", row.ID, len(row.Embedding))
		}
		r.seen[row.ID]++
		r.rows[row.ID] = row
	}
	return true
}

// until reads output until want distinct ids were seen, failing after timeout.
func (r *relOutput) until(want int, timeout time.Duration) {
	r.t.Helper()
	deadline := time.Now().Add(timeout)
	for len(r.seen) < want {
		left := time.Until(deadline)
		if left <= 0 {
			r.t.Fatalf("output has %d of %d ids after %s", len(r.seen), want, timeout)
		}
		r.next(min(left, time.Second))
	}
}

// drainFor keeps reading output for d (to catch late duplicates).
func (r *relOutput) drainFor(d time.Duration) {
	r.t.Helper()
	for deadline := time.Now().Add(d); time.Now().Before(deadline); {
		r.next(min(time.Until(deadline), 200*time.Millisecond) + time.Millisecond)
	}
}

// TestHorizontalScaling: three workers (own connections, same model, so the same durable
// consumer) share 300 records: every id is output exactly once and at least two workers
// embedded some of them.
func TestHorizontalScaling(t *testing.T) {
	requireORT(t)
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	srv := natstest.Server(t, nil)
	_, js := natstest.Connect(t, srv)

	cfg := testConfig(t)
	cfg.Threads = 1
	cfg.ShutdownTimeout = 10 * time.Second
	workers := make([]*relWorker, 3)
	for i := range workers {
		workers[i] = relStartWorker(t, ctx, srv, cfg)
	}
	model := workers[0].w.model

	ids, seqs := relRandomSeqs("r", 300, 1)
	out := relNewOutput(t, ctx, js, seqs)
	relPublish(t, ctx, js, model, ids, seqs)
	out.until(len(ids), 60*time.Second)
	out.drainFor(500 * time.Millisecond)

	for _, id := range ids {
		if n := out.seen[id]; n != 1 {
			t.Errorf("%s appears %d times in the output, want 1", id, n)
		}
	}
	for _, rw := range workers {
		rw.shutdown(t, cfg.ShutdownTimeout+5*time.Second)
	}
	busy, total := 0, 0
	counts := make([]int, len(workers))
	for i, rw := range workers {
		counts[i] = rw.rows()
		total += counts[i]
		if counts[i] > 0 {
			busy++
		}
	}
	t.Logf("rows per worker %v, %d output messages", counts, out.msgs)
	if busy < 2 {
		t.Errorf("only %d worker(s) embedded anything (rows per worker %v): the durable consumer did not spread the work", busy, counts)
	}
	if total != len(ids) {
		t.Errorf("workers embedded %d rows in all, want %d (rows per worker %v)", total, len(ids), counts)
	}
	waitQueueEmpty(t, js, model)
}

// TestGracefulShutdownLosesNothing: a worker cancelled mid-stream returns nil within its shutdown
// timeout; what it had buffered is nak'd, not left to the ack wait, so a second worker finishes
// every record well before the (default 60 s) ack wait could expire. Every id is in the output,
// duplicates allowed (a record whose ack was lost), losses not.
func TestGracefulShutdownLosesNothing(t *testing.T) {
	requireORT(t)
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	srv := natstest.Server(t, nil)
	_, js := natstest.Connect(t, srv)

	cfg := testConfig(t)
	cfg.ShutdownTimeout = 5 * time.Second
	// A graceful stop finishes everything the worker already holds (client buffer, Records
	// channel, batcher): cap that so a good part of the 500 is left for the second worker.
	cfg.MaxAckPending = 64
	if cfg.AckWait < 60*time.Second {
		t.Fatalf("ack wait %s: the test relies on it being long", cfg.AckWait)
	}
	w1 := relStartWorker(t, ctx, srv, cfg)
	model := w1.w.model

	ids, seqs := relRandomSeqs("g", 500, 2)
	out := relNewOutput(t, ctx, js, seqs)
	relPublish(t, ctx, js, model, ids, seqs)

	// Stop the first worker as soon as its first output message is stored.
	for deadline := time.Now().Add(30 * time.Second); out.msgs == 0; {
		if time.Now().After(deadline) {
			t.Fatal("no output from the first worker in 30s")
		}
		out.next(time.Second)
	}
	w1.shutdown(t, cfg.ShutdownTimeout+3*time.Second)
	out.drainFor(200 * time.Millisecond)
	firstRows := w1.rows()
	t.Logf("first worker embedded %d rows before stopping; %d ids in the output so far", firstRows, len(out.seen))
	if firstRows >= len(ids) {
		t.Fatalf("the first worker finished all %d records before its shutdown: the restart path was not exercised", firstRows)
	}

	// A fresh worker on its own connection takes over. With a 60 s ack wait, 20 s is only
	// enough if the first worker nak'd everything it held rather than leaving it unacked.
	w2 := relStartWorker(t, ctx, srv, cfg)
	out.until(len(ids), 20*time.Second)
	out.drainFor(500 * time.Millisecond)
	w2.shutdown(t, cfg.ShutdownTimeout+3*time.Second)

	dups := 0
	for _, id := range ids {
		switch n := out.seen[id]; {
		case n == 0:
			t.Errorf("%s lost: not in the output", id)
		case n > 1:
			dups += n - 1
		}
	}
	if len(out.seen) != len(ids) {
		t.Errorf("%d distinct ids in the output, want %d", len(out.seen), len(ids))
	}
	t.Logf("second worker embedded %d rows; %d duplicate rows in the output", w2.rows(), dups)
	if w2.rows() == 0 {
		t.Errorf("the second worker embedded nothing")
	}
	waitQueueEmpty(t, js, model)
}

// TestOutputStreamFullNaksInputs: while the output stream rejects every part (DiscardNew, tiny
// MaxBytes) no input is acked — they all stay in the work queue — and once there is room every
// record is embedded and the queue ends empty.
func TestOutputStreamFullNaksInputs(t *testing.T) {
	requireORT(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	srv := natstest.Server(t, nil)
	_, js := natstest.Connect(t, srv)

	// An operator-made output stream with a small limit, before the worker starts.
	const tiny = 256 // smaller than any single output message (the Arrow schema alone is larger)
	if _, err := arrowout.EnsureStream(ctx, js, arrowout.StreamConfig{MaxBytes: tiny}); err != nil {
		t.Fatal(err)
	}
	cfg := testConfig(t)
	cfg.ShutdownTimeout = 5 * time.Second
	nc, _ := natstest.Connect(t, srv)
	w, err := newWorker(ctx, cfg, nc, zap.NewNop(), prometheus.NewRegistry(), telemetry.NewHealth())
	if err != nil {
		t.Fatal(err)
	}
	model := w.model
	outStream, err := js.Stream(ctx, arrowout.DefaultStreamName)
	if err != nil {
		t.Fatal(err)
	}
	setMaxBytes := func(n int64) {
		t.Helper()
		info, err := outStream.Info(ctx)
		if err != nil {
			t.Fatal(err)
		}
		sc := info.Config
		sc.MaxBytes = n
		if _, err := js.UpdateStream(ctx, sc); err != nil {
			t.Fatal(err)
		}
	}
	info, err := outStream.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	// arrowout.EnsureStream updates an existing stream to its config, so the worker's call (no
	// MaxBytes: unlimited) replaces the operator's limit. Put it back.
	t.Logf("output stream MaxBytes after newWorker: %d (set to %d before)", info.Config.MaxBytes, tiny)
	if info.Config.MaxBytes != tiny {
		setMaxBytes(tiny)
	}
	rw := relRunWorker(t, ctx, w)

	ids, seqs := relRandomSeqs("f", 20, 3)
	relPublish(t, ctx, js, model, ids, seqs)

	// The worker embeds, fails to publish, naks with a delay; the inputs must stay.
	in, err := js.Stream(ctx, "SEQS")
	if err != nil {
		t.Fatal(err)
	}
	cons, err := js.Consumer(ctx, "SEQS", consumer.Durable(model))
	if err != nil {
		t.Fatal(err)
	}
	checkNoneAcked := func() *jetstream.ConsumerInfo {
		t.Helper()
		si, err := in.Info(ctx, jetstream.WithSubjectFilter(consumer.Subject(model)))
		if err != nil {
			t.Fatal(err)
		}
		ci, err := cons.Info(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if left := si.State.Subjects[consumer.Subject(model)]; left != uint64(len(ids)) {
			t.Fatalf("input subject holds %d messages while the output stream is full, want %d (an input was acked or lost)", left, len(ids))
		}
		if ci.AckFloor.Stream != 0 {
			t.Fatalf("consumer ack floor at stream seq %d while the output stream is full: an input was acked", ci.AckFloor.Stream)
		}
		if got := ci.NumAckPending + int(ci.NumPending); got != len(ids) {
			t.Fatalf("consumer accounts for %d records (ack pending %d, pending %d, redelivered %d), want %d",
				got, ci.NumAckPending, ci.NumPending, ci.NumRedelivered, len(ids))
		}
		return ci
	}
	// Wait until the worker has demonstrably tried (and failed) to publish at least once.
	for deadline := time.Now().Add(10 * time.Second); rw.rows() == 0; time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the worker embedded nothing in 10s")
		}
	}
	// Watch for 2 s (about 3 deliveries with the worker's 1 s nak delay): the default MaxDeliver
	// of 5 would strand the records after about 4 s of a full output stream, see
	// TestOutputStreamFullOutlastsMaxDeliver.
	var ci *jetstream.ConsumerInfo
	for end := time.Now().Add(2 * time.Second); time.Now().Before(end); time.Sleep(250 * time.Millisecond) {
		ci = checkNoneAcked()
	}
	oi, err := outStream.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if oi.State.Msgs != 0 {
		t.Fatalf("the full output stream stored %d messages", oi.State.Msgs)
	}
	t.Logf("while full: %d rows embedded (retries), consumer ack pending %d, pending %d, redelivered %d",
		rw.rows(), ci.NumAckPending, ci.NumPending, ci.NumRedelivered)

	// Room again: everything must come through.
	out := relNewOutput(t, ctx, js, seqs)
	setMaxBytes(-1)
	out.until(len(ids), 20*time.Second)
	for _, id := range ids {
		if n := out.seen[id]; n != 1 {
			t.Errorf("%s appears %d times in the output, want 1", id, n)
		}
	}
	rw.shutdown(t, cfg.ShutdownTimeout+3*time.Second)
	waitQueueEmpty(t, js, model)
	if dls, err := consumer.ReadDeadLetters(ctx, js, "SEQS", model, 0); err != nil || len(dls) != 0 {
		t.Errorf("dead letters %v (err %v), want none", dls, err)
	}
}

// TestDuplicateIDPublish: a FASTA file with one id twice (different sequences): publishFASTA
// stores the first, reports the second as a duplicate, and the output has that id once, with the
// first sequence.
func TestDuplicateIDPublish(t *testing.T) {
	requireORT(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	srv := natstest.Server(t, nil)
	_, js := natstest.Connect(t, srv)

	cfg := testConfig(t)
	cfg.ShutdownTimeout = 5 * time.Second
	nc, _ := natstest.Connect(t, srv)
	w, err := newWorker(ctx, cfg, nc, zap.NewNop(), prometheus.NewRegistry(), telemetry.NewHealth())
	if err != nil {
		t.Fatal(err)
	}
	model := w.model

	ids, seqs := relRandomSeqs("d", 5, 4)
	first, second := seqs["d2"], strings.Repeat("MKTAYIAKQR", 7) // different lengths: 30..400 vs 70
	if len(first) == len(second) {
		second += "G"
	}
	var fa strings.Builder
	for _, id := range ids {
		fmt.Fprintf(&fa, ">%s some description\n%s\n", id, seqs[id])
	}
	fmt.Fprintf(&fa, ">d2 the same id again\n%s\n", second)
	path := filepath.Join(t.TempDir(), "dup.fasta")
	if err := os.WriteFile(path, []byte(fa.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	pubNC, _ := natstest.Connect(t, srv)
	st, err := publishFASTA(ctx, pubNC, path, model, nil, zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	if st.Records != len(ids)+1 || st.Stored != len(ids) || st.Duplicates != 1 || st.DeadLettered != 0 {
		t.Fatalf("publish stats %+v, want %d records, %d stored, 1 duplicate, 0 dead-lettered", st, len(ids)+1, len(ids))
	}
	// Before any worker runs, the input subject holds exactly one message per distinct id.
	in, err := js.Stream(ctx, "SEQS")
	if err != nil {
		t.Fatal(err)
	}
	si, err := in.Info(ctx, jetstream.WithSubjectFilter(consumer.Subject(model)))
	if err != nil {
		t.Fatal(err)
	}
	if got := si.State.Subjects[consumer.Subject(model)]; got != uint64(len(ids)) {
		t.Fatalf("input subject holds %d messages, want %d (the duplicate was stored)", got, len(ids))
	}

	rw := relRunWorker(t, ctx, w)
	out := relNewOutput(t, ctx, js, seqs) // seqs["d2"] is the first sequence
	out.until(len(ids), 20*time.Second)
	out.drainFor(500 * time.Millisecond)
	for _, id := range ids {
		if n := out.seen[id]; n != 1 {
			t.Errorf("%s appears %d times in the output, want 1", id, n)
		}
	}
	if r := out.rows["d2"]; int(r.Length) != len(first) {
		t.Errorf("d2: output length %d, want %d (the first sequence; the duplicate has %d)", r.Length, len(first), len(second))
	}
	rw.shutdown(t, cfg.ShutdownTimeout+3*time.Second)
	waitQueueEmpty(t, js, model)
}

// The tests below were written to demonstrate bugs in worker.go found while writing the ones
// above (inputs stranded after MaxDeliver naks, a panic at the shutdown timeout, a heartbeat data
// race); they pass since the fixes.

// TestOutputStreamFullOutlastsMaxDeliver: an output stream that stays full longer than about
// MaxDeliver × 1 s must not lose inputs: once there is room, every record is embedded.
func TestOutputStreamFullOutlastsMaxDeliver(t *testing.T) {
	requireORT(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	srv := natstest.Server(t, nil)
	_, js := natstest.Connect(t, srv)
	cfg := testConfig(t)
	cfg.ShutdownTimeout = 5 * time.Second
	nc, _ := natstest.Connect(t, srv)
	w, err := newWorker(ctx, cfg, nc, zap.NewNop(), prometheus.NewRegistry(), telemetry.NewHealth())
	if err != nil {
		t.Fatal(err)
	}
	outStream, err := js.Stream(ctx, arrowout.DefaultStreamName)
	if err != nil {
		t.Fatal(err)
	}
	setMaxBytes := func(n int64) {
		t.Helper()
		info, err := outStream.Info(ctx)
		if err != nil {
			t.Fatal(err)
		}
		sc := info.Config
		sc.MaxBytes = n
		if _, err := js.UpdateStream(ctx, sc); err != nil {
			t.Fatal(err)
		}
	}
	setMaxBytes(256)
	rw := relRunWorker(t, ctx, w)
	ids, seqs := relPublishFresh(t, ctx, js, w.model, "m", 20)
	time.Sleep(time.Duration(cfg.MaxDeliver+2) * time.Second) // the output stream stays full
	out := relNewOutput(t, ctx, js, seqs)
	setMaxBytes(-1)
	out.until(len(ids), 15*time.Second) // fails: 0 of 20 ids, the input subject still holds 20
	rw.shutdown(t, cfg.ShutdownTimeout+3*time.Second)
	waitQueueEmpty(t, js, w.model)
}

// relPublishFresh publishes n random records with ids "<prefix>0".. and returns them.
func relPublishFresh(t *testing.T, ctx context.Context, js jetstream.JetStream, model, prefix string, n int) ([]string, map[string]string) {
	t.Helper()
	ids, seqs := relRandomSeqs(prefix, n, 9)
	relPublish(t, ctx, js, model, ids, seqs)
	return ids, seqs
}

// TestShutdownTimeoutDuringRun: a run that completes just as the shutdown timeout cancels the
// pipeline must not crash the worker: run returns nil and the batch's inputs are nak'd.
func TestShutdownTimeoutDuringRun(t *testing.T) {
	requireORT(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	srv := natstest.Server(t, nil)
	_, js := natstest.Connect(t, srv)
	cfg := testConfig(t)
	cfg.ShutdownTimeout = 200 * time.Millisecond
	nc, _ := natstest.Connect(t, srv)
	w, err := newWorker(ctx, cfg, nc, zap.NewNop(), prometheus.NewRegistry(), telemetry.NewHealth())
	if err != nil {
		t.Fatal(err)
	}
	// The run finishes successfully, but only as the shutdown timeout cancels its context (what
	// Runner.Embed does when ORT completes before Terminate takes effect).
	next := w.embed
	inRun := make(chan struct{}, 1)
	w.embed = func(ctx context.Context, in gpurun.Input, dst []float32) ([]float32, error) {
		out, err := next(context.WithoutCancel(ctx), in, dst)
		select {
		case inRun <- struct{}{}:
		default:
		}
		<-ctx.Done()
		return out, err
	}
	rw := relRunWorker(t, ctx, w)
	ids, seqs := relPublishFresh(t, ctx, js, w.model, "s", 3)
	select {
	case <-inRun:
	case <-time.After(10 * time.Second):
		t.Fatal("no batch reached the model in 10s")
	}
	rw.shutdown(t, cfg.ShutdownTimeout+5*time.Second) // panics inside run before returning

	// The nak'd inputs go to a second worker.
	relStartWorker(t, ctx, srv, testConfig(t))
	out := relNewOutput(t, ctx, js, seqs)
	out.until(len(ids), 15*time.Second)
	waitQueueEmpty(t, js, w.model)
}

// TestHeartbeatNoRace: with a short AckWait the InProgress heartbeat fires during batches; it
// must not touch the worker's reused msgs slice after the batch is done (run with -race).
func TestHeartbeatNoRace(t *testing.T) {
	requireORT(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	srv := natstest.Server(t, nil)
	_, js := natstest.Connect(t, srv)
	cfg := testConfig(t)
	cfg.AckWait = 30 * time.Millisecond // heartbeat every 10 ms
	cfg.MaxDeliver = 100                // records waiting in buffers are redelivered; keep them
	rw := relStartWorker(t, ctx, srv, cfg)
	out := relNewOutput(t, ctx, js, nil)
	ids, _ := relPublishFresh(t, ctx, js, rw.w.model, "h", 300)
	out.until(len(ids), 40*time.Second)
	rw.shutdown(t, cfg.ShutdownTimeout+5*time.Second)
}
