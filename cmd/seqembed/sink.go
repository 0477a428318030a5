package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/seqembed/seqembed/arrowout"
	"github.com/seqembed/seqembed/telemetry"
)

// Output formats of startSink (seqembed sink --format).
const (
	formatParquet = "parquet"
	formatArrow   = "arrow"
)

// sinkFormat resolves a --format value for the output path out: parquet or arrow as given, or
// when empty, arrow for the Arrow IPC file extensions .arrow, .arrows, .feather and .ipc and
// parquet for anything else.
func sinkFormat(format, out string) (string, error) {
	switch f := strings.ToLower(format); f {
	case formatParquet, formatArrow:
		return f, nil
	case "":
		switch strings.ToLower(filepath.Ext(out)) {
		case ".arrow", ".arrows", ".feather", ".ipc":
			return formatArrow, nil
		}
		return formatParquet, nil
	}
	return "", fmt.Errorf("--format %q: want %s or %s", format, formatParquet, formatArrow)
}

// outputSink is an *arrowout.ParquetSink or an *arrowout.ArrowFileSink.
type outputSink interface {
	arrowout.MessageWriter
	Duplicates() int
	Close() error
}

// newOutputSink creates the sink writing out in format (see sinkFormat; empty = by extension).
func newOutputSink(format, out string) (outputSink, error) {
	format, err := sinkFormat(format, out)
	if err != nil {
		return nil, err
	}
	if format == formatArrow {
		return arrowout.NewArrowFileSink(out)
	}
	return arrowout.NewParquetSink(out)
}

// sinkRun reads the embeddings stream into a Parquet or Arrow IPC file sink in the background.
// Rows is safe to read while it runs; stop ends it and returns Sink's error (nil when stopped
// by stop()).
type sinkRun struct {
	sink   outputSink
	cancel context.CancelFunc
	done   chan error
	rows   atomic.Int64

	once sync.Once
	err  error
}

// startSink starts reading stream (filtered to subject unless empty) into the file out, in
// format (see sinkFormat; empty = by out's extension), until until(rows) returns true.
func startSink(ctx context.Context, js jetstream.JetStream, stream, subject, out, format string, until func(rows int) bool) (*sinkRun, error) {
	sink, err := newOutputSink(format, out)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(ctx)
	s := &sinkRun{sink: sink, cancel: cancel, done: make(chan error, 1)}
	go func() {
		s.done <- arrowout.Sink(ctx, js, stream, subject, sink, func(rows int) bool {
			s.rows.Store(int64(rows))
			return until != nil && until(rows)
		})
	}()
	return s, nil
}

// finish stops reading (if still running), closes the output file and returns the first error.
// It is idempotent.
func (s *sinkRun) finish() error {
	s.once.Do(func() {
		s.cancel()
		err := <-s.done
		if errors.Is(err, context.Canceled) {
			err = nil
		}
		s.err = errors.Join(err, s.sink.Close())
	})
	return s.err
}

func runSinkCmd(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("sink", flag.ContinueOnError)
	var nf natsFlags
	nf.register(fs)
	out := fs.String("out", "", "Parquet or Arrow IPC file to write (required)")
	format := fs.String("format", "", "output format, parquet or arrow (Arrow IPC file) (default: arrow if --out ends in .arrow, .arrows, .feather or .ipc, else parquet)")
	model := fs.String("model", "", "only this model's embeddings (default: every model in the stream)")
	stream := fs.String("stream", arrowout.DefaultStreamName, "embeddings stream")
	expect := fs.Int("expect", 0, "stop after this many distinct rows (0 = until interrupted or idle)")
	idle := fs.Duration("idle", 0, "stop after no new rows for this long (0 = never)")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if *out == "" {
		fs.Usage()
		return flag.ErrHelp
	}
	if _, err := sinkFormat(*format, *out); err != nil {
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
	bar := telemetry.NewProgress(int64(*expect), "sink", os.Stderr, *expect > 0)
	last := 0
	s, err := startSink(ctx, js, *stream, subject, *out, *format, func(rows int) bool {
		bar.Add(rows - last)
		last = rows
		return *expect > 0 && rows >= *expect
	})
	if err != nil {
		return err
	}
	lastRows, lastChange := int64(-1), time.Now()
	tick := time.NewTicker(200 * time.Millisecond)
	defer tick.Stop()
wait:
	for {
		select {
		case err := <-s.done:
			s.done <- err // let finish see it
			break wait
		case <-ctx.Done():
			break wait
		case <-tick.C:
			if r := s.rows.Load(); r != lastRows {
				lastRows, lastChange = r, time.Now()
			} else if *idle > 0 && time.Since(lastChange) >= *idle {
				break wait
			}
		}
	}
	bar.Finish()
	err = s.finish()
	fmt.Fprintf(os.Stderr, "sink: %d rows (%d duplicates dropped) -> %s\n", s.sink.Rows(), s.sink.Duplicates(), *out)
	return err
}
