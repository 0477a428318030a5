package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/seqembed/seqembed/arrowout"
	"github.com/seqembed/seqembed/consumer"
	"github.com/seqembed/seqembed/gpurun"
	"github.com/seqembed/seqembed/internal/jscluster"
)

// ---------------------------------------------------------------------------------------------
// Producing with retries (shared with the cluster test).

// recordMsg is one input record with its id in Seq-Id and a Nats-Msg-Id of "<model>:<id>", so a
// retried publish is stored once.
func recordMsg(model, id string, residues []byte) *nats.Msg {
	m := nats.NewMsg(consumer.Subject(model))
	m.Header.Set(consumer.HeaderID, id)
	m.Header.Set(nats.MsgIdHdr, model+":"+id)
	m.Data = residues
	return m
}

// publishRetry publishes m until the stream acknowledges it (a duplicate ack counts: an earlier
// try was stored) or ctx ends. Each try waits at most 5 s; tries back off from 100 ms to 2 s.
// It returns the number of failed tries.
func publishRetry(ctx context.Context, js jetstream.JetStream, m *nats.Msg) (retries int, err error) {
	delay := 100 * time.Millisecond
	for {
		tctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		_, err := js.PublishMsg(tctx, m)
		cancel()
		if err == nil {
			return retries, nil
		}
		if ctx.Err() != nil {
			return retries, fmt.Errorf("publishing %s: %w", m.Header.Get(consumer.HeaderID), err)
		}
		retries++
		select {
		case <-ctx.Done():
		case <-time.After(delay):
		}
		delay = min(2*delay, 2*time.Second)
	}
}

// publishAll publishes msgs with up to window PubAcks outstanding; a failed one is retried
// synchronously (publishRetry) until stored. It returns the retries made.
func publishAll(ctx context.Context, js jetstream.JetStream, window int, next func() *nats.Msg, acked func()) (retries int, err error) {
	type pending struct {
		msg *nats.Msg
		fut jetstream.PubAckFuture
	}
	var q []pending
	settle := func(p pending) error {
		select {
		case <-p.fut.Ok():
		case <-p.fut.Err():
			n, err := publishRetry(ctx, js, p.msg)
			retries += n + 1
			if err != nil {
				return err
			}
		case <-ctx.Done():
			return ctx.Err()
		}
		acked()
		return nil
	}
	for m := next(); m != nil; m = next() {
		fut, err := js.PublishMsgAsync(m)
		for err != nil { // too many pending or disconnected: settle what we have, then try again
			if len(q) > 0 {
				if err := settle(q[0]); err != nil {
					return retries, err
				}
				q = q[1:]
			} else {
				select {
				case <-ctx.Done():
					return retries, ctx.Err()
				case <-time.After(200 * time.Millisecond):
				}
				retries++
			}
			fut, err = js.PublishMsgAsync(m)
		}
		q = append(q, pending{m, fut})
		if len(q) >= window {
			if err := settle(q[0]); err != nil {
				return retries, err
			}
			q = q[1:]
		}
	}
	for _, p := range q {
		if err := settle(p); err != nil {
			return retries, err
		}
	}
	return retries, nil
}

// queueState is what is left of model's work: input messages on its subject, and the durable
// consumer's pending and unacked counts.
func queueState(ctx context.Context, js jetstream.JetStream, stream, model string) (left, pending, unacked uint64, err error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	s, err := js.Stream(ctx, stream)
	if err != nil {
		return 0, 0, 0, err
	}
	info, err := s.Info(ctx, jetstream.WithSubjectFilter(consumer.Subject(model)))
	if err != nil {
		return 0, 0, 0, err
	}
	c, err := s.Consumer(ctx, consumer.Durable(model))
	if err != nil {
		return 0, 0, 0, err
	}
	ci, err := c.Info(ctx)
	if err != nil {
		return 0, 0, 0, err
	}
	return info.State.Subjects[consumer.Subject(model)], ci.NumPending, uint64(ci.NumAckPending), nil
}

// ---------------------------------------------------------------------------------------------
// seqembed soak

// soakWorker is one worker child process, restarted whenever it is killed or exits.
type soakWorker struct {
	idx   int
	cmd   *exec.Cmd
	done  chan struct{}
	log   *os.File
	exits atomic.Int64 // exits not caused by the chaos loop
}

type soakRun struct {
	exe, urls, logDir string
	workerArgs        []string
	mu                sync.Mutex
	workers           []*soakWorker
	stopping          atomic.Bool
}

func (r *soakRun) start(w *soakWorker) error {
	args := append([]string{"worker", "--nats", r.urls}, r.workerArgs...)
	cmd := exec.Command(r.exe, args...)
	cmd.Stdout, cmd.Stderr = w.log, w.log
	if err := cmd.Start(); err != nil {
		return err
	}
	done := make(chan struct{})
	w.cmd, w.done = cmd, done
	go func() { _ = cmd.Wait(); close(done) }()
	return nil
}

// kill SIGKILLs worker w, waits for it to die and starts it again.
func (r *soakRun) kill(w *soakWorker) error {
	_ = w.cmd.Process.Signal(syscall.SIGKILL)
	<-w.done
	return r.start(w)
}

// supervise restarts workers that exited on their own (e.g. the cluster was unreachable at
// start-up) after a second.
func (r *soakRun) supervise(ctx context.Context) {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		r.mu.Lock()
		for _, w := range r.workers {
			select {
			case <-w.done:
				if !r.stopping.Load() {
					w.exits.Add(1)
					_ = r.start(w)
				}
			default:
			}
		}
		r.mu.Unlock()
	}
}

// stopAll SIGTERMs every worker and waits up to timeout for them to finish in-flight batches.
func (r *soakRun) stopAll(timeout time.Duration) {
	r.stopping.Store(true)
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, w := range r.workers {
		_ = w.cmd.Process.Signal(syscall.SIGTERM)
	}
	deadline := time.After(timeout)
	for _, w := range r.workers {
		select {
		case <-w.done:
		case <-deadline:
			_ = w.cmd.Process.Kill()
			<-w.done
		}
		w.log.Close()
	}
}

var soakResidues = []byte("ACDEFGHIKLMNPQRSTVWY")

func runSoakCmd(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("soak", flag.ContinueOnError)
	records := fs.Int("records", 1_000_000, "records to publish")
	workers := fs.Int("workers", 2, "worker child processes")
	killEvery := fs.Duration("kill-every", 20*time.Second, "SIGKILL a random worker (and restart it) this often")
	nodeDown := fs.Duration("node-down", 5*time.Second, "how long the one node shutdown lasts")
	modelDir := fs.String("model", "testdata/esm2-tiny", "model directory")
	minLen := fs.Int("min-len", 30, "shortest random sequence")
	maxLen := fs.Int("max-len", 60, "longest random sequence")
	threads := fs.Int("threads", 1, "ONNX Runtime threads per worker")
	ackWait := fs.Duration("ack-wait", 10*time.Second, "workers' --ack-wait: how soon a killed worker's records are redelivered")
	seed := fs.Uint64("seed", 1, "random seed of the sequences and the chaos")
	dir := fs.String("dir", "", "directory for the node stores, worker logs and the Parquet output (default: a new temp dir, removed at the end unless --keep)")
	keep := fs.Bool("keep", false, "keep --dir's contents")
	timeout := fs.Duration("timeout", 3*time.Hour, "give up after this long")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if *records <= 0 || *workers <= 0 || *minLen <= 0 || *maxLen < *minLen || *killEvery <= 0 {
		return errors.New("--records, --workers, --kill-every, --min-len must be > 0 and --max-len >= --min-len")
	}
	man, err := gpurun.LoadManifest(*modelDir)
	if err != nil {
		return err
	}
	model := man.Name
	if _, err := os.Stat(gpurun.LibraryPath()); err != nil {
		return fmt.Errorf("ONNX Runtime library (set ONNXRUNTIME_SHARED_LIBRARY_PATH): %w", err)
	}
	exe, err := os.Executable()
	if err != nil {
		return err
	}
	if *dir == "" {
		if *dir, err = os.MkdirTemp("", "seqembed-soak-"); err != nil {
			return err
		}
		if !*keep {
			defer os.RemoveAll(*dir)
		}
	}
	ctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()
	start := time.Now()
	say := func(format string, a ...any) {
		fmt.Fprintf(os.Stderr, "[%7s] %s\n", time.Since(start).Round(time.Second), fmt.Sprintf(format, a...))
	}

	cl, err := jscluster.Config{Name: "seqembed-soak"}.Start(*dir, 3)
	if err != nil {
		return err
	}
	defer cl.Close()
	say("3-node JetStream cluster up: %s (stores under %s)", cl.URLs(), *dir)
	nf := natsFlags{URL: cl.URLs()}
	// Without an async timeout a PubAck lost with a node would leave its future pending forever.
	nc, js, err := nf.dial("seqembed soak", jetstream.WithPublishAsyncMaxPending(4096), jetstream.WithPublishAsyncTimeout(10*time.Second))
	if err != nil {
		return err
	}
	defer nc.Close()
	// R3 streams, created before any worker starts (workers never change an existing stream).
	cons, err := consumer.New(js, model, func([]byte) error { return nil }, consumer.WithReplicas(3),
		consumer.WithStreamMaxBytes(8<<30))
	if err != nil {
		return err
	}
	if err := cons.Setup(ctx); err != nil {
		return err
	}
	if _, err := arrowout.EnsureStream(ctx, js, arrowout.StreamConfig{Replicas: 3}); err != nil {
		return err
	}

	run := &soakRun{exe: exe, urls: cl.URLs(), logDir: *dir, workerArgs: []string{
		"--model", *modelDir, "--http-addr", "", "--log-format", "console", "--log-level", "warn",
		"--threads", strconv.Itoa(*threads), "--ack-wait", ackWait.String(), "--shutdown-timeout", "20s",
	}}
	for i := range *workers {
		f, err := os.Create(filepath.Join(*dir, fmt.Sprintf("worker-%d.log", i+1)))
		if err != nil {
			return err
		}
		w := &soakWorker{idx: i, log: f}
		if err := run.start(w); err != nil {
			return err
		}
		run.workers = append(run.workers, w)
	}
	stopped := false
	defer func() {
		if !stopped {
			run.stopAll(5 * time.Second)
		}
	}()
	superCtx, stopSuper := context.WithCancel(ctx)
	defer stopSuper()
	go run.supervise(superCtx)
	say("%d workers started (%s worker %s)", *workers, exe, strings.Join(run.workerArgs, " "))

	// Producer.
	var published atomic.Int64
	pubDone := make(chan error, 1)
	var pubRetries int
	pubStart := time.Now()
	go func() {
		rng := rand.New(rand.NewPCG(*seed, 0x5eed))
		i := 0
		next := func() *nats.Msg {
			if i >= *records {
				return nil
			}
			n := *minLen + rng.IntN(*maxLen-*minLen+1)
			b := make([]byte, n)
			for k := range b {
				b[k] = soakResidues[rng.IntN(len(soakResidues))]
			}
			i++
			return recordMsg(model, fmt.Sprintf("soak-%08d", i), b)
		}
		var err error
		pubRetries, err = publishAll(ctx, js, 2048, next, func() { published.Add(1) })
		pubDone <- err
	}()

	// Chaos.
	var kills, stepdowns, nodeDowns int
	var chaosLog []string
	chaosCtx, stopChaos := context.WithCancel(ctx)
	chaosDone := make(chan struct{})
	var nodeWG sync.WaitGroup
	go func() {
		defer close(chaosDone)
		rng := rand.New(rand.NewPCG(*seed, 0xc4a05))
		t := time.NewTicker(*killEvery)
		defer t.Stop()
		for tick := 1; ; tick++ {
			select {
			case <-chaosCtx.Done():
				return
			case <-t.C:
			}
			run.mu.Lock()
			w := run.workers[rng.IntN(len(run.workers))]
			err := run.kill(w)
			run.mu.Unlock()
			kills++
			msg := fmt.Sprintf("SIGKILL worker %d (restarted)", w.idx+1)
			if err != nil {
				msg += ": restart failed: " + err.Error()
			}
			switch tick {
			case 2:
				n := cl.StreamLeader(server.DEFAULT_GLOBAL_ACCOUNT, cons.StreamConfig().Name)
				if n < 0 {
					n = rng.IntN(3)
				}
				cl.Shutdown(n)
				nodeDowns++
				msg += fmt.Sprintf("; node n%d (SEQS leader) shut down for %s", n+1, *nodeDown)
				nodeWG.Go(func() {
					time.Sleep(*nodeDown)
					if err := cl.Restart(n); err != nil {
						say("restarting n%d: %v", n+1, err)
						return
					}
					say("node n%d restarted", n+1)
				})
			case 3:
				if err := jscluster.ConsumerStepDown(nc, cons.StreamConfig().Name, consumer.Durable(model)); err != nil {
					msg += "; consumer stepdown failed: " + err.Error()
				} else {
					stepdowns++
					msg += "; consumer leader stepped down"
				}
			}
			chaosLog = append(chaosLog, fmt.Sprintf("%s %s", time.Since(start).Round(time.Second), msg))
			say("chaos: %s", msg)
		}
	}()

	// Wait for the producer, then for the work queue to drain.
	var pubErr error
	pubFinished := false
	progress := time.NewTicker(10 * time.Second)
	defer progress.Stop()
	poll := time.NewTicker(time.Second)
	defer poll.Stop()
	var pubElapsed time.Duration
	for {
		select {
		case pubErr = <-pubDone:
			pubFinished = true
			pubElapsed = time.Since(pubStart)
			say("published %d records in %s (%d publish retries)", published.Load(), pubElapsed.Round(time.Millisecond), pubRetries)
			if pubErr != nil {
				say("publisher: %v", pubErr)
			}
			pubDone = nil
			continue
		case <-ctx.Done():
			stopChaos()
			return fmt.Errorf("soak did not finish: %w", ctx.Err())
		case <-progress.C:
			left, pend, unacked, err := queueState(ctx, js, cons.StreamConfig().Name, model)
			if err != nil {
				say("progress: %d published; queue state unavailable: %v", published.Load(), err)
			} else {
				say("progress: %d published, %d in queue (%d pending, %d unacked)", published.Load(), left, pend, unacked)
			}
			continue
		case <-poll.C:
		}
		if !pubFinished {
			continue
		}
		if pubErr != nil {
			break
		}
		left, pend, unacked, err := queueState(ctx, js, cons.StreamConfig().Name, model)
		if err == nil && left == 0 && pend == 0 && unacked == 0 {
			break
		}
	}
	workDone := time.Since(start)
	stopChaos()
	<-chaosDone
	nodeWG.Wait()
	stopSuper()
	run.stopAll(30 * time.Second)
	stopped = true
	unexpected := int64(0)
	for _, w := range run.workers {
		unexpected += w.exits.Load()
	}
	say("work queue empty after %s; reading EMBEDDINGS", workDone.Round(time.Second))

	// Ledger: read every output message into a deduplicating Parquet sink, then read the file back.
	oinfo, err := streamInfo(ctx, js, arrowout.DefaultStreamName)
	if err != nil {
		return err
	}
	pq := filepath.Join(*dir, "soak.parquet")
	sink, err := arrowout.NewParquetSink(pq)
	if err != nil {
		return err
	}
	total := int(oinfo.State.Msgs)
	if err := arrowout.Sink(ctx, js, arrowout.DefaultStreamName, "", sink, func(int) bool { return sink.Messages() >= total }); err != nil {
		sink.Close()
		return err
	}
	rawDups := sink.Duplicates()
	if err := sink.Close(); err != nil {
		return err
	}
	_, rows, err := arrowout.ReadParquet(pq)
	if err != nil {
		return err
	}
	embedded := make(map[string]int, len(rows))
	for _, r := range rows {
		embedded[r.ID]++
	}
	rawRows := len(rows) + rawDups
	rows = nil
	dupsAfter := 0
	for _, n := range embedded {
		dupsAfter += n - 1
	}
	dls, err := consumer.ReadDeadLetters(ctx, js, cons.StreamConfig().Name, model, 0)
	if err != nil {
		return err
	}
	dead := map[string]bool{}
	reasons := map[string]int{}
	for _, d := range dls {
		dead[d.ID] = true
		reasons[d.Reason]++
	}
	var lost, both int
	var lostIDs []string
	for i := 1; i <= int(published.Load()); i++ {
		id := fmt.Sprintf("soak-%08d", i)
		_, e := embedded[id]
		switch {
		case e && dead[id]:
			both++
		case !e && !dead[id]:
			lost++
			if len(lostIDs) < 10 {
				lostIDs = append(lostIDs, id)
			}
		}
	}
	elapsed := time.Since(start)

	fmt.Println("seqembed soak ledger")
	fmt.Printf("  cluster             3 in-process nats-server nodes, SEQS and EMBEDDINGS R3\n")
	fmt.Printf("  workers             %d processes (%s, %d ORT thread each, ack-wait %s)\n", *workers, model, *threads, *ackWait)
	fmt.Printf("  chaos               %d worker SIGKILLs (every %s), %d node shutdown(s) of %s, %d consumer stepdown(s); %d unexpected worker exits restarted\n",
		kills, *killEvery, nodeDowns, *nodeDown, stepdowns, unexpected)
	for _, l := range chaosLog {
		fmt.Printf("    %s\n", l)
	}
	fmt.Printf("  published           %d (%d publish retries, publishing took %s)\n", published.Load(), pubRetries, pubElapsed.Round(time.Millisecond))
	fmt.Printf("  embedded            %d distinct ids\n", len(embedded))
	fmt.Printf("  dead-lettered       %d %v\n", len(dead), reasons)
	fmt.Printf("  embedded and dead   %d\n", both)
	fmt.Printf("  lost                %d %v\n", lost, lostIDs)
	fmt.Printf("  raw output rows     %d in %d messages (duplicate rows before dedupe: %d)\n", rawRows, total, rawDups)
	fmt.Printf("  duplicates after dedupe %d\n", dupsAfter)
	fmt.Printf("  work done after     %s\n", workDone.Round(time.Millisecond))
	fmt.Printf("  elapsed             %s\n", elapsed.Round(time.Millisecond))
	fmt.Printf("  records/s           %.0f (published records / time until the queue was empty)\n", float64(published.Load())/workDone.Seconds())
	if *keep {
		fmt.Printf("  files               %s\n", *dir)
	}
	switch {
	case pubErr != nil:
		return pubErr
	case lost > 0:
		return fmt.Errorf("%d records lost", lost)
	case dupsAfter > 0:
		return fmt.Errorf("%d duplicate rows after dedupe", dupsAfter)
	}
	return nil
}

func streamInfo(ctx context.Context, js jetstream.JetStream, name string) (*jetstream.StreamInfo, error) {
	var last error
	for range 30 {
		tctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		s, err := js.Stream(tctx, name)
		if err == nil {
			var info *jetstream.StreamInfo
			if info, err = s.Info(tctx); err == nil {
				cancel()
				return info, nil
			}
		}
		cancel()
		last = err
		time.Sleep(time.Second)
	}
	return nil, last
}
