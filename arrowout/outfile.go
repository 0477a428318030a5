package arrowout

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/nats-io/nats.go/jetstream"
)

// Output file formats of a FileSink (--format).
const (
	FormatParquet = "parquet"
	FormatArrow   = "arrow" // an Arrow IPC file
)

// FileFormat resolves a --format value for the output path: parquet or arrow as given, or when
// empty, arrow for the Arrow IPC file extensions .arrow, .arrows, .feather and .ipc and parquet
// for anything else.
func FileFormat(format, path string) (string, error) {
	switch f := strings.ToLower(format); f {
	case FormatParquet, FormatArrow:
		return f, nil
	case "":
		switch strings.ToLower(filepath.Ext(path)) {
		case ".arrow", ".arrows", ".feather", ".ipc":
			return FormatArrow, nil
		}
		return FormatParquet, nil
	}
	return "", fmt.Errorf("%w: --format %q: want %s or %s", ErrOption, format, FormatParquet, FormatArrow)
}

// FileSink is a *ParquetSink or an *ArrowFileSink.
type FileSink interface {
	MessageWriter
	Duplicates() int
	Close() error
}

// NewFileSink creates the sink writing path in format (see FileFormat; empty = by extension).
func NewFileSink(format, path string) (FileSink, error) {
	format, err := FileFormat(format, path)
	if err != nil {
		return nil, err
	}
	if format == FormatArrow {
		return NewArrowFileSink(path)
	}
	return NewParquetSink(path)
}

// SinkRun is Sink running in the background into a FileSink; Rows is safe to read while it
// runs. Done is closed when Sink returns on its own; Finish ends it and closes the file.
type SinkRun struct {
	sink   FileSink
	cancel context.CancelFunc
	done   chan struct{}
	err    error // Sink's, once done is closed
	rows   atomic.Int64

	once     sync.Once
	finalErr error
}

// StartSink starts reading stream (filtered to subject unless empty) into sink until
// until(rows) returns true (nil: until Finish or ctx ends).
func StartSink(ctx context.Context, js jetstream.JetStream, stream, subject string, sink FileSink, until func(rows int) bool) *SinkRun {
	ctx, cancel := context.WithCancel(ctx)
	s := &SinkRun{sink: sink, cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(s.done)
		s.err = Sink(ctx, js, stream, subject, sink, func(rows int) bool {
			s.rows.Store(int64(rows))
			return until != nil && until(rows)
		})
	}()
	return s
}

// Rows is the unique rows written so far.
func (s *SinkRun) Rows() int { return int(s.rows.Load()) }

// Sink is the file sink being written.
func (s *SinkRun) Sink() FileSink { return s.sink }

// Done is closed once the sink stopped on its own (until returned true, or an error).
func (s *SinkRun) Done() <-chan struct{} { return s.done }

// Finish stops reading (if still running), closes the output file and returns the first error
// (none for a sink stopped by Finish itself). It is idempotent.
func (s *SinkRun) Finish() error {
	s.once.Do(func() {
		s.cancel()
		<-s.done
		err := s.err
		if errors.Is(err, context.Canceled) {
			err = nil
		}
		s.finalErr = errors.Join(err, s.sink.Close())
	})
	return s.finalErr
}
