// Package localrun runs a whole job in one process: an embedded JetStream server, one
// pipeline, the FASTA file published onto it and every output sunk to a file. It is
// `seqembed run` and the end-to-end benchmark.
package localrun

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"sort"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"

	"github.com/seqembed/seqembed/arrowout"
	"github.com/seqembed/seqembed/consumer"
	"github.com/seqembed/seqembed/ingest"
	"github.com/seqembed/seqembed/pipeline"
	"github.com/seqembed/seqembed/telemetry"
)

// EmbeddedServer starts an in-process JetStream server on a random loopback port with its store
// in a fresh temp dir; stop shuts it down and removes the store.
func EmbeddedServer() (*server.Server, func(), error) {
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

// Summary is what `seqembed run` reports.
type Summary struct {
	Published    ingest.Stats
	Embedded     int
	DeadLettered int
	Reasons      map[string]int
	Errors       []string      // the dead-letter errors, in stream order
	Elapsed      time.Duration // everything, model load included
	Processing   time.Duration // first publish to last record done
	Warmup       time.Duration
	CUDAGraphs   bool           // the runners replay CUDA graphs
	Stats        pipeline.Stats // the pipeline's, once it stopped
	// Busy is the fraction of Processing with at least one run in flight; MeanGap the runner's
	// mean wait between runs.
	Busy    float64
	MeanGap time.Duration
}

// Run is `seqembed run` and the end-to-end benchmark: an embedded JetStream server, one
// pipeline, the FASTA file at fastaPath published, every output sunk to the file out (format by
// its extension); it returns once every stored record is embedded or dead-lettered.
func Run(ctx context.Context, fastaPath, out string, cfg pipeline.Config, progress io.Writer, log *zap.Logger) (Summary, error) {
	sum := Summary{Reasons: map[string]int{}}
	start := time.Now()
	srv, stopServer, err := EmbeddedServer()
	if err != nil {
		return sum, err
	}
	defer stopServer()
	nc, err := nats.Connect(srv.ClientURL())
	if err != nil {
		return sum, fmt.Errorf("connecting to the embedded server: %w", err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return sum, err
	}
	p, err := pipeline.New(ctx, cfg, pipeline.Deps{Conn: nc, Log: log})
	if err != nil {
		return sum, err
	}
	sum.Warmup, sum.CUDAGraphs = p.Engine().WarmupTook(), p.Engine().CUDAGraphs()
	workerCtx, stopWorker := context.WithCancel(ctx)
	workerDone := make(chan error, 1)
	go func() { workerDone <- p.Run(workerCtx) }()
	defer func() { stopWorker(); <-workerDone }()

	fs, err := arrowout.NewFileSink("", out)
	if err != nil {
		return sum, err
	}
	sink := arrowout.StartSink(ctx, js, cfg.OutStream, "embeddings."+p.Model(), fs, nil)
	defer sink.Finish()

	procStart := time.Now()
	if sum.Published, err = ingest.PublishFASTA(ctx, nc, fastaPath, p.Model(), progress, log); err != nil {
		return sum, err
	}
	expected := sum.Published.Stored + sum.Published.DeadLettered
	bar := telemetry.NewProgress(int64(expected), "embed", progress, progress != nil)
	if sum.Embedded, sum.DeadLettered, err = WaitAllDone(ctx, js, cfg.InStream, p.Model(), sink, expected, bar, workerDone); err != nil {
		return sum, err
	}
	sum.Processing = time.Since(procStart)
	bar.Finish()
	busy, _, gap := p.Engine().Busy().Snapshot(false)
	sum.Busy, sum.MeanGap = busy, gap
	stopWorker()
	if err := <-workerDone; err != nil {
		return sum, err
	}
	workerDone <- nil
	sum.Stats = p.Stats()
	if err := sink.Finish(); err != nil {
		return sum, err
	}
	sum.Embedded = sink.Sink().Rows()
	if err := readDeadLetters(ctx, js, cfg.InStream, p.Model(), &sum); err != nil {
		return sum, err
	}
	sum.Elapsed = time.Since(start)
	return sum, nil
}

// WaitAllDone polls (every 50 ms) until all expected records are embedded (rows the sink wrote)
// or dead-lettered, advancing bar. A value on died (a worker stopped) ends it with an error; the
// value is put back for the caller's own shutdown.
func WaitAllDone(ctx context.Context, js jetstream.JetStream, stream, model string, sink *arrowout.SinkRun, expected int,
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
		deadLettered, embedded = int(info.State.Subjects[dlq]), sink.Rows()
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
		case <-sink.Done():
			return embedded, deadLettered, fmt.Errorf("the sink stopped with %d of %d records done: %w", shown, expected, sink.Finish())
		case <-tick.C:
		}
	}
}

// readDeadLetters fills the summary's reasons and errors from the dead-letter subject.
func readDeadLetters(ctx context.Context, js jetstream.JetStream, stream, model string, sum *Summary) error {
	dls, err := consumer.ReadDeadLetters(ctx, js, stream, model, 0)
	for _, d := range dls {
		sum.Reasons[d.Reason]++
		sum.Errors = append(sum.Errors, d.Error)
	}
	return err
}

func (s Summary) Print(w io.Writer, out string) {
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

