package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
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
	force := fs.Bool("force", false, "replace --out if it exists (default: refuse)")
	model := fs.String("model", "", "only this model's embeddings (default: every model in the stream)")
	stream := fs.String("stream", arrowout.DefaultStreamName, "embeddings stream")
	expect := fs.Int("expect", 0, "stop after this many distinct rows (0 = until interrupted or idle)")
	idle := fs.Duration("idle", 0, "stop after no new rows for this long (0 = never)")
	setUsage(fs, "usage: seqembed sink --out FILE [flags]\n\n"+
		"Writes the embeddings stream to a Parquet or Arrow IPC file, keeping the first row per id.")
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
	fsink, err := arrowout.NewFileSink(fileFormat, *out)
	if err != nil {
		return err
	}
	nc, js, err := nf.dial("seqembed sink")
	if err != nil {
		fsink.Close()
		return err
	}
	defer nc.Close()
	subject := ""
	if *model != "" {
		subject = "embeddings." + *model
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
	err = s.Finish()
	fmt.Fprintf(os.Stderr, "sink: %d rows (%d duplicates dropped) -> %s\n", fsink.Rows(), fsink.Duplicates(), *out)
	return err
}
