package pipeline_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/seqembed/seqembed/arrowout"
	"github.com/seqembed/seqembed/consumer"
	"github.com/seqembed/seqembed/gpurun"
	"github.com/seqembed/seqembed/ingest"
	"github.com/seqembed/seqembed/internal/e2etest"
	"github.com/seqembed/seqembed/internal/natstest"
	"github.com/seqembed/seqembed/internal/testutil"
	"github.com/seqembed/seqembed/pipeline"
)

// Reliability tests: several workers on one durable consumer, graceful shutdown mid-stream, a full
// output stream, and duplicate ids at publish time. All run against a real in-process nats-server.

// TestHorizontalScaling: three workers (own connections, same model, so the same durable
// consumer) share 300 records: every id is output exactly once and at least two workers
// embedded some of them.
func TestHorizontalScaling(t *testing.T) {
	ctx, srv, _, js := e2etest.Server(t, 90*time.Second)

	cfg := e2etest.Config()
	cfg.Threads = 1
	cfg.ShutdownTimeout = 10 * time.Second
	workers := make([]*e2etest.Worker, 3)
	for i := range workers {
		workers[i] = e2etest.StartWorker(t, ctx, srv, cfg)
	}
	model := workers[0].Model()

	ids, seqs := e2etest.RandomSeqs("r", 300, 1)
	out := e2etest.NewOutputReader(t, ctx, js, seqs)
	e2etest.PublishAsync(t, ctx, js, model, ids, seqs)
	out.Until(len(ids), 60*time.Second)
	out.DrainFor(500 * time.Millisecond)

	out.CheckOnce(ids)
	for _, rw := range workers {
		rw.Shutdown(t, cfg.ShutdownTimeout+5*time.Second)
	}
	busy, total := 0, 0
	counts := make([]int, len(workers))
	for i, rw := range workers {
		counts[i] = rw.Rows()
		total += counts[i]
		if counts[i] > 0 {
			busy++
		}
	}
	t.Logf("rows per worker %v, %d output messages", counts, out.Msgs)
	if busy < 2 {
		t.Errorf("only %d worker(s) embedded anything (rows per worker %v): the durable consumer did not spread the work", busy, counts)
	}
	if total != len(ids) {
		t.Errorf("workers embedded %d rows in all, want %d (rows per worker %v)", total, len(ids), counts)
	}
	e2etest.WaitQueueEmpty(t, js, model)
}

// TestGracefulShutdownLosesNothing: a worker cancelled mid-stream returns nil within its shutdown
// timeout; what it had buffered is nak'd, not left to the ack wait, so a second worker finishes
// every record well before the ack wait could expire. Every id is in the output, duplicates
// allowed (a record whose ack was lost), losses not.
func TestGracefulShutdownLosesNothing(t *testing.T) {
	ctx, srv, _, js := e2etest.Server(t, 5*time.Minute)

	cfg := e2etest.Config()
	cfg.ShutdownTimeout = 5 * time.Second
	// The second worker's budget below must stay far under the ack wait, and far over what it
	// needs on a loaded 2-core machine (3 s idle, 6-15 s with six spinning processes; a CI run once
	// had 488 of 500 at a 20 s budget): a 10-minute ack wait leaves room for a 2-minute budget.
	cfg.AckWait = 10 * time.Minute
	// A graceful stop finishes everything the worker already holds (client buffer, Records
	// channel, batcher): cap that so a good part of the 500 is left for the second worker.
	cfg.MaxAckPending = 64
	w1 := e2etest.StartWorker(t, ctx, srv, cfg)
	model := w1.Model()

	ids, seqs := e2etest.RandomSeqs("g", 500, 2)
	out := e2etest.NewOutputReader(t, ctx, js, seqs)
	e2etest.PublishAsync(t, ctx, js, model, ids, seqs)

	// Stop the first worker as soon as its first output message is stored.
	for start := time.Now(); out.Msgs == 0; {
		if time.Since(start) > 2*time.Minute {
			t.Fatal("no output from the first worker in 2 minutes")
		}
		out.Next(time.Second) // blocks until a message arrives (or a second passes)
	}
	w1.Shutdown(t, cfg.ShutdownTimeout+3*time.Second)
	out.DrainFor(200 * time.Millisecond)
	firstRows := w1.Rows()
	t.Logf("first worker embedded %d rows before stopping; %d ids in the output so far", firstRows, len(out.Seen))
	if firstRows >= len(ids) {
		t.Fatalf("the first worker finished all %d records before its shutdown: the restart path was not exercised", firstRows)
	}

	// A fresh worker on its own connection takes over. With a 10-minute ack wait, 2 minutes are
	// only enough if the first worker nak'd everything it held rather than leaving it unacked.
	w2 := e2etest.StartWorker(t, ctx, srv, cfg)
	out.Until(len(ids), 2*time.Minute)
	out.DrainFor(500 * time.Millisecond)
	w2.Shutdown(t, cfg.ShutdownTimeout+3*time.Second)

	dups := 0
	for _, id := range ids {
		switch n := out.Seen[id]; {
		case n == 0:
			t.Errorf("%s lost: not in the output", id)
		case n > 1:
			dups += n - 1
		}
	}
	if len(out.Seen) != len(ids) {
		t.Errorf("%d distinct ids in the output, want %d", len(out.Seen), len(ids))
	}
	t.Logf("second worker embedded %d rows; %d duplicate rows in the output", w2.Rows(), dups)
	if w2.Rows() == 0 {
		t.Errorf("the second worker embedded nothing")
	}
	e2etest.WaitQueueEmpty(t, js, model)
}

// TestOutputStreamFullNaksInputs: while the output stream rejects every part (DiscardNew, tiny
// MaxBytes) no input is acked — they all stay in the work queue — and once there is room every
// record is embedded and the queue ends empty.
func TestOutputStreamFullNaksInputs(t *testing.T) {
	ctx, srv, _, js := e2etest.Server(t, 60*time.Second)

	// An operator-made output stream with a small limit, before the worker starts.
	const tiny = 256 // smaller than any single output message (the Arrow schema alone is larger)
	if _, err := arrowout.EnsureStream(ctx, js, arrowout.StreamConfig{MaxBytes: tiny}); err != nil {
		t.Fatal(err)
	}
	cfg := e2etest.Config()
	cfg.ShutdownTimeout = 5 * time.Second
	w := e2etest.NewWorker(t, ctx, srv, cfg)
	model := w.Model()
	outStream := e2etest.MustStream(t, ctx, js, arrowout.DefaultStreamName)
	info, err := outStream.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	// arrowout.EnsureStream updates an existing stream to its config, so the worker's call (no
	// MaxBytes: unlimited) replaces the operator's limit. Put it back.
	t.Logf("output stream MaxBytes after newWorker: %d (set to %d before)", info.Config.MaxBytes, tiny)
	if info.Config.MaxBytes != tiny {
		e2etest.SetMaxBytes(t, ctx, js, outStream, tiny)
	}
	rw := w.Start(t, ctx)

	ids, seqs := e2etest.RandomSeqs("f", 20, 3)
	e2etest.PublishAsync(t, ctx, js, model, ids, seqs)

	// The worker embeds, fails to publish, naks with a delay; the inputs must stay.
	in := e2etest.MustStream(t, ctx, js, "SEQS")
	cons, err := js.Consumer(ctx, "SEQS", consumer.Durable(model))
	if err != nil {
		t.Fatal(err)
	}
	checkNoneAcked := func() *jetstream.ConsumerInfo {
		t.Helper()
		left := e2etest.InputLeft(t, ctx, in, model)
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
	testutil.EventuallyTrue(t, time.Minute, "the worker embeds a batch", func() bool { return rw.Rows() > 0 })
	// Watch for 2 s (about 3 deliveries with the worker's 1 s nak delay): the default MaxDeliver
	// of 5 would strand the records after about 4 s of a full output stream, see
	// TestOutputStreamFullOutlastsMaxDeliver.
	var ci *jetstream.ConsumerInfo
	// The scenario, not synchronisation: the stream stays full for this window while the test
	// checks, every 250 ms, that no input was acked.
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
		rw.Rows(), ci.NumAckPending, ci.NumPending, ci.NumRedelivered)

	// Room again: everything must come through.
	out := e2etest.NewOutputReader(t, ctx, js, seqs)
	e2etest.SetMaxBytes(t, ctx, js, outStream, -1)
	out.Until(len(ids), 20*time.Second)
	out.CheckOnce(ids)
	rw.Shutdown(t, cfg.ShutdownTimeout+3*time.Second)
	e2etest.WaitQueueEmpty(t, js, model)
	if dls, err := consumer.ReadDeadLetters(ctx, js, "SEQS", model, "", 0); err != nil || len(dls) != 0 {
		t.Errorf("dead letters %v (err %v), want none", dls, err)
	}
}

// TestReusedIDPublish: a FASTA file with one id twice with different sequences, and one record
// twice exactly: a record is (id, sequence), so publishFASTA stores both sequences of the reused
// id (counted as an id conflict) and the exact repeat once (a duplicate); the output holds one
// row per (id, seq_sha256), each with its own description, input index and lengths.
func TestReusedIDPublish(t *testing.T) {
	ctx, srv, _, js := e2etest.Server(t, 60*time.Second)

	cfg := e2etest.Config()
	cfg.ShutdownTimeout = 5 * time.Second
	w := e2etest.NewWorker(t, ctx, srv, cfg)
	model := w.Model()

	ids, seqs := e2etest.RandomSeqs("d", 5, 4)
	first, second := seqs["d2"], strings.Repeat("MKTAYIAKQR", 7) // different lengths: 30..400 vs 70
	if len(first) == len(second) {
		second += "G"
	}
	var fa strings.Builder
	for _, id := range ids {
		fmt.Fprintf(&fa, ">%s some description\n%s\n", id, seqs[id])
	}
	fmt.Fprintf(&fa, ">d2 the same id again\n%s\n", second)
	fmt.Fprintf(&fa, ">d3 the same record again\n%s\n", seqs["d3"])
	path := filepath.Join(t.TempDir(), "dup.fasta")
	if err := os.WriteFile(path, []byte(fa.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	pubNC, _ := natstest.Connect(t, srv)
	st, err := ingest.PublishFASTA(ctx, pubNC, path, model, nil, zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	if st.Records != len(ids)+2 || st.Stored != len(ids)+1 || st.Duplicates != 1 || st.IDConflicts != 1 || st.DeadLettered != 0 {
		t.Fatalf("publish stats %+v, want %d records, %d stored, 1 duplicate, 1 id conflict", st, len(ids)+2, len(ids)+1)
	}
	in := e2etest.MustStream(t, ctx, js, "SEQS")
	if got := e2etest.InputLeft(t, ctx, in, model); got != uint64(len(ids)+1) {
		t.Fatalf("input subject holds %d messages, want %d", got, len(ids)+1)
	}

	rw := w.Start(t, ctx)
	oc := e2etest.OutputConsumer(t, ctx, js)
	rows := map[[2]string][]arrowout.Row{} // (id, seq_sha256) → rows
	read := func(wait time.Duration) {
		if m, err := oc.Next(jetstream.FetchMaxWait(wait)); err == nil {
			_, rs, err := arrowout.Decode(m.Data())
			if err != nil {
				t.Fatal(err)
			}
			for _, r := range rs {
				rows[[2]string{r.ID, r.SeqSHA256}] = append(rows[[2]string{r.ID, r.SeqSHA256}], r)
			}
		}
	}
	testutil.Eventually(t, 20*time.Second, func() (bool, string) {
		read(time.Second)
		return len(rows) == len(ids)+1, fmt.Sprintf("%d of %d records in the output", len(rows), len(ids)+1)
	})
	for deadline := time.Now().Add(500 * time.Millisecond); time.Now().Before(deadline); { // late duplicates
		read(time.Until(deadline) + time.Millisecond)
	}
	want := map[[2]string]arrowout.Row{}
	for i, id := range ids {
		want[[2]string{id, consumer.SeqSHA256([]byte(seqs[id]))}] = arrowout.Row{ID: id, Description: "some description", InputIndex: int64(i),
			Length: int32(len(seqs[id])), InputLength: int32(len(seqs[id]))}
	}
	want[[2]string{"d2", consumer.SeqSHA256([]byte(second))}] = arrowout.Row{ID: "d2", Description: "the same id again",
		InputIndex: int64(len(ids)), Length: int32(len(second)), InputLength: int32(len(second))}
	for key, w := range want {
		got := rows[key]
		if len(got) != 1 {
			t.Errorf("%v: %d rows, want 1", key, len(got))
			continue
		}
		g := got[0]
		if g.Description != w.Description || g.InputIndex != w.InputIndex || g.Length != w.Length || g.InputLength != w.InputLength ||
			g.StopStripped || g.Truncated || g.SeqSHA256 != key[1] {
			t.Errorf("%v: got %+v, want %+v", key, g, w)
		}
	}
	rw.Shutdown(t, cfg.ShutdownTimeout+3*time.Second)
	e2etest.WaitQueueEmpty(t, js, model)
}

// The tests below were written to demonstrate bugs in worker.go found while writing the ones
// above (inputs stranded after MaxDeliver naks, a panic at the shutdown timeout, a heartbeat data
// race); they pass since the fixes.

// TestOutputStreamFullOutlastsMaxDeliver: an output stream that stays full longer than about
// MaxDeliver × 1 s must not lose inputs: once there is room, every record is embedded.
func TestOutputStreamFullOutlastsMaxDeliver(t *testing.T) {
	ctx, srv, _, js := e2etest.Server(t, 60*time.Second)
	cfg := e2etest.Config()
	cfg.ShutdownTimeout = 5 * time.Second
	w := e2etest.NewWorker(t, ctx, srv, cfg)
	outStream := e2etest.MustStream(t, ctx, js, arrowout.DefaultStreamName)
	e2etest.SetMaxBytes(t, ctx, js, outStream, 256)
	rw := w.Start(t, ctx)
	ids, seqs := e2etest.PublishFresh(t, ctx, js, w.Model(), "m", 20)
	// The scenario: the output stream stays full for longer than MaxDeliver × the 1 s nak delay.
	time.Sleep(time.Duration(cfg.MaxDeliver+2) * time.Second)
	out := e2etest.NewOutputReader(t, ctx, js, seqs)
	e2etest.SetMaxBytes(t, ctx, js, outStream, -1)
	out.Until(len(ids), 15*time.Second) // fails: 0 of 20 ids, the input subject still holds 20
	rw.Shutdown(t, cfg.ShutdownTimeout+3*time.Second)
	e2etest.WaitQueueEmpty(t, js, w.Model())
}

// TestShutdownTimeoutDuringRun: a run that completes just as the shutdown timeout cancels the
// pipeline must not crash the worker: run returns nil and the batch's inputs are nak'd.
func TestShutdownTimeoutDuringRun(t *testing.T) {
	ctx, srv, _, js := e2etest.Server(t, 30*time.Second)
	cfg := e2etest.Config()
	cfg.ShutdownTimeout = 200 * time.Millisecond
	// The run finishes successfully, but only as the shutdown timeout cancels its context (what
	// Runner.Embed does when ORT completes before Terminate takes effect).
	inRun := make(chan struct{}, 1)
	cfg.Hooks.WrapEmbed = func(next pipeline.EmbedFunc) pipeline.EmbedFunc {
		return func(ctx context.Context, in gpurun.Input, dst []float32) ([]float32, *gpurun.Result, error) {
			out, res, err := next(context.WithoutCancel(ctx), in, dst)
			select {
			case inRun <- struct{}{}:
			default:
			}
			<-ctx.Done()
			return out, res, err
		}
	}
	w := e2etest.NewWorker(t, ctx, srv, cfg)
	rw := w.Start(t, ctx)
	ids, seqs := e2etest.PublishFresh(t, ctx, js, w.Model(), "s", 3)
	select {
	case <-inRun:
	case <-time.After(time.Minute):
		t.Fatal("no batch reached the model in a minute")
	}
	rw.Shutdown(t, cfg.ShutdownTimeout+5*time.Second) // panics inside run before returning

	// The nak'd inputs go to a second worker.
	e2etest.StartWorker(t, ctx, srv, e2etest.Config())
	out := e2etest.NewOutputReader(t, ctx, js, seqs)
	out.Until(len(ids), 15*time.Second)
	e2etest.WaitQueueEmpty(t, js, w.Model())
}

// TestHeartbeatNoRace: with a short AckWait the keeper's InProgress heartbeat fires while
// batches run, publish and ack; it must not touch the batch loops' reused msgs slices (run with
// -race).
func TestHeartbeatNoRace(t *testing.T) {
	ctx, srv, _, js := e2etest.Server(t, 5*time.Minute)
	cfg := e2etest.Config()
	cfg.AckWait = 300 * time.Millisecond // heartbeat every 100 ms
	cfg.MaxDeliver = 100                 // a heartbeat late on a loaded machine may cause a redelivery
	rw := e2etest.StartWorker(t, ctx, srv, cfg)
	out := e2etest.NewOutputReader(t, ctx, js, nil)
	ids, _ := e2etest.PublishFresh(t, ctx, js, rw.Model(), "h", 200)
	out.Until(len(ids), 4*time.Minute)
	rw.Shutdown(t, cfg.ShutdownTimeout+5*time.Second)
}

// TestHeldBacklogNotRedelivered: a worker holds a backlog that takes more than 3 × AckWait to
// drain (a slow device, many records held in the batcher's queue). Every held record is
// heartbeated, so none is redelivered and no row is output twice.
func TestHeldBacklogNotRedelivered(t *testing.T) {
	ctx, srv, _, js := e2etest.Server(t, 5*time.Minute)
	cfg := e2etest.Config()
	cfg.AckWait, cfg.MaxBatchRows, cfg.Inflight = 2*time.Second, 4, 1
	cfg.Hooks.WrapEmbed = e2etest.BeforeEmbed(func(gpurun.Input) error {
		time.Sleep(150 * time.Millisecond) // the scenario: a slow device
		return nil
	})
	w := e2etest.StartWorker(t, ctx, srv, cfg)
	ids, seqs := e2etest.RandomSeqs("b", 200, 5) // 50 runs × 150 ms ≥ 7.5 s = 3.75 × AckWait
	out := e2etest.NewOutputReader(t, ctx, js, seqs)
	start := time.Now()
	e2etest.PublishAsync(t, ctx, js, w.Model(), ids, seqs)
	out.Until(len(ids), 4*time.Minute)
	took := time.Since(start)
	out.DrainFor(500 * time.Millisecond)
	out.CheckOnce(ids)
	if took < 3*cfg.AckWait {
		t.Errorf("the backlog drained in %s: under 3 × AckWait, so the test proved nothing", took)
	}
	info := e2etest.DurableInfo(t, ctx, js, w.Model())
	if info.NumRedelivered != 0 || info.Delivered.Consumer != uint64(len(ids)) {
		t.Errorf("%d deliveries for %d records, %d redelivered: want no redelivery", info.Delivered.Consumer, len(ids), info.NumRedelivered)
	}
	w.Shutdown(t, cfg.ShutdownTimeout+time.Minute)
	e2etest.WaitQueueEmpty(t, js, w.Model())
}

// TestStopAbandonsNow: Stop ends Run at once, without waiting out a long run or the shutdown
// timeout; what the pipeline held is nak'd, so a second worker embeds every record long before
// the (default 60 s) AckWait could return them.
func TestStopAbandonsNow(t *testing.T) {
	ctx, srv, _, js := e2etest.Server(t, 3*time.Minute)
	cfg := e2etest.Config()
	cfg.ShutdownTimeout = 10 * time.Minute // Stop must not wait for it
	running := make(chan struct{}, 1)
	cfg.Hooks.WrapEmbed = func(next pipeline.EmbedFunc) pipeline.EmbedFunc {
		return func(ctx context.Context, in gpurun.Input, dst []float32) ([]float32, *gpurun.Result, error) {
			select {
			case running <- struct{}{}:
			default:
			}
			<-ctx.Done() // a run that never ends by itself
			return dst, nil, ctx.Err()
		}
	}
	w := e2etest.NewWorker(t, ctx, srv, cfg)
	done := make(chan error, 1)
	go func() { done <- w.P.Run(ctx) }()
	ids, seqs := e2etest.PublishFresh(t, ctx, js, w.Model(), "x", 30)
	<-running
	w.P.Stop()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Run after Stop: %v", err)
		}
	case <-time.After(time.Minute):
		t.Fatal("Run did not return within a minute of Stop")
	}
	out := e2etest.NewOutputReader(t, ctx, js, seqs)
	e2etest.StartWorker(t, ctx, srv, e2etest.Config())
	out.Until(len(ids), 2*time.Minute)
	out.CheckOnce(ids)
}

// TestShutdownInsideTimeout: a worker holding a long backlog on a slow device is cancelled; Run
// returns inside ShutdownTimeout (the batches still running are cancelled at the timeout less its
// margin), every held record is nak'd, and a second worker embeds them all long before the
// default 60 s AckWait could have returned them.
func TestShutdownInsideTimeout(t *testing.T) {
	ctx, srv, _, js := e2etest.Server(t, 5*time.Minute)
	cfg := e2etest.Config()
	cfg.ShutdownTimeout, cfg.MaxBatchRows, cfg.Inflight = 3*time.Second, 4, 1
	started := make(chan struct{}, 1)
	cfg.Hooks.WrapEmbed = func(next pipeline.EmbedFunc) pipeline.EmbedFunc {
		return func(ctx context.Context, in gpurun.Input, dst []float32) ([]float32, *gpurun.Result, error) {
			select {
			case started <- struct{}{}:
			default:
			}
			select { // the scenario: a device that takes 10 s a batch
			case <-ctx.Done():
				return dst, nil, ctx.Err()
			case <-time.After(10 * time.Second):
			}
			return next(ctx, in, dst)
		}
	}
	w := e2etest.NewWorker(t, ctx, srv, cfg)
	runCtx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- w.P.Run(runCtx) }()
	ids, seqs := e2etest.RandomSeqs("t", 200, 6)
	e2etest.PublishAsync(t, ctx, js, w.Model(), ids, seqs)
	<-started
	t0 := time.Now()
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Run: %v", err)
	}
	if took := time.Since(t0); took > cfg.ShutdownTimeout {
		t.Errorf("shutdown took %s, over the %s timeout", took, cfg.ShutdownTimeout)
	}
	out := e2etest.NewOutputReader(t, ctx, js, seqs)
	e2etest.StartWorker(t, ctx, srv, e2etest.Config())
	out.Until(len(ids), 2*time.Minute) // far inside the 60 s AckWait on a free machine: all nak'd
	out.CheckOnce(ids)
	e2etest.WaitQueueEmpty(t, js, w.Model())
}

// TestStreamsReplicatedInCluster: on a 3-node cluster a worker with --replicas left at 0 (auto)
// creates SEQS and EMBEDDINGS with 3 replicas; on one server, with 1.
func TestStreamsReplicatedInCluster(t *testing.T) {
	e2etest.RequireORT(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cl := natstest.Cluster(t, 3)
	nc, err := nats.Connect(cl.URLs())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	e2etest.NewWorkerConn(t, ctx, nc, e2etest.Config())
	for _, name := range []string{"SEQS", arrowout.DefaultStreamName} {
		s, err := js.Stream(ctx, name)
		if err != nil {
			t.Fatal(err)
		}
		if r := s.CachedInfo().Config.Replicas; r != 3 {
			t.Errorf("stream %s: %d replicas, want 3", name, r)
		}
	}
	_, _, ncOne, jsOne := e2etest.Server(t, time.Minute)
	e2etest.NewWorkerConn(t, ctx, ncOne, e2etest.Config())
	s, err := jsOne.Stream(ctx, "SEQS")
	if err != nil {
		t.Fatal(err)
	}
	if r := s.CachedInfo().Config.Replicas; r != 1 {
		t.Errorf("one server: SEQS has %d replicas, want 1", r)
	}
}

// TestHoldBudgetBoundsPulls: with --max-held-tokens the worker pulls only while the records it
// holds are under the budget: on a slow device it never holds the whole backlog (which stays on
// the server, safe from its death), and every record is still embedded once.
func TestHoldBudgetBoundsPulls(t *testing.T) {
	ctx, srv, _, js := e2etest.Server(t, 5*time.Minute)
	cfg := e2etest.Config()
	cfg.MaxHeldTokens, cfg.MaxBatchRows, cfg.Inflight = cfg.MaxBatchTokens, 8, 1 // 16,384 tokens: ~75 records of 30–400 residues
	cfg.Hooks.WrapEmbed = e2etest.BeforeEmbed(func(gpurun.Input) error {
		time.Sleep(100 * time.Millisecond) // the scenario: a slow device
		return nil
	})
	w := e2etest.StartWorker(t, ctx, srv, cfg)
	ids, seqs := e2etest.RandomSeqs("hb", 300, 8)
	out := e2etest.NewOutputReader(t, ctx, js, seqs)
	e2etest.PublishAsync(t, ctx, js, w.Model(), ids, seqs)
	most := 0
	for len(out.Seen) < len(ids) {
		if !out.Next(time.Minute) {
			t.Fatalf("no output for a minute: %d of %d ids", len(out.Seen), len(ids))
		}
		if n := e2etest.DurableInfo(t, ctx, js, w.Model()).NumAckPending; n > most {
			most = n
		}
	}
	out.CheckOnce(ids)
	t.Logf("most records held at once: %d of %d", most, len(ids))
	if most >= 200 {
		t.Errorf("the worker held up to %d of %d records under a 16,384-token budget", most, len(ids))
	}
	w.Shutdown(t, cfg.ShutdownTimeout+time.Minute)
	e2etest.WaitQueueEmpty(t, js, w.Model())
}

// TestBacklogGauge: seqembed_backlog_records follows the durable consumer's pending + unacked
// count as records are published (the device held back) and drained.
func TestBacklogGauge(t *testing.T) {
	ctx, srv, _, js := e2etest.Server(t, 3*time.Minute)
	cfg := e2etest.Config()
	cfg.BacklogEvery = 50 * time.Millisecond
	release := make(chan struct{})
	cfg.Hooks.WrapEmbed = e2etest.BeforeEmbed(func(gpurun.Input) error {
		<-release // the scenario: a device that is not ready yet
		return nil
	})
	reg := prometheus.NewRegistry()
	nc, _ := natstest.Connect(t, srv)
	p, err := pipeline.New(ctx, cfg, pipeline.Deps{Conn: nc, Registerer: reg})
	if err != nil {
		t.Fatal(err)
	}
	runCtx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- p.Run(runCtx) }()
	defer func() { stop(); <-done }()
	backlog := func() float64 {
		mfs, err := reg.Gather()
		if err != nil {
			t.Fatal(err)
		}
		for _, mf := range mfs {
			if mf.GetName() == "seqembed_backlog_records" {
				return mf.GetMetric()[0].GetGauge().GetValue()
			}
		}
		t.Fatal("no seqembed_backlog_records in /metrics")
		return 0
	}
	ids, _ := e2etest.PublishFresh(t, ctx, js, p.Model(), "bg", 40)
	testutil.Eventually(t, time.Minute, func() (bool, string) {
		return backlog() == float64(len(ids)), fmt.Sprintf("backlog gauge %v, want %d", backlog(), len(ids))
	})
	close(release)
	testutil.Eventually(t, time.Minute, func() (bool, string) {
		return backlog() == 0, fmt.Sprintf("backlog gauge %v after the drain, want 0", backlog())
	})
}
