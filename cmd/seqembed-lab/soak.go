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
	"github.com/seqembed/seqembed/ingest"
	"github.com/seqembed/seqembed/internal/jscluster"
	"github.com/seqembed/seqembed/internal/jspub"
	"github.com/seqembed/seqembed/internal/retry"
)

// `seqembed-lab soak`: a 3-node in-process JetStream cluster, `seqembed worker` child processes
// SIGKILLed and restarted, a node shutdown and a consumer leader stepdown while a million random
// records are published; then a ledger of every record: embedded, dead-lettered, lost or
// duplicated.

// soakProc is one run of a worker's process.
type soakProc struct {
	cmd    *exec.Cmd
	done   chan error // cmd.Wait's result
	killed bool       // SIGKILLed by the chaos loop (guarded by the worker's mu)
}

// soakWorker is one `seqembed worker` child process, kept running by its keeper (soakRun.keep).
type soakWorker struct {
	idx   int
	log   *os.File
	mu    sync.Mutex
	proc  *soakProc    // the current process; nil before the first start
	exits atomic.Int64 // exits not caused by the chaos loop
}

// signal sends sig to the worker's current process, if any.
func (w *soakWorker) signal(sig os.Signal) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.proc != nil {
		_ = w.proc.cmd.Process.Signal(sig)
	}
}

type soakRun struct {
	exe, urls  string
	workerArgs []string
	workers    []*soakWorker
	say        func(format string, a ...any)
	stopping   atomic.Bool
	keepers    sync.WaitGroup
	stopKeep   context.CancelFunc
}

var errStopping = errors.New("soak stopping")

// restartPolicy is how a worker that exited on its own (not the chaos loop: e.g. the cluster
// was unreachable at start-up) or failed to start is started again: after a second, forever.
var restartPolicy = retry.Policy{Initial: time.Second, Max: time.Second}

// startWorkers starts every worker's keeper.
func (r *soakRun) startWorkers(ctx context.Context) {
	ctx, r.stopKeep = context.WithCancel(ctx)
	for _, w := range r.workers {
		r.keepers.Go(func() { r.keep(ctx, w) })
	}
}

// keep runs worker w until stopAll: a process the chaos loop killed is started again at once,
// one that exited on its own (counted in w.exits) under restartPolicy.
func (r *soakRun) keep(ctx context.Context, w *soakWorker) {
	pol := restartPolicy
	pol.OnRetry = func(_ int, err error, wait time.Duration) {
		r.say("worker %d: %v; starting it again in %s", w.idx+1, err, wait.Round(100*time.Millisecond))
	}
	_ = retry.Do(ctx, pol, func(context.Context) error {
		for {
			p, err := r.start(w)
			if errors.Is(err, errStopping) {
				return nil
			}
			if err != nil {
				return err
			}
			exit := <-p.done
			if r.stopping.Load() {
				return nil
			}
			w.mu.Lock()
			killed := p.killed
			w.mu.Unlock()
			if !killed {
				w.exits.Add(1)
				return fmt.Errorf("exited on its own (%v)", exit)
			}
		}
	})
}

// start starts a new process for w, unless the soak is stopping (errStopping).
func (r *soakRun) start(w *soakWorker) (*soakProc, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if r.stopping.Load() { // checked under mu: stopAll signals every process started before it
		return nil, errStopping
	}
	args := append([]string{"worker", "--nats", r.urls}, r.workerArgs...)
	cmd := exec.Command(r.exe, args...)
	cmd.Stdout, cmd.Stderr = w.log, w.log
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	p := &soakProc{cmd: cmd, done: make(chan error, 1)}
	go func() { p.done <- cmd.Wait() }()
	w.proc = p
	return p, nil
}

// kill SIGKILLs worker w's process; its keeper starts it again at once.
func (r *soakRun) kill(w *soakWorker) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.proc != nil {
		w.proc.killed = true
		_ = w.proc.cmd.Process.Signal(syscall.SIGKILL)
	}
}

// stopAll SIGTERMs every worker and waits up to timeout for them to finish in-flight batches,
// SIGKILLing those still running then.
func (r *soakRun) stopAll(timeout time.Duration) {
	r.stopping.Store(true)
	if r.stopKeep != nil {
		r.stopKeep() // keepers waiting to restart a worker return at once
	}
	for _, w := range r.workers {
		w.signal(syscall.SIGTERM)
	}
	done := make(chan struct{})
	go func() { r.keepers.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(timeout):
		for _, w := range r.workers {
			w.signal(syscall.SIGKILL)
		}
		<-done
	}
	for _, w := range r.workers {
		w.log.Close()
	}
}

// defaultSeqembed is the seqembed binary next to this one, else the one on PATH.
func defaultSeqembed() (string, error) {
	if exe, err := os.Executable(); err == nil {
		p := filepath.Join(filepath.Dir(exe), "seqembed")
		if st, err := os.Stat(p); err == nil && st.Mode().IsRegular() {
			return p, nil
		}
	}
	p, err := exec.LookPath("seqembed")
	if err != nil {
		return "", fmt.Errorf("no seqembed binary next to seqembed-lab or on PATH (go build -o bin/seqembed ./cmd/seqembed, or pass --seqembed PATH): %w", err)
	}
	return p, nil
}

var soakResidues = []byte("ACDEFGHIKLMNPQRSTVWY")

func runSoakCmd(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("soak", flag.ContinueOnError)
	records := fs.Int("records", 1_000_000, "records to publish")
	workers := fs.Int("workers", 2, "worker child processes")
	killEvery := fs.Duration("kill-every", 20*time.Second, "SIGKILL a random worker (and restart it) this often")
	nodeDown := fs.Duration("node-down", 5*time.Second, "how long the one node shutdown lasts (0: no node shutdown)")
	modelDir := fs.String("model", "testdata/esm2-tiny", "model directory")
	minLen := fs.Int("min-len", 30, "shortest random sequence")
	maxLen := fs.Int("max-len", 60, "longest random sequence")
	threads := fs.Int("threads", 1, "ONNX Runtime threads per worker")
	ackWait := fs.Duration("ack-wait", 10*time.Second, "workers' --ack-wait: how soon a killed worker's records are redelivered")
	seed := fs.Uint64("seed", 1, "random seed of the sequences and the chaos")
	dir := fs.String("dir", "", "directory for the node stores, worker logs and the Parquet output (default: a new temp dir, removed at the end unless --keep)")
	keep := fs.Bool("keep", false, "keep --dir's contents")
	timeout := fs.Duration("timeout", 3*time.Hour, "give up after this long")
	extra := fs.String("worker-flags", "", "more `seqembed worker` flags, space-separated (e.g. \"--max-held-tokens 32768\")")
	exe := fs.String("seqembed", "", "the seqembed binary whose `seqembed worker` processes are soaked (default: seqembed next to seqembed-lab, else on PATH)")
	if err := fs.Parse(args); err != nil {
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
	if *exe == "" {
		if *exe, err = defaultSeqembed(); err != nil {
			return err
		}
	}
	if out, err := exec.CommandContext(ctx, *exe, "version").CombinedOutput(); err != nil {
		return fmt.Errorf("--seqembed %s: `version` failed: %w (%s)", *exe, err, strings.TrimSpace(string(out)))
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
	var sayMu sync.Mutex
	say := func(format string, a ...any) {
		sayMu.Lock()
		defer sayMu.Unlock()
		fmt.Fprintf(os.Stderr, "[%7s] %s\n", time.Since(start).Round(time.Second), fmt.Sprintf(format, a...))
	}

	cl, err := jscluster.Config{Name: "seqembed-soak"}.Start(*dir, 3)
	if err != nil {
		return err
	}
	defer cl.Close()
	say("3-node JetStream cluster up: %s (stores under %s)", cl.URLs(), *dir)
	nc, err := nats.Connect(cl.URLs(), nats.Name("seqembed-lab soak"), nats.MaxReconnects(-1),
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) {
			if err != nil { // nil: closed by the soak itself
				say("nats: disconnected: %v", err)
			}
		}),
		nats.ReconnectHandler(func(nc *nats.Conn) { say("nats: reconnected to %s", nc.ConnectedUrlRedacted()) }))
	if err != nil {
		return fmt.Errorf("connecting to the cluster: %w", err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return err
	}
	// R3 streams, created before any worker starts (workers never change an existing stream).
	cons, err := consumer.New(js, model, func([]byte) error { return nil }, consumer.WithReplicas(3),
		consumer.WithStreamMaxBytes(8<<30))
	if err != nil {
		return err
	}
	if err := setupStreams(ctx, js, cons); err != nil {
		return err
	}

	run := &soakRun{exe: *exe, urls: cl.URLs(), say: say, workerArgs: []string{
		"--model", *modelDir, "--http-addr", "", "--log-format", "console", "--log-level", "warn",
		"--threads", strconv.Itoa(*threads), "--ack-wait", ackWait.String(), "--shutdown-timeout", "20s",
	}}
	run.workerArgs = append(run.workerArgs, strings.Fields(*extra)...)
	for i := range *workers {
		f, err := os.Create(filepath.Join(*dir, fmt.Sprintf("worker-%d.log", i+1)))
		if err != nil {
			for _, w := range run.workers {
				w.log.Close()
			}
			return err
		}
		run.workers = append(run.workers, &soakWorker{idx: i, log: f})
	}
	run.startWorkers(ctx)
	stopped := false
	defer func() {
		if !stopped {
			run.stopAll(5 * time.Second)
		}
	}()
	say("%d workers started (%s worker %s)", *workers, *exe, strings.Join(run.workerArgs, " "))

	// Producer: a window of 2,048 PubAcks; a record whose PubAck is lost (a node down, a leader
	// change) is republished with its Nats-Msg-Id until stored. A PubAck times out after 10 s,
	// so none lost with a node waits forever.
	var published atomic.Int64
	pub, err := jspub.New(nc, jspub.WithWindow(2048), jspub.WithAckTimeout(10*time.Second),
		jspub.WithRetry(retry.Policy{Initial: 100 * time.Millisecond, Max: 2 * time.Second, PerTry: 5 * time.Second}),
		jspub.WithOnAck(func(jspub.Ack) { published.Add(1) }))
	if err != nil {
		return err
	}
	pubDone := make(chan error, 1)
	pubStart := time.Now()
	go func() {
		defer pub.Close()
		rng := rand.New(rand.NewPCG(*seed, 0x5eed))
		for i := 1; i <= *records; i++ {
			n := *minLen + rng.IntN(*maxLen-*minLen+1)
			b := make([]byte, n)
			for k := range b {
				b[k] = soakResidues[rng.IntN(len(soakResidues))]
			}
			if err := pub.Publish(ctx, ingest.RecordMsg(model, fmt.Sprintf("soak-%08d", i), b)); err != nil {
				pubDone <- err
				return
			}
		}
		pubDone <- pub.Flush(ctx)
	}()

	// Chaos.
	var kills, stepdowns, nodeDowns int
	var chaosLog []string
	chaosCtx, stopChaos := context.WithCancel(ctx)
	defer stopChaos()
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
			w := run.workers[rng.IntN(len(run.workers))]
			run.kill(w)
			kills++
			msg := fmt.Sprintf("SIGKILL worker %d (restarted)", w.idx+1)
			switch {
			case tick == 2 && *nodeDown > 0:
				n := cl.StreamLeader(server.DEFAULT_GLOBAL_ACCOUNT, cons.StreamConfig().Name)
				if n < 0 {
					n = rng.IntN(3)
				}
				cl.Shutdown(n)
				nodeDowns++
				msg += fmt.Sprintf("; node n%d (SEQS leader) shut down for %s", n+1, *nodeDown)
				nodeWG.Go(func() {
					// The outage is the scenario: the node stays down for --node-down.
					down := time.NewTimer(*nodeDown)
					defer down.Stop()
					select {
					case <-down.C:
					case <-ctx.Done():
					}
					if err := cl.Restart(n); err != nil {
						say("restarting n%d: %v", n+1, err)
						return
					}
					say("node n%d restarted", n+1)
				})
			case tick == 3:
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
			say("published %d records in %s (%d publish retries)", published.Load(), pubElapsed.Round(time.Millisecond), pub.Retries())
			if pubErr != nil {
				say("publisher: %v", pubErr)
			}
			pubDone = nil
			continue
		case <-ctx.Done():
			stopChaos()
			<-chaosDone
			nodeWG.Wait()
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
	dls, err := consumer.ReadDeadLetters(ctx, js, cons.StreamConfig().Name, model, "", 0)
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

	fmt.Println("seqembed-lab soak ledger")
	fmt.Printf("  cluster             3 in-process nats-server nodes, SEQS and EMBEDDINGS R3\n")
	fmt.Printf("  workers             %d processes (%s, %d ORT thread each, ack-wait %s)\n", *workers, model, *threads, *ackWait)
	fmt.Printf("  chaos               %d worker SIGKILLs (every %s), %d node shutdown(s) of %s, %d consumer stepdown(s); %d unexpected worker exits restarted\n",
		kills, *killEvery, nodeDowns, *nodeDown, stepdowns, unexpected)
	for _, l := range chaosLog {
		fmt.Printf("    %s\n", l)
	}
	fmt.Printf("  published           %d (%d publish retries, publishing took %s)\n", published.Load(), pub.Retries(), pubElapsed.Round(time.Millisecond))
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
	case len(dead) > 0: // every soak record is valid: a dead letter is a false one
		return fmt.Errorf("%d valid records dead-lettered %v", len(dead), reasons)
	}
	return nil
}

// setupStreams creates cons's input stream and consumer and the R3 output stream, each API call
// given 10 s and tried again as the worker's own setup does: a request to a cluster that has just
// elected its meta leader can go unanswered (one held a soak's 7 minutes, another
// TestClusterFailover's 120 s).
func setupStreams(ctx context.Context, js jetstream.JetStream, cons *consumer.Consumer) error {
	pol := retry.Policy{Initial: 100 * time.Millisecond, Max: time.Second, PerTry: 10 * time.Second, Retryable: retry.Timeouts}
	if err := retry.Do(ctx, pol, cons.Setup); err != nil {
		return err
	}
	return retry.Do(ctx, pol, func(ctx context.Context) error {
		_, err := arrowout.EnsureStream(ctx, js, arrowout.StreamConfig{Replicas: 3})
		return err
	})
}
