package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
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

// Helpers shared by the worker, reliability, crash, cluster and command tests: a server per test,
// workers in-process or as a child process, records in and output out.

const tinyModel = "../../testdata/esm2-tiny"

// aminoAcids are the 20 standard amino acids.
const aminoAcids = "ACDEFGHIKLMNPQRSTVWY"

func requireORT(t *testing.T) {
	t.Helper()
	if _, err := os.Stat(gpurun.LibraryPath()); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("ONNX Runtime library missing in CI: %v", err)
		}
		t.Skipf("ONNX Runtime library not found: %v", err)
	}
}

func testConfig(t *testing.T) workerConfig {
	var cfg workerConfig
	cfg.register(flag.NewFlagSet("test", flag.ContinueOnError))
	cfg.ModelDir, cfg.Threads, cfg.MaxWait = tinyModel, 2, 10*time.Millisecond
	return cfg
}

// ortServer skips (or, in CI, fails) the test without ONNX Runtime, starts an in-process
// nats-server for it and connects to it; ctx ends after timeout or when the test ends.
func ortServer(t *testing.T, timeout time.Duration) (context.Context, *server.Server, *nats.Conn, jetstream.JetStream) {
	t.Helper()
	requireORT(t)
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	t.Cleanup(cancel)
	srv := natstest.Server(t, nil)
	nc, js := natstest.Connect(t, srv)
	return ctx, srv, nc, js
}

// randomProtein draws minLen..maxLen residues from the 20 standard amino acids.
func randomProtein(rng *rand.Rand, minLen, maxLen int) []byte {
	b := make([]byte, minLen+rng.IntN(maxLen-minLen+1))
	for i := range b {
		b[i] = aminoAcids[rng.IntN(len(aminoAcids))]
	}
	return b
}

// randomSeqs returns n sequences of 30..400 residues keyed by id "<prefix>0".."<prefix>n-1",
// from a fixed seed.
func randomSeqs(prefix string, n int, seed uint64) (ids []string, seqs map[string]string) {
	rng := rand.New(rand.NewPCG(seed, seed^0x5eed))
	seqs = make(map[string]string, n)
	for i := range n {
		id := fmt.Sprintf("%s%d", prefix, i)
		ids = append(ids, id)
		seqs[id] = string(randomProtein(rng, 30, 400))
	}
	return ids, seqs
}

// inputMsg is one record for the model's input subject (no id header when id is empty).
func inputMsg(model, id, seq string) *nats.Msg {
	m := nats.NewMsg(consumer.Subject(model))
	if id != "" {
		m.Header.Set(consumer.HeaderID, id)
	}
	m.Data = []byte(seq)
	return m
}

// publishRecords publishes each record in turn, waiting for its PubAck.
func publishRecords(t *testing.T, js jetstream.JetStream, model string, recs map[string]string) {
	t.Helper()
	for id, seq := range recs {
		if _, err := js.PublishMsg(context.Background(), inputMsg(model, id, seq)); err != nil {
			t.Fatal(err)
		}
	}
}

// publishAsync publishes one record per id to the model's input subject and waits for every PubAck.
func publishAsync(t *testing.T, ctx context.Context, js jetstream.JetStream, model string, ids []string, seqs map[string]string) {
	t.Helper()
	futs := make([]jetstream.PubAckFuture, 0, len(ids))
	for _, id := range ids {
		f, err := js.PublishMsgAsync(inputMsg(model, id, seqs[id]))
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

// publishFresh publishes n random records with ids "<prefix>0".. and returns them.
func publishFresh(t *testing.T, ctx context.Context, js jetstream.JetStream, model, prefix string, n int) ([]string, map[string]string) {
	t.Helper()
	ids, seqs := randomSeqs(prefix, n, 9)
	publishAsync(t, ctx, js, model, ids, seqs)
	return ids, seqs
}

// embedFunc is the worker's model call (worker.embed), which tests wrap to inject faults.
type embedFunc func(ctx context.Context, in gpurun.Input, dst []float32) ([]float32, error)

// beforeEmbed is a wrapper for startWorker that calls hook before each run: an error from hook is
// the run's error, otherwise the real run follows.
func beforeEmbed(hook func(in gpurun.Input) error) func(next embedFunc) embedFunc {
	return func(next embedFunc) embedFunc {
		return func(ctx context.Context, in gpurun.Input, dst []float32) ([]float32, error) {
			if err := hook(in); err != nil {
				return dst, err
			}
			return next(ctx, in, dst)
		}
	}
}

// newTestWorker builds a worker on nc (streams and durable consumer set up).
func newTestWorker(t *testing.T, ctx context.Context, cfg workerConfig, nc *nats.Conn) *worker {
	t.Helper()
	w, err := newWorker(ctx, cfg, nc, zap.NewNop(), prometheus.NewRegistry(), telemetry.NewHealth())
	if err != nil {
		t.Fatal(err)
	}
	return w
}

// runningWorker is a worker whose run loop is going in the background.
type runningWorker struct {
	w    *worker
	stop context.CancelFunc
	done chan error
}

// runWorker starts w's run loop; a test that ends without stopping it stops it at cleanup.
func runWorker(t *testing.T, ctx context.Context, w *worker) *runningWorker {
	t.Helper()
	wctx, stop := context.WithCancel(ctx)
	rw := &runningWorker{w: w, stop: stop, done: make(chan error, 1)}
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

// newWorkerOn connects to srv on its own connection and builds a worker on it.
func newWorkerOn(t *testing.T, ctx context.Context, srv *server.Server, cfg workerConfig) *worker {
	t.Helper()
	nc, _ := natstest.Connect(t, srv)
	return newTestWorker(t, ctx, cfg, nc)
}

// startWorkerOn builds a worker on its own connection to srv and starts its run loop.
func startWorkerOn(t *testing.T, ctx context.Context, srv *server.Server, cfg workerConfig) *runningWorker {
	t.Helper()
	return runWorker(t, ctx, newWorkerOn(t, ctx, srv, cfg))
}

// startWorker runs a worker for the test (the tiny model on the CPU); wrap, if given, wraps
// the real ORT run. It returns the worker and a stop function that waits for it.
func startWorker(t *testing.T, ctx context.Context, cfg workerConfig, nc *nats.Conn, wrap func(next embedFunc) embedFunc) (*worker, func()) {
	t.Helper()
	w := newTestWorker(t, ctx, cfg, nc)
	if wrap != nil {
		w.embed = wrap(w.embed)
	}
	rw := runWorker(t, ctx, w)
	return w, func() {
		if err := rw.wait(); err != nil {
			t.Error(err)
		}
	}
}

// wait cancels the worker and returns what run returns, however long that takes.
func (rw *runningWorker) wait() error {
	rw.stop()
	err := <-rw.done
	rw.done <- err // for the cleanup
	return err
}

// shutdown cancels the worker and waits for run to return; it must return nil within within.
func (rw *runningWorker) shutdown(t *testing.T, within time.Duration) {
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

func (rw *runningWorker) rows() int {
	rw.w.stats.mu.Lock()
	defer rw.w.stats.mu.Unlock()
	return rw.w.stats.rows
}

// startWorkerProcess runs `seqembed worker --nats <srv> --model <tiny> <flags>` as a child
// process (the test binary, see TestMain) with env added to its environment; exited gets what
// cmd.Wait returns. $SEQEMBED_TEST_WORKER_FLAGS is appended to the flags (later flags win): on the
// GPU machine it puts the child on CUDA, e.g. "--device cuda:0 --model DIR --cuda-graphs on".
func startWorkerProcess(t *testing.T, srv *server.Server, flags string, env ...string) (cmd *exec.Cmd, exited chan error) {
	t.Helper()
	cmd = exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(append(os.Environ(), env...),
		"SEQEMBED_TEST_MAIN=worker --nats "+srv.ClientURL()+" --model "+tinyModel+" "+flags+" "+os.Getenv("SEQEMBED_TEST_WORKER_FLAGS"))
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited = make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	return cmd, exited
}

// waitForStreams waits until the child worker has created the input and output streams. If the
// child exits first it returns what Wait returned and gone true.
func waitForStreams(t *testing.T, ctx context.Context, js jetstream.JetStream, exited <-chan error) (err error, gone bool) {
	t.Helper()
	for {
		if _, err := js.Stream(ctx, "SEQS"); err == nil {
			if _, err := js.Stream(ctx, arrowout.DefaultStreamName); err == nil {
				return nil, false
			}
		}
		select {
		case err := <-exited:
			return err, true
		case <-ctx.Done():
			t.Fatal("streams never appeared")
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// mustStream is the named stream (SEQS: the input).
func mustStream(t *testing.T, ctx context.Context, js jetstream.JetStream, name string) jetstream.Stream {
	t.Helper()
	s, err := js.Stream(ctx, name)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// inputLeft is the number of messages on the model's input subject.
func inputLeft(t *testing.T, ctx context.Context, in jetstream.Stream, model string) uint64 {
	t.Helper()
	si, err := in.Info(ctx, jetstream.WithSubjectFilter(consumer.Subject(model)))
	if err != nil {
		t.Fatal(err)
	}
	return si.State.Subjects[consumer.Subject(model)]
}

// durableInfo is the model's durable consumer's info.
func durableInfo(t *testing.T, ctx context.Context, js jetstream.JetStream, model string) *jetstream.ConsumerInfo {
	t.Helper()
	ci, err := js.Consumer(ctx, "SEQS", consumer.Durable(model))
	if err != nil {
		t.Fatal(err)
	}
	info, err := ci.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return info
}

func waitQueueEmpty(t *testing.T, js jetstream.JetStream, model string) {
	t.Helper()
	ctx := context.Background()
	deadline := time.Now().Add(15 * time.Second)
	for {
		left := inputLeft(t, ctx, mustStream(t, ctx, js, "SEQS"), model)
		cinfo := durableInfo(t, ctx, js, model)
		if left == 0 && cinfo.NumPending == 0 && cinfo.NumAckPending == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("work queue: %d input messages left, %d pending, %d unacked", left, cinfo.NumPending, cinfo.NumAckPending)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// setMaxBytes sets the stream's MaxBytes limit.
func setMaxBytes(t *testing.T, ctx context.Context, js jetstream.JetStream, s jetstream.Stream, n int64) {
	t.Helper()
	info, err := s.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	sc := info.Config
	sc.MaxBytes = n
	if _, err := js.UpdateStream(ctx, sc); err != nil {
		t.Fatal(err)
	}
}

// outputConsumer reads the output stream from its start.
func outputConsumer(t *testing.T, ctx context.Context, js jetstream.JetStream) jetstream.Consumer {
	t.Helper()
	oc, err := js.OrderedConsumer(ctx, arrowout.DefaultStreamName, jetstream.OrderedConsumerConfig{})
	if err != nil {
		t.Fatal(err)
	}
	return oc
}

// outputIDs reads the output stream until want distinct ids have arrived and returns the count
// of each id seen.
func outputIDs(t *testing.T, js jetstream.JetStream, want int) map[string]int {
	t.Helper()
	oc := outputConsumer(t, context.Background(), js)
	seen := map[string]int{}
	for len(seen) < want {
		m, err := oc.Next(jetstream.FetchMaxWait(30 * time.Second))
		if err != nil {
			t.Fatalf("waiting for output (%d of %d ids): %v", len(seen), want, err)
		}
		_, rows, err := arrowout.Decode(m.Data())
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range rows {
			seen[r.ID]++
		}
	}
	return seen
}

// checkEachOnce reports every id seen other than once.
func checkEachOnce(t *testing.T, seen map[string]int) {
	t.Helper()
	for id, n := range seen {
		if n != 1 {
			t.Errorf("%s ×%d", id, n)
		}
	}
}

// readAllOutput reads the whole output stream until no message arrives for idle: the count of
// each id, the rows and the messages. An id that was never published is an error.
func readAllOutput(t *testing.T, ctx context.Context, js jetstream.JetStream, recs map[string]string, idle time.Duration) (seen map[string]int, rows, msgs int) {
	t.Helper()
	oc := outputConsumer(t, ctx, js)
	seen = map[string]int{}
	for {
		m, err := oc.Next(jetstream.FetchMaxWait(idle))
		if errors.Is(err, nats.ErrTimeout) || errors.Is(err, jetstream.ErrNoMessages) || errors.Is(err, context.DeadlineExceeded) {
			return seen, rows, msgs
		}
		if err != nil {
			t.Fatal(err)
		}
		msgs++
		_, rs, err := arrowout.Decode(m.Data())
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range rs {
			if _, ok := recs[r.ID]; !ok {
				t.Errorf("output has id %q that was never published", r.ID)
			}
			seen[r.ID]++
			rows++
		}
	}
}

// outputReader reads the output stream from its start through an ordered consumer.
type outputReader struct {
	t     *testing.T
	oc    jetstream.Consumer
	seen  map[string]int // id → rows with that id
	rows  map[string]arrowout.Row
	msgs  int
	known map[string]string // id → published sequence; nil = any id accepted
}

func newOutputReader(t *testing.T, ctx context.Context, js jetstream.JetStream, known map[string]string) *outputReader {
	t.Helper()
	return &outputReader{t: t, oc: outputConsumer(t, ctx, js), seen: map[string]int{}, rows: map[string]arrowout.Row{}, known: known}
}

// next reads one output message (waiting up to wait) and records its rows; false on timeout.
func (r *outputReader) next(wait time.Duration) bool {
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
func (r *outputReader) until(want int, timeout time.Duration) {
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
func (r *outputReader) drainFor(d time.Duration) {
	r.t.Helper()
	for deadline := time.Now().Add(d); time.Now().Before(deadline); {
		r.next(min(time.Until(deadline), 200*time.Millisecond) + time.Millisecond)
	}
}

// checkOnce reports each of ids that was not output exactly once.
func (r *outputReader) checkOnce(ids []string) {
	r.t.Helper()
	for _, id := range ids {
		if n := r.seen[id]; n != 1 {
			r.t.Errorf("%s appears %d times in the output, want 1", id, n)
		}
	}
}
