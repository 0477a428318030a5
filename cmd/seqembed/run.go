package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/seqembed/seqembed/consumer"
	"github.com/seqembed/seqembed/ingest"
	"github.com/seqembed/seqembed/internal/cli"
	"github.com/seqembed/seqembed/internal/localrun"
	"github.com/seqembed/seqembed/modelhub"
	"github.com/seqembed/seqembed/pipeline"
	"github.com/seqembed/seqembed/telemetry"
)

func runRunCmd(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("run", flag.ContinueOnError)
	var cfg pipeline.Config
	registerWorkerFlags(fs, &cfg, modelFlags...)
	out := fs.String("out", "embeddings.parquet", "file to write: Parquet (.parquet, .pq, .parq) or an Arrow IPC file (.arrow, .arrows, .feather, .ipc); another suffix needs --format")
	format := fs.String("format", "", "output format, parquet or arrow (Arrow IPC file) (default: by the suffix of --out)")
	force := fs.Bool("force", false, "replace --out (and its conflicts file) if it exists (default: refuse)")
	conflicts := fs.String("conflicts", "", "write the ids that come with more than one sequence to this TSV file, when there are any (default: --out with .conflicts.tsv appended)")
	var in inputFlags
	in.register(fs, "every dead-lettered record")
	fs.StringVar(&in.job, "job", "", "the job's name: its records, dead letters and embeddings go to subjects of their own (default: a fresh run-XXXXXXXXXXXX)")
	logLevel := fs.String("log-level", "warn", "debug, info, warn or error")
	quiet := fs.Bool("quiet", false, "no progress (a bar on a terminal, else a line every few seconds)")
	setUsage(fs, "usage: seqembed run [flags] FILE...\n\n"+
		"Embeds FASTA files (plain, .gz, .xz, .zst or .bz2, detected by content; - reads standard input) end to end in\n"+
		"one process: embedded JetStream, worker, sink. Flags may come before, between or after the files.\n"+
		"Exit codes: 0 every record embedded, 1 failed, 2 usage error, 3 finished but records were dead-lettered\n"+
		"(unless --allow-rejects) or ids came with more than one sequence (unless --allow-id-conflicts).")
	files, err := parseArgs(fs, args)
	if err != nil {
		return err
	}
	if len(files) == 0 {
		return cli.Usagef("no FASTA file given: seqembed run [flags] FILE... (- for standard input)")
	}
	stop, err := in.check(files)
	if err != nil {
		return err
	}
	if err := cfg.Validate(); err != nil {
		return &cli.UsageError{Err: err}
	}
	log, err := telemetry.NewLogger(*logLevel, "console")
	if err != nil {
		return &cli.UsageError{Err: fmt.Errorf("--log-level: %w", err)}
	}
	defer log.Sync()
	var bar io.Writer = os.Stderr
	if *quiet {
		bar = nil
	}
	if strings.HasPrefix(cfg.ModelDir, modelhub.Scheme) {
		// The output is checked before a model is pulled or built (RunJob checks it again).
		if _, err := localrun.CheckOutput(*out, *format, *force); err != nil {
			if errors.Is(err, localrun.ErrOutputFormat) {
				return &cli.UsageError{Err: err}
			}
			return err
		}
		if err := resolveHFModel(ctx, &cfg, os.Stderr); err != nil {
			return err
		}
	}
	sum, err := localrun.RunJob(ctx, localrun.Job{Inputs: files, Name: in.job, Out: *out, Format: *format, Force: *force, Rejects: in.rejects,
		Conflicts: *conflicts, StopCodon: stop, Config: cfg, Progress: bar, Log: log})
	if errors.Is(err, localrun.ErrOutputFormat) {
		return &cli.UsageError{Err: err}
	}
	if err != nil {
		return err
	}
	sum.Print(os.Stdout, *out)
	var errs []error
	if sum.DeadLettered > 0 && !in.allowRejects {
		errs = append(errs, fmt.Errorf("%w: %d of %d records dead-lettered (--allow-rejects exits 0)", cli.ErrRejected, sum.DeadLettered,
			sum.Published.Records))
	}
	if sum.Conflicts > 0 && !in.allowConflicts {
		errs = append(errs, conflictsError(sum.ConflictIDs, sum.Conflicts, sum.ConflictsFile))
	}
	return errors.Join(errs...)
}

// conflictsError is the cli.ErrIDConflicts error of `run` and `sink`: ids ids came with more than
// one sequence, rows rows beyond the first of each, listed in file.
func conflictsError(ids, rows int, file string) error {
	return fmt.Errorf("%w: %d ids, %d more rows (every sequence embedded, one row each), listed in %s (--allow-id-conflicts exits 0)",
		cli.ErrIDConflicts, ids, rows, file)
}

// inputFlags are the FASTA input flags `run` and `publish` share.
type inputFlags struct {
	job            string // --job (registered by run and publish with their own defaults)
	stopCodon      string
	rejects        string
	allowRejects   bool
	allowConflicts bool
}

// register registers the flags on fs; rejected says which records the rejects file lists.
func (f *inputFlags) register(fs *flag.FlagSet, rejected string) {
	fs.StringVar(&f.stopCodon, "stop-codon", ingest.StopStrip.String(), "a sequence ending in a stop codon '*' (prodigal, transeq): strip (remove that one '*' and flag the record "+
		ingest.HeaderStopStripped+") or reject (dead-letter it); a '*' inside a sequence is always rejected")
	fs.StringVar(&f.rejects, "rejects", "", "write "+rejected+" to this TSV file, with a header line (columns "+
		strings.Join(ingest.RejectsColumns, ", ")+"; line and position 1-based) (default: none)")
	fs.BoolVar(&f.allowRejects, "allow-rejects", false, "exit 0, not 3, when records were dead-lettered")
	registerAllowConflicts(fs, &f.allowConflicts)
}

// registerAllowConflicts registers --allow-id-conflicts.
func registerAllowConflicts(fs *flag.FlagSet, allow *bool) {
	fs.BoolVar(allow, "allow-id-conflicts", false, "exit 0, not 3, when ids came with more than one sequence (every sequence is embedded and kept)")
}

// check validates the input flags and files: --stop-codon's value, at most one "-".
func (f *inputFlags) check(files []string) (ingest.StopCodon, error) {
	stop, err := ingest.ParseStopCodon(f.stopCodon)
	if err != nil {
		return 0, cli.Usagef("--stop-codon: %w", err)
	}
	stdin := 0
	for _, file := range files {
		if file == "-" {
			stdin++
		}
	}
	if stdin > 1 {
		return 0, cli.Usagef("standard input (-) given %d times", stdin)
	}
	if f.job != "" {
		if err := consumer.CheckJob(f.job); err != nil {
			return 0, cli.Usagef("--job: %w", err)
		}
	}
	return stop, nil
}
