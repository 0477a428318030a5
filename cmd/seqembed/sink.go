package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/seqembed/seqembed/arrowout"
	"github.com/seqembed/seqembed/consumer"
	"github.com/seqembed/seqembed/internal/cli"
	"github.com/seqembed/seqembed/internal/jobs"
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
	model := fs.String("model", "", "this model's embeddings (default: the one model in the stream, or the job's; several are an error)")
	job := fs.String("job", "", "only this job's embeddings (seqembed publish --job), and stop once the job is complete: every publish of it finished "+
		"and each of its records embedded or dead-lettered (waits for the job's first publish)")
	stream := fs.String("stream", arrowout.DefaultStreamName, "embeddings stream")
	inStream := fs.String("in-stream", "SEQS", "input stream, where --job's records wait and its dead letters are kept")
	expect := fs.Int("expect", 0, "stop after this many distinct rows (0 = until interrupted or idle, or --job's end)")
	idle := fs.Duration("idle", 0, "stop after no new rows for this long (0 = never)")
	setUsage(fs, "usage: seqembed sink --out FILE [--job NAME] [flags]\n\n"+
		"Writes one model's embeddings from the stream to a Parquet or Arrow IPC file, keeping the first row per\n"+
		"(id, seq_sha256). With --job only that job's, stopping by itself once the job is complete; without --model\n"+
		"the stream must hold one model's embeddings (it is checked before anything is written). Exit codes: 0 done,\n"+
		"1 failed, 2 usage error (several models and no --model too), 3 ids came with more than one sequence\n"+
		"(unless --allow-id-conflicts).")
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
	var ledger *jobs.Ledger
	var theJob jobs.Job
	if *job != "" {
		if err := consumer.CheckJob(*job); err != nil {
			return cli.Usagef("--job: %w", err)
		}
		if ledger, err = jobs.Open(ctx, js, 1); err != nil {
			return err
		}
		if theJob, err = waitJob(ctx, ledger, *job); err != nil {
			return err
		}
		if *model != "" && *model != theJob.Model {
			return cli.Usagef("job %s is for model %s, not --model %s", *job, theJob.Model, *model)
		}
		*model = theJob.Model
	}
	// One file holds one model's embeddings: find out which models the stream has before
	// writing anything.
	var subjects []string
	switch {
	case *job != "":
		subjects = []string{arrowout.Subject(*model, *job)}
	case *model != "":
		subjects = arrowout.ModelSubjects(*model)
	}
	filters := subjects
	if len(filters) == 0 {
		filters = []string{""} // every subject
	}
	var models []arrowout.ModelInfo
	for _, subj := range filters {
		m, err := arrowout.StreamModels(ctx, js, *stream, subj)
		if err != nil {
			return err
		}
		models = append(models, m...)
	}
	byModel := map[string][]arrowout.ModelInfo{}
	var names []string
	for _, m := range models {
		if _, ok := byModel[m.Meta.Model]; !ok {
			names = append(names, m.Meta.Model)
		}
		byModel[m.Meta.Model] = append(byModel[m.Meta.Model], m)
	}
	switch {
	case len(names) > 1:
		var list []string
		for _, n := range names {
			var msgs uint64
			for _, m := range byModel[n] {
				msgs += m.Messages
			}
			list = append(list, fmt.Sprintf("%s: %s, %d messages", n, byModel[n][0].Meta, msgs))
		}
		how := "pass --model NAME"
		if *model != "" {
			how = "its subjects hold another model's embeddings: a producer used the wrong subject"
		}
		return cli.Usagef("stream %s holds the embeddings of %d models (%s); one file holds one model's: %s",
			*stream, len(names), strings.Join(list, "; "), how)
	case len(names) == 1 && *model == "":
		*model = names[0]
		subjects = arrowout.ModelSubjects(*model)
		fmt.Fprintf(os.Stderr, "sink: %s from %s\n", byModel[names[0]][0].Meta, strings.Join(subjects, ", "))
	}
	fsink, err := arrowout.NewFileSink(fileFormat, *out, arrowout.WithConflictsFile(*conflicts))
	if err != nil {
		return err
	}
	total := int64(*expect)
	if *job != "" {
		total = int64(theJob.Published)
	}
	bar := telemetry.NewProgress(total, "sink", os.Stderr, total > 0)
	last := 0
	s := arrowout.StartSinkSubjects(ctx, js, *stream, subjects, fsink, func(rows int) bool {
		if *job == "" {
			bar.Add(rows - last)
			last = rows
		}
		return *expect > 0 && rows >= *expect
	})
	var end jobEnd
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
			if ledger == nil {
				continue
			}
			done, err := end.check(ctx, js, ledger, *inStream, *stream, *job, s)
			if err != nil {
				s.Finish()
				return err
			}
			bar.Add(end.accounted(s.Rows()) - last)
			last = end.accounted(s.Rows())
			if done {
				break wait
			}
		}
	}
	bar.Finish()
	if err := s.Finish(); err != nil {
		return err
	}
	fmt.Fprintf(os.Stderr, "sink: %d rows (%d duplicates dropped) -> %s\n", fsink.Rows(), fsink.Duplicates(), *out)
	if ledger != nil {
		end.print(os.Stderr, *job, fsink.Rows())
	}
	if n := fsink.Conflicts(); n > 0 {
		fmt.Fprintf(os.Stderr, "  %d id conflicts: %d ids came with more than one sequence (e.g. %s); one row each: %s\n",
			n, fsink.ConflictIDs(), strings.Join(fsink.ConflictExamples(5), ", "), *conflicts)
		if !allowConflicts {
			return conflictsError(fsink.ConflictIDs(), n, *conflicts)
		}
	}
	return nil
}

// waitJob returns job name's ledger entry, waiting (with one line said) until its first publish
// has begun.
func waitJob(ctx context.Context, ledger *jobs.Ledger, name string) (jobs.Job, error) {
	said := false
	for {
		j, err := ledger.Get(ctx, name)
		if !errors.Is(err, jobs.ErrNotFound) {
			return j, err
		}
		if !said {
			fmt.Fprintf(os.Stderr, "sink: job %s not published yet; waiting for it (Ctrl-C stops)\n", name)
			said = true
		}
		select {
		case <-ctx.Done():
			return j, fmt.Errorf("waiting for job %s: %w", name, ctx.Err())
		case <-time.After(500 * time.Millisecond):
		}
	}
}

// jobEnd tells when a sink --job has everything: the job's publishes all finished, none of its
// records left in the input stream (the work queue removes a record only once its embedding
// or dead-letter copy is stored) and the sink has read the job's last output message.
type jobEnd struct {
	job   jobs.Job
	state jobs.State
	last  time.Time
}

// check reads the ledger and the streams (at most every 500 ms) and reports whether the sink
// has read everything of the job.
func (e *jobEnd) check(ctx context.Context, js jetstream.JetStream, ledger *jobs.Ledger, in, out, name string, s *arrowout.SinkRun) (bool, error) {
	if time.Since(e.last) < 500*time.Millisecond {
		return false, nil
	}
	e.last = time.Now()
	// The ledger first, then the input stream, then the last output: a record that left the
	// input stream had its output stored before, so the last output read after covers it.
	j, err := ledger.Get(ctx, name)
	if err != nil {
		return false, err
	}
	st, err := jobs.StateOf(ctx, js, in, out, j)
	if err != nil {
		return false, err
	}
	e.job, e.state = j, st
	return j.Done() && st.Waiting == 0 && s.Seq() >= st.OutputSeq, nil
}

// accounted is the job's records embedded (rows) or dead-lettered so far.
func (e *jobEnd) accounted(rows int) int { return rows + int(e.state.DeadLettered) }

// print says how the job ended.
func (e *jobEnd) print(w io.Writer, name string, rows int) {
	if !e.job.Done() || e.state.Waiting > 0 {
		fmt.Fprintf(w, "sink: job %s not complete: %d of %d published records embedded or dead-lettered, %d still waiting\n",
			name, e.accounted(rows), e.job.Published, e.state.Waiting)
		return
	}
	fmt.Fprintf(w, "sink: job %s complete: %d records published, %d embedded, %d dead-lettered (on %s)\n",
		name, e.job.Published, rows, e.state.DeadLettered, consumer.JobDLQSubject(e.job.Model, name))
	if n := e.accounted(rows); n != e.job.Published {
		fmt.Fprintf(w, "  %d embedded or dead-lettered for %d published: records republished after the input stream's dedupe window "+
			"(10 min) are counted again but embedded once\n", n, e.job.Published)
	}
}
