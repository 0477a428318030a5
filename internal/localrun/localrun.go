// Package localrun runs a whole job in one process: an embedded JetStream server, one
// pipeline, the FASTA files published onto it and every output sunk to a file. It is
// `seqembed run` and the end-to-end benchmark.
package localrun

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"

	"github.com/seqembed/seqembed/arrowout"
	"github.com/seqembed/seqembed/consumer"
	"github.com/seqembed/seqembed/gpurun"
	"github.com/seqembed/seqembed/ingest"
	"github.com/seqembed/seqembed/internal/jobs"
	"github.com/seqembed/seqembed/internal/natsconn"
	"github.com/seqembed/seqembed/pipeline"
	"github.com/seqembed/seqembed/telemetry"
)

// EmbeddedMaxPayload is the embedded server's max_payload: 64 MiB, NATS's ceiling.
const EmbeddedMaxPayload = natsconn.MaxPayloadCeiling

// EmbeddedServer starts an in-process JetStream server on a random loopback port with its store
// in a fresh temp dir; stop shuts it down and removes the store.
func EmbeddedServer() (*server.Server, func(), error) {
	dir, err := os.MkdirTemp("", "seqembed-js-")
	if err != nil {
		return nil, nil, err
	}
	s, err := server.NewServer(&server.Options{
		Host: "127.0.0.1", Port: -1, JetStream: true, StoreDir: dir,
		// The largest message NATS allows: a per-residue output row of a big model is megabytes
		// (1022 residues × 1280 dims in float16 is 2.6 MB) and this server is ours alone.
		MaxPayload: EmbeddedMaxPayload,
		NoSigs:     true, NoLog: true, ServerName: "seqembed-embedded",
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

// DialEmbedded connects to the embedded server srv as name, logging its disconnects (with their
// cause, e.g. "slow consumer"), reconnects and asynchronous errors as every seqembed connection
// does (natsconn.Watched).
func DialEmbedded(srv *server.Server, name string, log *zap.Logger) (*nats.Conn, error) {
	nc, err := nats.Connect(srv.ClientURL(), natsconn.Watched(name, log, natsconn.Events{})...)
	if err != nil {
		return nil, fmt.Errorf("connecting to the embedded server as %s: %w", name, err)
	}
	return nc, nil
}

// Summary is what `seqembed run` reports.
type Summary struct {
	Job          string // the job's name (its subjects: consumer.JobSubject, arrowout.Subject)
	Published    ingest.Stats
	Embedded     int
	DeadLettered int
	Reasons      map[string]int    // dead-lettered records by reason code
	Examples     map[string]string // one dead-letter message per reason (the first)
	Rejects      string            // the rejects file written ("" = none)
	RejectsRows  int               // rows in it
	// Conflicts counts the rows kept although their id came before with another sequence (the
	// sink's id conflicts), in ConflictIDs ids (ConflictExamples names up to 5); ConflictsFile
	// lists them ("" when there is none).
	Conflicts        int
	ConflictIDs      int
	ConflictExamples []string
	ConflictsFile    string
	Elapsed          time.Duration // everything, model load included
	Processing       time.Duration // first publish to last record done
	Warmup           time.Duration
	CUDAGraphs       bool // the runners replay CUDA graphs
	// GraphsBefore and GraphsAfter are the CUDA-graph counters at the first publish and once
	// every record was done (pipeline.Engine.GraphStats).
	GraphsBefore, GraphsAfter gpurun.GraphStats
	Stats                     pipeline.Stats // the pipeline's, once it stopped
	// Busy is the fraction of Processing with at least one run in flight; MeanGap the runner's
	// mean wait between runs.
	Busy    float64
	MeanGap time.Duration
	// SlowConsumers counts the connections the embedded server dropped for falling behind (each
	// costs the records it was delivering their AckWait before they are redelivered); 0 normally.
	SlowConsumers int64
}

// Job is one `seqembed run`.
type Job struct {
	Inputs    []string         // FASTA files, read in order ("-" = standard input, once); at least one
	Name      string           // the job (consumer.JobSubject); "" = a fresh one (jobs.NewName)
	Out       string           // the output file (CheckOutput)
	Format    string           // parquet or arrow; "" = by Out's suffix
	Force     bool             // replace an existing Out (and conflicts file)
	Rejects   string           // write every dead-lettered record to this TSV file (ingest.RejectsFile); "" = none
	Conflicts string           // write the id conflicts to this TSV file (arrowout.ConflictsColumns); "" = ConflictsPath(Out)
	StopCodon ingest.StopCodon // a trailing '*': strip (the default) or reject
	Config    pipeline.Config
	Progress  io.Writer   // progress indicators (telemetry.NewProgress); nil = none
	Log       *zap.Logger // nil = none
}

// Run is RunJob for one file, writing out in the format its suffix says (replacing it if it
// exists; the end-to-end benchmark writes into a fresh directory).
func Run(ctx context.Context, fastaPath, out string, cfg pipeline.Config, progress io.Writer, log *zap.Logger) (Summary, error) {
	return RunJob(ctx, Job{Inputs: []string{fastaPath}, Out: out, Force: true, Config: cfg, Progress: progress, Log: log})
}

// RunJob is `seqembed run` and the end-to-end benchmark: an embedded JetStream server, one
// pipeline, the input files published, every output sunk to the file job.Out; it returns once
// every stored record is embedded or dead-lettered. The output path, the inputs, the
// configuration and the rejects file are checked before the model loads: a bad one fails at
// once (ErrOutputFormat, ErrOutputPath, pipeline.ErrConfig, ...).
func RunJob(ctx context.Context, job Job) (Summary, error) {
	sum := Summary{Job: job.Name, Reasons: map[string]int{}, Examples: map[string]string{}}
	if sum.Job == "" {
		sum.Job = jobs.NewName()
	} else if err := consumer.CheckJob(sum.Job); err != nil {
		return sum, err
	}
	start := time.Now()
	log, cfg := job.Log, job.Config
	if log == nil {
		log = zap.NewNop()
	}
	if len(job.Inputs) == 0 {
		return sum, errors.New("localrun: no input files")
	}
	format, err := CheckOutput(job.Out, job.Format, job.Force)
	if err != nil {
		return sum, err
	}
	conflicts := job.Conflicts
	if conflicts == "" {
		conflicts = ConflictsPath(job.Out)
	}
	if err := CheckConflicts(conflicts, job.Out, job.Force); err != nil {
		return sum, err
	}
	if err := ingest.CheckInputs(job.Inputs); err != nil {
		return sum, err
	}
	if err := cfg.Validate(); err != nil {
		return sum, err
	}
	var rejects *ingest.RejectsFile
	if job.Rejects != "" {
		if rejects, err = ingest.CreateRejectsFile(job.Rejects); err != nil {
			return sum, err
		}
		defer rejects.Close()
	}
	srv, stopServer, err := EmbeddedServer()
	if err != nil {
		return sum, err
	}
	defer stopServer()
	// The worker, the sink and the FASTA publisher each have their own connection, as the separate
	// processes of a deployment have: the server drops a connection whose outbound queue passes
	// max_pending (64 MiB by default) as a slow consumer, and with one connection the sink's pulls
	// of per-residue outputs and the worker's deliveries shared that queue (2026-12-02, 650M
	// per-residue e2e: a record delivered into the dropped connection waited out its AckWait).
	conns := make([]*nats.Conn, 3)
	for i, name := range []string{"seqembed-run-worker", "seqembed-run-sink", "seqembed-run-publish"} {
		if conns[i], err = DialEmbedded(srv, name, log); err != nil {
			return sum, err
		}
		defer conns[i].Close()
	}
	nc, sinkNC, pubNC := conns[0], conns[1], conns[2]
	js, err := jetstream.New(nc)
	if err != nil {
		return sum, err
	}
	sinkJS, err := jetstream.New(sinkNC)
	if err != nil {
		return sum, err
	}
	p, err := pipeline.New(ctx, cfg, pipeline.Deps{Conn: nc, Log: log})
	if err != nil {
		return sum, err
	}
	sum.Warmup, sum.CUDAGraphs = p.Engine().WarmupTook(), p.Engine().CUDAGraphs()
	if format == "parquet" && float16Residues(p.Engine().Manifest()) {
		log.Warn("per-residue float16 states into a Parquet file: arrow-go's Parquet writer takes about 20 MB/s of them "+
			"(some 8k residues/s for ESM-2 650M: it will be the job's bottleneck); an Arrow IPC file (--out NAME.arrow) takes about 550 MB/s",
			zap.String("out", job.Out))
	}
	workerCtx, stopWorker := context.WithCancel(ctx)
	workerDone := make(chan error, 1)
	go func() { workerDone <- p.Run(workerCtx) }()
	defer func() { stopWorker(); <-workerDone }()

	fs, err := arrowout.NewFileSink(format, job.Out, arrowout.WithConflictsFile(conflicts))
	if err != nil {
		return sum, err
	}
	sink := arrowout.StartSink(ctx, sinkJS, cfg.OutStream, arrowout.Subject(p.Model(), sum.Job), fs, nil)
	defer sink.Finish()

	procStart := time.Now()
	sum.GraphsBefore = p.Engine().GraphStats()
	var refused []ingest.Reject // at publish time
	opts := ingest.Options{Model: p.Model(), Job: sum.Job, StopCodon: job.StopCodon, Progress: job.Progress, Log: log}
	if rejects != nil {
		opts.OnReject = func(r ingest.Reject) error { refused = append(refused, r); return nil }
	}
	if sum.Published, err = ingest.Publish(ctx, pubNC, job.Inputs, opts); err != nil {
		return sum, err
	}
	expected := sum.Published.Stored + sum.Published.DeadLettered
	bar := telemetry.NewProgress(int64(expected), "embed", job.Progress, job.Progress != nil)
	if sum.Embedded, sum.DeadLettered, err = WaitAllDone(ctx, js, cfg.InStream, p.Model(), sum.Job, sink, expected, bar, workerDone); err != nil {
		return sum, err
	}
	sum.Processing = time.Since(procStart)
	sum.SlowConsumers = srv.NumSlowConsumers()
	sum.GraphsAfter = p.Engine().GraphStats()
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
	sum.Conflicts, sum.ConflictIDs = fs.Conflicts(), fs.ConflictIDs()
	if sum.Conflicts > 0 {
		sum.ConflictExamples, sum.ConflictsFile = fs.ConflictExamples(5), conflicts
	}
	dls, err := consumer.ReadDeadLetters(ctx, js, cfg.InStream, p.Model(), sum.Job, 0)
	if err != nil {
		return sum, err
	}
	for _, d := range dls {
		sum.Reasons[d.Reason]++
		if _, ok := sum.Examples[d.Reason]; !ok {
			sum.Examples[d.Reason] = d.Error
		}
	}
	if rejects != nil {
		rows := append(refused, workerRejects(job.Inputs, sum.Published.FileRecords, dls, p.Engine().Tokenizer())...)
		sortRejects(job.Inputs, rows)
		for _, r := range rows {
			if err := rejects.Write(r); err != nil {
				return sum, err
			}
		}
		if err := rejects.Close(); err != nil {
			return sum, err
		}
		sum.Rejects, sum.RejectsRows = job.Rejects, rejects.Rows()
	}
	sum.Elapsed = time.Since(start)
	return sum, nil
}

// WaitAllDone polls (every 50 ms) until all expected records of model's job are embedded (rows the sink wrote)
// or dead-lettered, advancing bar. A value on died (a worker stopped) ends it with an error; the
// value is put back for the caller's own shutdown.
func WaitAllDone(ctx context.Context, js jetstream.JetStream, stream, model, job string, sink *arrowout.SinkRun, expected int,
	bar *telemetry.Progress, died chan error) (embedded, deadLettered int, err error) {
	in, err := js.Stream(ctx, stream)
	if err != nil {
		return 0, 0, err
	}
	dlq := consumer.JobDLQSubject(model, job)
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

// Print writes the summary for the output file out: counts, the rate, and the dead-lettered
// records counted by reason with one example message each (the rejects file lists them all).
func (s Summary) Print(w io.Writer, out string) {
	rate := float64(s.Published.Residues) / s.Elapsed.Seconds()
	files := "1 file"
	if s.Published.Files != 1 {
		files = fmt.Sprintf("%d files", s.Published.Files)
	}
	fmt.Fprintf(w, "\nseqembed run: %d records read from %s, %d embedded -> %s, %d dead-lettered, %d duplicate records\n",
		s.Published.Records, files, s.Embedded, out, s.DeadLettered, s.Published.Duplicates)
	if s.Conflicts > 0 {
		fmt.Fprintf(w, "  %d id conflicts: %d ids came with more than one sequence (e.g. %s); every sequence is embedded, one row each: %s\n",
			s.Conflicts, s.ConflictIDs, strings.Join(s.ConflictExamples, ", "), s.ConflictsFile)
	}
	if s.Published.StopStripped > 0 {
		fmt.Fprintf(w, "  %d trailing stop codons '*' stripped (records flagged %s)\n", s.Published.StopStripped, ingest.HeaderStopStripped)
	}
	fmt.Fprintf(w, "  %d residues in %s: %.0f residues/s, %.1f sequences/s (including model load)\n",
		s.Published.Residues, s.Elapsed.Round(time.Millisecond), rate, float64(s.Embedded)/s.Elapsed.Seconds())
	if s.SlowConsumers > 0 {
		fmt.Fprintf(w, "  the embedded NATS server dropped %d slow connection(s): records it was delivering waited out their AckWait (nothing is lost; the run was slower)\n", s.SlowConsumers)
	}
	if len(s.Reasons) == 0 {
		return
	}
	reasons := make([]string, 0, len(s.Reasons))
	for r := range s.Reasons {
		reasons = append(reasons, r)
	}
	sort.Slice(reasons, func(i, j int) bool {
		if a, b := s.Reasons[reasons[i]], s.Reasons[reasons[j]]; a != b {
			return a > b
		}
		return reasons[i] < reasons[j]
	})
	fmt.Fprintln(w, "  dead-lettered by reason:")
	for _, r := range reasons {
		fmt.Fprintf(w, "    %-16s %6d  e.g. %s\n", r, s.Reasons[r], s.Examples[r])
	}
	if s.Rejects != "" {
		fmt.Fprintf(w, "  every dead-lettered record: %s (%d rows)\n", s.Rejects, s.RejectsRows)
	} else {
		fmt.Fprintln(w, "  pass --rejects FILE for the list of every dead-lettered record")
	}
}

// float16Residues reports whether man has a per-residue output in float16 (the slow kind for the
// Parquet writer: arrowout BenchmarkSinkPerResidue).
func float16Residues(man *gpurun.Manifest) bool {
	for _, o := range man.Outputs {
		if o.PerResidue() && o.DType == "float16" {
			return true
		}
	}
	return false
}
