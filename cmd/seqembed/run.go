package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"sort"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/seqembed/seqembed/consumer"
	"github.com/seqembed/seqembed/telemetry"
)

// embeddedServer starts an in-process JetStream server on a random loopback port with its store
// in a fresh temp dir; stop shuts it down and removes the store.
func embeddedServer() (*server.Server, func(), error) {
	dir, err := os.MkdirTemp("", "seqembed-js-")
	if err != nil {
		return nil, nil, err
	}
	s, err := server.NewServer(&server.Options{
		Host: "127.0.0.1", Port: -1, JetStream: true, StoreDir: dir,
		NoSigs: true, NoLog: true, ServerName: "seqembed-embedded",
	})
	if err != nil {
		os.RemoveAll(dir)
		return nil, nil, err
	}
	go s.Start()
	if !s.ReadyForConnections(30 * time.Second) {
		s.Shutdown()
		os.RemoveAll(dir)
		return nil, nil, errors.New("embedded nats-server not ready in 30s")
	}
	return s, func() { s.Shutdown(); s.WaitForShutdown(); os.RemoveAll(dir) }, nil
}

// runSummary is what `seqembed run` reports.
type runSummary struct {
	Published    publishStats
	Embedded     int
	DeadLettered int
	Reasons      map[string]int
	Errors       []string      // the dead-letter errors, in stream order
	Elapsed      time.Duration // everything, model load included
	Processing   time.Duration // first publish to last record done
	Warmup       time.Duration
	CUDAGraphs   bool // the runners replay CUDA graphs
	Stats        *workerStats
}

// runJob is `seqembed run`: an embedded JetStream server, one worker, publish the file, sink
// everything to out; it returns once every stored record is embedded or dead-lettered.
func runJob(ctx context.Context, fastaPath, out string, cfg workerConfig, progress io.Writer, log *zap.Logger) (runSummary, error) {
	sum := runSummary{Reasons: map[string]int{}}
	start := time.Now()
	srv, stopServer, err := embeddedServer()
	if err != nil {
		return sum, err
	}
	defer stopServer()
	nc, err := nats.Connect(srv.ClientURL())
	if err != nil {
		return sum, err
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return sum, err
	}
	w, err := newWorker(ctx, cfg, nc, log, prometheus.NewRegistry(), telemetry.NewHealth())
	if err != nil {
		return sum, err
	}
	w.stats.collect = cfg.collectLatency
	sum.Stats, sum.Warmup, sum.CUDAGraphs = w.stats, w.warmup, w.runner.CUDAGraphs()
	workerCtx, stopWorker := context.WithCancel(ctx)
	workerDone := make(chan error, 1)
	go func() { workerDone <- w.run(workerCtx) }()
	defer func() { stopWorker(); <-workerDone }()

	sink, err := startSink(ctx, js, cfg.OutStream, "embeddings."+w.model, out, "", nil)
	if err != nil {
		return sum, err
	}
	defer sink.finish()

	procStart := time.Now()
	if sum.Published, err = publishFASTA(ctx, nc, fastaPath, w.model, progress, log); err != nil {
		return sum, err
	}
	expected := sum.Published.Stored + sum.Published.DeadLettered
	bar := telemetry.NewProgress(int64(expected), "embed", progress, progress != nil)
	if sum.Embedded, sum.DeadLettered, err = waitAllDone(ctx, js, cfg.InStream, w.model, sink, expected, bar, workerDone); err != nil {
		return sum, err
	}
	sum.Processing = time.Since(procStart)
	bar.Finish()
	stopWorker()
	if err := <-workerDone; err != nil {
		return sum, err
	}
	workerDone <- nil
	if err := sink.finish(); err != nil {
		return sum, err
	}
	sum.Embedded = sink.sink.Rows()
	if err := readDeadLetters(ctx, js, cfg.InStream, w.model, &sum); err != nil {
		return sum, err
	}
	sum.Elapsed = time.Since(start)
	return sum, nil
}

// waitAllDone polls (every 50 ms) until all expected records are embedded (rows the sink wrote)
// or dead-lettered, advancing bar. A value on died (a worker stopped) ends it with an error; the
// value is put back for the caller's own shutdown.
func waitAllDone(ctx context.Context, js jetstream.JetStream, stream, model string, sink *sinkRun, expected int,
	bar *telemetry.Progress, died chan error) (embedded, deadLettered int, err error) {
	in, err := js.Stream(ctx, stream)
	if err != nil {
		return 0, 0, err
	}
	dlq := consumer.DLQSubject(model)
	shown := 0
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		info, err := in.Info(ctx, jetstream.WithSubjectFilter(dlq))
		if err != nil {
			return embedded, deadLettered, err
		}
		deadLettered, embedded = int(info.State.Subjects[dlq]), int(sink.rows.Load())
		bar.Add(embedded + deadLettered - shown)
		shown = embedded + deadLettered
		if shown >= expected {
			return embedded, deadLettered, nil
		}
		select {
		case <-ctx.Done():
			return embedded, deadLettered, ctx.Err()
		case err := <-died:
			died <- err
			return embedded, deadLettered, fmt.Errorf("worker stopped with %d of %d records done: %v", shown, expected, err)
		case <-tick.C:
		}
	}
}

// readDeadLetters fills the summary's reasons and errors from the dead-letter subject.
func readDeadLetters(ctx context.Context, js jetstream.JetStream, stream, model string, sum *runSummary) error {
	dls, err := consumer.ReadDeadLetters(ctx, js, stream, model, 0)
	for _, d := range dls {
		sum.Reasons[d.Reason]++
		sum.Errors = append(sum.Errors, d.Error)
	}
	return err
}

func (s runSummary) print(w io.Writer, out string) {
	rate := float64(s.Published.Residues) / s.Elapsed.Seconds()
	fmt.Fprintf(w, "\nseqembed run: %d records read, %d embedded -> %s, %d dead-lettered, %d duplicate ids\n",
		s.Published.Records, s.Embedded, out, s.DeadLettered, s.Published.Duplicates)
	fmt.Fprintf(w, "  %d residues in %s: %.0f residues/s, %.1f sequences/s (including model load)\n",
		s.Published.Residues, s.Elapsed.Round(time.Millisecond), rate, float64(s.Embedded)/s.Elapsed.Seconds())
	if s.DeadLettered > 0 {
		reasons := make([]string, 0, len(s.Reasons))
		for r := range s.Reasons {
			reasons = append(reasons, r)
		}
		sort.Strings(reasons)
		for _, r := range reasons {
			fmt.Fprintf(w, "  dead-lettered %s: %d\n", r, s.Reasons[r])
		}
		for i, e := range s.Errors {
			if i == 10 {
				fmt.Fprintf(w, "  ... and %d more\n", len(s.Errors)-10)
				break
			}
			fmt.Fprintf(w, "  - %s\n", e)
		}
	}
}

func runRunCmd(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("run", flag.ContinueOnError)
	var cfg workerConfig
	cfg.register(fs)
	out := fs.String("out", "embeddings.parquet", "file to write: an Arrow IPC file if it ends in .arrow, .arrows, .feather or .ipc, else Parquet")
	logLevel := fs.String("log-level", "warn", "debug, info, warn or error")
	quiet := fs.Bool("quiet", false, "no progress bars")
	fs.Usage = func() {
		fmt.Fprintln(fs.Output(), "usage: seqembed run [flags] FILE.fasta[.gz]\n\nEmbeds a FASTA file end to end in one process: embedded JetStream, worker, sink.")
		fs.PrintDefaults()
	}
	// Accept the FASTA file before or after the flags.
	var file string
	if len(args) > 0 && len(args[0]) > 0 && args[0][0] != '-' {
		file, args = args[0], args[1:]
	}
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if file == "" && fs.NArg() == 1 {
		file = fs.Arg(0)
	}
	if file == "" {
		fs.Usage()
		return flag.ErrHelp
	}
	log, err := telemetry.NewLogger(*logLevel, "console")
	if err != nil {
		return err
	}
	defer log.Sync()
	var bar io.Writer = os.Stderr
	if *quiet {
		bar = nil
	}
	sum, err := runJob(ctx, file, *out, cfg, bar, log)
	if err != nil {
		return err
	}
	sum.print(os.Stdout, *out)
	return nil
}
