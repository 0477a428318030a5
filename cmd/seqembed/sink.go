package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/seqembed/seqembed/arrowout"
	"github.com/seqembed/seqembed/internal/cli"
	"github.com/seqembed/seqembed/internal/localrun"
	"github.com/seqembed/seqembed/telemetry"
)

func runSinkCmd(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("sink", flag.ContinueOnError)
	var nf natsFlags
	nf.register(fs)
	out := fs.String("out", "", "file to write (required): Parquet (.parquet, .pq, .parq) or an Arrow IPC file (.arrow, .arrows, .feather, .ipc); another suffix needs --format")
	format := fs.String("format", "", "output format, parquet or arrow (Arrow IPC file) (default: by the suffix of --out)")
	force := fs.Bool("force", false, "replace --out (and its conflicts file) if it exists (default: refuse)")
	conflicts := fs.String("conflicts", "", "write the ids that come with more than one sequence to this TSV file, when there are any (default: --out with .conflicts.tsv appended)")
	var allowConflicts bool
	registerAllowConflicts(fs, &allowConflicts)
	model := fs.String("model", "", "this model's embeddings (default: the one model in the stream; several are an error)")
	stream := fs.String("stream", arrowout.DefaultStreamName, "embeddings stream")
	expect := fs.Int("expect", 0, "stop after this many distinct rows (0 = until interrupted or idle)")
	idle := fs.Duration("idle", 0, "stop after no new rows for this long (0 = never)")
	setUsage(fs, "usage: seqembed sink --out FILE [flags]\n\n"+
		"Writes one model's embeddings from the stream to a Parquet or Arrow IPC file, keeping the first row per\n"+
		"(id, seq_sha256). Without --model the stream must hold one model's embeddings (it is checked before anything\n"+
		"is written). Exit codes: 0 done, 1 failed, 2 usage error (several models and no --model too), 3 ids came\n"+
		"with more than one sequence (unless --allow-id-conflicts).")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if *out == "" {
		return cli.Usagef("--out FILE is required")
	}
	fileFormat, err := localrun.CheckOutput(*out, *format, *force)
	if errors.Is(err, localrun.ErrOutputFormat) {
		return &cli.UsageError{Err: err}
	}
	if err != nil {
		return err
	}
	if *conflicts == "" {
		*conflicts = localrun.ConflictsPath(*out)
	}
	if err := localrun.CheckConflicts(*conflicts, *out, *force); err != nil {
		return err
	}
	nc, js, err := nf.dial("seqembed sink")
	if err != nil {
		return err
	}
	defer nc.Close()
	subject := ""
	if *model != "" {
		subject = "embeddings." + *model
	}
	// One file holds one model's embeddings: find out which models the stream has before
	// writing anything.
	models, err := arrowout.StreamModels(ctx, js, *stream, subject)
	if err != nil {
		return err
	}
	switch {
	case len(models) > 1 && subject == "":
		var list []string
		for _, m := range models {
			list = append(list, fmt.Sprintf("%s: %s, %d messages", m.Subject, m.Meta, m.Messages))
		}
		return cli.Usagef("stream %s holds the embeddings of %d models (%s); one file holds one model's: pass --model NAME",
			*stream, len(models), strings.Join(list, "; "))
	case len(models) == 1 && subject == "":
		subject = models[0].Subject
		fmt.Fprintf(os.Stderr, "sink: %s from %s\n", models[0].Meta, subject)
	}
	fsink, err := arrowout.NewFileSink(fileFormat, *out, arrowout.WithConflictsFile(*conflicts))
	if err != nil {
		return err
	}
	bar := telemetry.NewProgress(int64(*expect), "sink", os.Stderr, *expect > 0)
	last := 0
	s := arrowout.StartSink(ctx, js, *stream, subject, fsink, func(rows int) bool {
		bar.Add(rows - last)
		last = rows
		return *expect > 0 && rows >= *expect
	})
	lastRows, lastChange := int64(-1), time.Now()
	tick := time.NewTicker(200 * time.Millisecond)
	defer tick.Stop()
wait:
	for {
		select {
		case <-s.Done():
			break wait
		case <-ctx.Done():
			break wait
		case <-tick.C:
			if r := int64(s.Rows()); r != lastRows {
				lastRows, lastChange = r, time.Now()
			} else if *idle > 0 && time.Since(lastChange) >= *idle {
				break wait
			}
		}
	}
	bar.Finish()
	if err := s.Finish(); err != nil {
		return err
	}
	fmt.Fprintf(os.Stderr, "sink: %d rows (%d duplicates dropped) -> %s\n", fsink.Rows(), fsink.Duplicates(), *out)
	if n := fsink.Conflicts(); n > 0 {
		fmt.Fprintf(os.Stderr, "  %d id conflicts: %d ids came with more than one sequence (e.g. %s); one row each: %s\n",
			n, fsink.ConflictIDs(), strings.Join(fsink.ConflictExamples(5), ", "), *conflicts)
		if !allowConflicts {
			return conflictsError(fsink.ConflictIDs(), n, *conflicts)
		}
	}
	return nil
}
