package arrowout

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"slices"
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

// The output file suffixes FileFormat knows (lower case; matched in any case): the one list of
// them.
var (
	parquetSuffixes = []string{".parquet", ".pq", ".parq"}
	arrowSuffixes   = []string{".arrow", ".arrows", ".feather", ".ipc"}
)

// FileFormat resolves a --format value for the output path: parquet or arrow as given (in any
// case), or when empty, parquet for the suffixes .parquet, .pq and .parq and arrow for the Arrow
// IPC file suffixes .arrow, .arrows, .feather and .ipc. Any other --format, and without one any
// other suffix (or none), is an error wrapping ErrFormat that says how to name the file.
func FileFormat(format, path string) (string, error) {
	switch f := strings.ToLower(format); f {
	case FormatParquet, FormatArrow:
		return f, nil
	case "":
	default:
		return "", fmt.Errorf("%w: --format %q: want %s or %s", ErrFormat, format, FormatParquet, FormatArrow)
	}
	ext := strings.ToLower(filepath.Ext(path))
	if slices.Contains(parquetSuffixes, ext) {
		return FormatParquet, nil
	}
	if slices.Contains(arrowSuffixes, ext) {
		return FormatArrow, nil
	}
	what := "no suffix"
	if ext != "" {
		what = "the suffix " + ext
	}
	return "", fmt.Errorf("%w: %s has %s: name it %s (Parquet) or %s (Arrow IPC file), or pass --format parquet|arrow",
		ErrFormat, path, what, strings.Join(parquetSuffixes, ", "), strings.Join(arrowSuffixes, ", "))
}

// FileSink is a *ParquetSink or an *ArrowFileSink.
type FileSink interface {
	MessageWriter
	Duplicates() int
	Conflicts() int
	ConflictIDs() int
	ConflictExamples(n int) []string
	Close() error
	Abort()
}

// NewFileSink creates the sink writing path in format (see FileFormat; empty = by the suffix,
// which must then be a known one).
func NewFileSink(format, path string, opts ...SinkOption) (FileSink, error) {
	format, err := FileFormat(format, path)
	if err != nil {
		return nil, err
	}
	if format == FormatArrow {
		return NewArrowFileSink(path, opts...)
	}
	return NewParquetSink(path, opts...)
}

// SinkRun is Sink running in the background into a FileSink; Rows is safe to read while it
// runs. Done is closed when Sink returns on its own; Finish ends it and closes the file.
type SinkRun struct {
	sink   FileSink
	cancel context.CancelFunc
	done   chan struct{}
	err    error // Sink's, once done is closed
	rows   atomic.Int64
	seq    atomic.Uint64 // the last message's stream sequence

	once     sync.Once
	finalErr error
}

// StartSink starts reading stream (filtered to subject unless empty) into sink until
// until(rows) returns true (nil: until Finish or ctx ends).
func StartSink(ctx context.Context, js jetstream.JetStream, stream, subject string, fs FileSink, until func(rows int) bool) *SinkRun {
	var subjects []string
	if subject != "" {
		subjects = []string{subject}
	}
	return StartSinkSubjects(ctx, js, stream, subjects, fs, until)
}

// StartSinkSubjects is StartSink filtered to any of subjects (none: every subject), e.g.
// ModelSubjects.
func StartSinkSubjects(ctx context.Context, js jetstream.JetStream, stream string, subjects []string, fs FileSink, until func(rows int) bool) *SinkRun {
	ctx, cancel := context.WithCancel(ctx)
	s := &SinkRun{sink: fs, cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(s.done)
		s.err = sink(ctx, js, stream, subjects, fs, func(rows int) bool {
			s.rows.Store(int64(rows))
			return until != nil && until(rows)
		}, func(seq uint64) { s.seq.Store(seq) })
	}()
	return s
}

// Rows is the unique rows written so far.
func (s *SinkRun) Rows() int { return int(s.rows.Load()) }

// Seq is the stream sequence of the last message written (0 = none yet).
func (s *SinkRun) Seq() uint64 { return s.seq.Load() }

// Sink is the file sink being written.
func (s *SinkRun) Sink() FileSink { return s.sink }

// Done is closed once the sink stopped on its own (until returned true, or an error).
func (s *SinkRun) Done() <-chan struct{} { return s.done }

// Finish stops reading (if still running), closes the output file and returns the first error
// (none for a sink stopped by Finish itself). A sink that stopped on a message of another model
// (ErrSchemaMismatch) writes no file at all: it is aborted, not closed. It is idempotent.
func (s *SinkRun) Finish() error {
	s.once.Do(func() {
		s.cancel()
		<-s.done
		err := s.err
		if errors.Is(err, context.Canceled) {
			err = nil
		}
		if errors.Is(err, ErrSchemaMismatch) {
			s.sink.Abort()
			s.finalErr = err
			return
		}
		s.finalErr = errors.Join(err, s.sink.Close())
	})
	return s.finalErr
}
