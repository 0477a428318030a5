package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/seqembed/seqembed/ingest"
	"github.com/seqembed/seqembed/internal/cli"
	"github.com/seqembed/seqembed/internal/jobs"
	"github.com/seqembed/seqembed/telemetry"
)

func runPublishCmd(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("publish", flag.ContinueOnError)
	var nf natsFlags
	nf.register(fs)
	model := fs.String("model", "", "model name the records are for: the worker's model.json name (required)")
	var in inputFlags
	in.register(fs, "the records refused at publish time (no id, too large, a stop codon under --stop-codon reject)")
	fs.StringVar(&in.job, "job", "", "publish the records as this job: to seqs.in.MODEL.JOB, embedded to embeddings.MODEL.JOB, which `seqembed sink --job JOB` reads "+
		"and stops at once the job is complete (default: none, seqs.in.MODEL)")
	quiet := fs.Bool("quiet", false, "no progress (a bar on a terminal, else a line every few seconds)")
	setUsage(fs, "usage: seqembed publish --model NAME [flags] FILE...\n\n"+
		"Publishes the records of FASTA files (plain, .gz, .xz, .zst or .bz2, detected by content; - reads standard\n"+
		"input) to seqs.in.NAME (seqs.in.NAME.JOB with --job). Flags may come before, between or after the files.\n"+
		"Exit codes: 0 every record published, 1 failed, 2 usage error, 3 finished but records were refused and\n"+
		"dead-lettered (unless --allow-rejects) or ids came with more than one sequence (unless --allow-id-conflicts).")
	files, err := parseArgs(fs, args)
	if err != nil {
		return err
	}
	if *model == "" {
		return cli.Usagef("--model NAME is required (the model.json name of the workers that embed the records)")
	}
	if len(files) == 0 {
		return cli.Usagef("no FASTA file given: seqembed publish --model NAME [flags] FILE... (- for standard input)")
	}
	stop, err := in.check(files)
	if err != nil {
		return err
	}
	if err := ingest.CheckInputs(files); err != nil {
		return err
	}
	log, err := telemetry.NewLogger("warn", "console")
	if err != nil {
		return err
	}
	opts := ingest.Options{Model: *model, Job: in.job, StopCodon: stop, Progress: os.Stderr, Log: log}
	if *quiet {
		opts.Progress = nil
	}
	var rejects *ingest.RejectsFile
	if in.rejects != "" {
		if rejects, err = ingest.CreateRejectsFile(in.rejects); err != nil {
			return err
		}
		defer rejects.Close()
		opts.OnReject = rejects.Write
	}
	nc, err := nf.connect("seqembed publish", log)
	if err != nil {
		return err
	}
	defer nc.Drain()
	var ledger *jobs.Ledger
	if in.job != "" {
		if ledger, err = beginJob(ctx, nc, in.job, *model); err != nil {
			return err
		}
	}
	start := time.Now()
	st, err := ingest.Publish(ctx, nc, files, opts)
	if ledger != nil {
		// A failed or interrupted publish is finished too, with what it stored (on a context of
		// its own: ctx may be what ended it).
		fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
		j, ferr := ledger.Finish(fctx, in.job, *model, st.Stored+st.DeadLettered)
		cancel()
		if ferr != nil {
			err = errors.Join(err, ferr)
		} else {
			fmt.Fprintf(os.Stderr, "job %s: %d records published in %d publish runs (%d under way); read them with: seqembed sink --job %s --out FILE\n",
				in.job, j.Published, j.Publishes, j.Active, in.job)
		}
	}
	printPublished(os.Stderr, st, time.Since(start))
	if rejects != nil {
		if cerr := rejects.Close(); cerr != nil && err == nil {
			err = cerr
		}
		fmt.Fprintf(os.Stderr, "  refused records: %s (%d rows)\n", rejects.Path(), rejects.Rows())
	}
	if err != nil {
		return err
	}
	var errs []error
	if st.DeadLettered > 0 && !in.allowRejects {
		errs = append(errs, fmt.Errorf("%w: %d of %d records refused and dead-lettered (--allow-rejects exits 0)", cli.ErrRejected,
			st.DeadLettered, st.Records))
	}
	if st.IDConflicts > 0 && !in.allowConflicts {
		errs = append(errs, fmt.Errorf("%w: %d records reuse an earlier record's id with another sequence, e.g. %s; all were published (--allow-id-conflicts exits 0)",
			cli.ErrIDConflicts, st.IDConflicts, strings.Join(st.ConflictExamples, ", ")))
	}
	return errors.Join(errs...)
}

// printPublished writes the publish summary: one line of counts, then the refused records by
// reason.
func printPublished(w io.Writer, st ingest.Stats, took time.Duration) {
	fmt.Fprintf(w, "published %d records from %d files (%d stored, %d duplicate records, %d dead-lettered, %d stop codons stripped) in %s\n",
		st.Records, st.Files, st.Stored, st.Duplicates, st.DeadLettered, st.StopStripped, took.Round(time.Millisecond))
	if st.IDConflicts > 0 {
		fmt.Fprintf(w, "  %d id conflicts: records whose id came earlier with another sequence (e.g. %s); published, each embedded on its own\n",
			st.IDConflicts, strings.Join(st.ConflictExamples, ", "))
	}
	reasons := make([]string, 0, len(st.Reasons))
	for r := range st.Reasons {
		reasons = append(reasons, r)
	}
	sort.Strings(reasons)
	for _, r := range reasons {
		fmt.Fprintf(w, "  dead-lettered %s: %d\n", r, st.Reasons[r])
	}
}

// beginJob opens the jobs ledger (with the input stream's replicas) and records that a publish of
// job for model begins.
func beginJob(ctx context.Context, nc *nats.Conn, job, model string) (*jobs.Ledger, error) {
	js, err := jetstream.New(nc)
	if err != nil {
		return nil, err
	}
	if err := ingest.CheckStream(ctx, js, model, job); err != nil {
		return nil, err
	}
	ledger, err := jobs.Open(ctx, js, 1)
	if err != nil {
		return nil, err
	}
	if _, err := ledger.Begin(ctx, job, model); err != nil {
		if errors.Is(err, jobs.ErrModel) {
			return nil, &cli.UsageError{Err: err}
		}
		return nil, err
	}
	return ledger, nil
}
