package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"

	"github.com/seqembed/seqembed/arrowout"
	"github.com/seqembed/seqembed/consumer"
	"github.com/seqembed/seqembed/gpurun"
	"github.com/seqembed/seqembed/internal/natstest"
)

// Reliability tests: several workers on one durable consumer, graceful shutdown mid-stream, a full
// output stream, and duplicate ids at publish time. All run against a real in-process nats-server.

// TestHorizontalScaling: three workers (own connections, same model, so the same durable
// consumer) share 300 records: every id is output exactly once and at least two workers
// embedded some of them.
func TestHorizontalScaling(t *testing.T) {
	ctx, srv, _, js := ortServer(t, 90*time.Second)

	cfg := testConfig(t)
	cfg.Threads = 1
	cfg.ShutdownTimeout = 10 * time.Second
	workers := make([]*runningWorker, 3)
	for i := range workers {
		workers[i] = startWorkerOn(t, ctx, srv, cfg)
	}
	model := workers[0].w.model

	ids, seqs := randomSeqs("r", 300, 1)
	out := newOutputReader(t, ctx, js, seqs)
	publishAsync(t, ctx, js, model, ids, seqs)
	out.until(len(ids), 60*time.Second)
	out.drainFor(500 * time.Millisecond)

	out.checkOnce(ids)
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
	ctx, srv, _, js := ortServer(t, 90*time.Second)

	cfg := testConfig(t)
	cfg.ShutdownTimeout = 5 * time.Second
	// A graceful stop finishes everything the worker already holds (client buffer, Records
	// channel, batcher): cap that so a good part of the 500 is left for the second worker.
	cfg.MaxAckPending = 64
	if cfg.AckWait < 60*time.Second {
		t.Fatalf("ack wait %s: the test relies on it being long", cfg.AckWait)
	}
	w1 := startWorkerOn(t, ctx, srv, cfg)
	model := w1.w.model

	ids, seqs := randomSeqs("g", 500, 2)
	out := newOutputReader(t, ctx, js, seqs)
	publishAsync(t, ctx, js, model, ids, seqs)

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
	w2 := startWorkerOn(t, ctx, srv, cfg)
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
	ctx, srv, _, js := ortServer(t, 60*time.Second)

	// An operator-made output stream with a small limit, before the worker starts.
	const tiny = 256 // smaller than any single output message (the Arrow schema alone is larger)
	if _, err := arrowout.EnsureStream(ctx, js, arrowout.StreamConfig{MaxBytes: tiny}); err != nil {
		t.Fatal(err)
	}
	cfg := testConfig(t)
	cfg.ShutdownTimeout = 5 * time.Second
	w := newWorkerOn(t, ctx, srv, cfg)
	model := w.model
	outStream := mustStream(t, ctx, js, arrowout.DefaultStreamName)
	info, err := outStream.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	// arrowout.EnsureStream updates an existing stream to its config, so the worker's call (no
	// MaxBytes: unlimited) replaces the operator's limit. Put it back.
	t.Logf("output stream MaxBytes after newWorker: %d (set to %d before)", info.Config.MaxBytes, tiny)
	if info.Config.MaxBytes != tiny {
		setMaxBytes(t, ctx, js, outStream, tiny)
	}
	rw := runWorker(t, ctx, w)

	ids, seqs := randomSeqs("f", 20, 3)
	publishAsync(t, ctx, js, model, ids, seqs)

	// The worker embeds, fails to publish, naks with a delay; the inputs must stay.
	in := mustStream(t, ctx, js, "SEQS")
	cons, err := js.Consumer(ctx, "SEQS", consumer.Durable(model))
	if err != nil {
		t.Fatal(err)
	}
	checkNoneAcked := func() *jetstream.ConsumerInfo {
		t.Helper()
		left := inputLeft(t, ctx, in, model)
		ci, err := cons.Info(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if left != uint64(len(ids)) {
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
	out := newOutputReader(t, ctx, js, seqs)
	setMaxBytes(t, ctx, js, outStream, -1)
	out.until(len(ids), 20*time.Second)
	out.checkOnce(ids)
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
	ctx, srv, _, js := ortServer(t, 60*time.Second)

	cfg := testConfig(t)
	cfg.ShutdownTimeout = 5 * time.Second
	w := newWorkerOn(t, ctx, srv, cfg)
	model := w.model

	ids, seqs := randomSeqs("d", 5, 4)
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
	in := mustStream(t, ctx, js, "SEQS")
	if got := inputLeft(t, ctx, in, model); got != uint64(len(ids)) {
		t.Fatalf("input subject holds %d messages, want %d (the duplicate was stored)", got, len(ids))
	}

	rw := runWorker(t, ctx, w)
	out := newOutputReader(t, ctx, js, seqs) // seqs["d2"] is the first sequence
	out.until(len(ids), 20*time.Second)
	out.drainFor(500 * time.Millisecond)
	out.checkOnce(ids)
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
	ctx, srv, _, js := ortServer(t, 60*time.Second)
	cfg := testConfig(t)
	cfg.ShutdownTimeout = 5 * time.Second
	w := newWorkerOn(t, ctx, srv, cfg)
	outStream := mustStream(t, ctx, js, arrowout.DefaultStreamName)
	setMaxBytes(t, ctx, js, outStream, 256)
	rw := runWorker(t, ctx, w)
	ids, seqs := publishFresh(t, ctx, js, w.model, "m", 20)
	time.Sleep(time.Duration(cfg.MaxDeliver+2) * time.Second) // the output stream stays full
	out := newOutputReader(t, ctx, js, seqs)
	setMaxBytes(t, ctx, js, outStream, -1)
	out.until(len(ids), 15*time.Second) // fails: 0 of 20 ids, the input subject still holds 20
	rw.shutdown(t, cfg.ShutdownTimeout+3*time.Second)
	waitQueueEmpty(t, js, w.model)
}

// TestShutdownTimeoutDuringRun: a run that completes just as the shutdown timeout cancels the
// pipeline must not crash the worker: run returns nil and the batch's inputs are nak'd.
func TestShutdownTimeoutDuringRun(t *testing.T) {
	ctx, srv, _, js := ortServer(t, 30*time.Second)
	cfg := testConfig(t)
	cfg.ShutdownTimeout = 200 * time.Millisecond
	w := newWorkerOn(t, ctx, srv, cfg)
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
	rw := runWorker(t, ctx, w)
	ids, seqs := publishFresh(t, ctx, js, w.model, "s", 3)
	select {
	case <-inRun:
	case <-time.After(10 * time.Second):
		t.Fatal("no batch reached the model in 10s")
	}
	rw.shutdown(t, cfg.ShutdownTimeout+5*time.Second) // panics inside run before returning

	// The nak'd inputs go to a second worker.
	startWorkerOn(t, ctx, srv, testConfig(t))
	out := newOutputReader(t, ctx, js, seqs)
	out.until(len(ids), 15*time.Second)
	waitQueueEmpty(t, js, w.model)
}

// TestHeartbeatNoRace: with a short AckWait the InProgress heartbeat fires during batches; it
// must not touch the worker's reused msgs slice after the batch is done (run with -race).
func TestHeartbeatNoRace(t *testing.T) {
	ctx, srv, _, js := ortServer(t, 60*time.Second)
	cfg := testConfig(t)
	cfg.AckWait = 30 * time.Millisecond // heartbeat every 10 ms
	cfg.MaxDeliver = 100                // records waiting in buffers are redelivered; keep them
	rw := startWorkerOn(t, ctx, srv, cfg)
	out := newOutputReader(t, ctx, js, nil)
	ids, _ := publishFresh(t, ctx, js, rw.w.model, "h", 300)
	out.until(len(ids), 40*time.Second)
	rw.shutdown(t, cfg.ShutdownTimeout+5*time.Second)
}
