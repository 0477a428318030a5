package arrowout

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"

	"github.com/apache/arrow-go/v18/arrow"
	"github.com/apache/arrow-go/v18/arrow/array"
	"github.com/apache/arrow-go/v18/arrow/memory"
	"github.com/apache/arrow-go/v18/parquet"
	"github.com/apache/arrow-go/v18/parquet/compress"
	"github.com/apache/arrow-go/v18/parquet/pqarrow"
	"github.com/nats-io/nats.go/jetstream"
)

// DefaultRowGroupRows is the default Parquet row group size of a
// ParquetSink: 8192 rows of 1280-dim float32 embeddings are ~40 MiB
// uncompressed, which is also about what the sink buffers in memory.
const DefaultRowGroupRows = 8192

// sinkPullMaxBytes bounds what Sink's consumer buffers client-side; it must
// exceed the largest message (NATS caps max_payload at 64 MiB).
const sinkPullMaxBytes = 64 << 20

// SinkOption configures a ParquetSink or an ArrowFileSink.
type SinkOption func(*sinkConfig) error

type sinkConfig struct {
	rowGroupRows int
	codec        compress.Compression
	meta         *Meta
}

// WithRowGroupRows sets the number of rows per Parquet row group (per record
// batch for an ArrowFileSink); the sink buffers up to that many rows in
// memory. n must be > 0. Default DefaultRowGroupRows (8192).
func WithRowGroupRows(n int) SinkOption {
	return func(c *sinkConfig) error {
		if n <= 0 {
			return fmt.Errorf("%w: WithRowGroupRows(%d): must be > 0", ErrOption, n)
		}
		c.rowGroupRows = n
		return nil
	}
}

// WithCompression sets the compression codec. For a ParquetSink any Parquet
// codec, e.g. compress.Codecs.Snappy or compress.Codecs.Uncompressed; default
// compress.Codecs.Zstd. For an ArrowFileSink compress.Codecs.Uncompressed
// (the default) or compress.Codecs.Zstd (Arrow IPC body compression).
func WithCompression(codec compress.Compression) SinkOption {
	return func(c *sinkConfig) error {
		if _, err := compress.GetCodec(codec); err != nil {
			return fmt.Errorf("%w: WithCompression(%s): %w", ErrOption, codec, err)
		}
		c.codec = codec
		return nil
	}
}

// WithMeta fixes the sink's Meta up front instead of taking it from the
// first message: messages with another Meta fail with ErrSchemaMismatch,
// and Close writes a valid (empty) file even if no row arrived. Default:
// none.
func WithMeta(m Meta) SinkOption {
	return func(c *sinkConfig) error {
		if err := m.Validate(); err != nil {
			return fmt.Errorf("WithMeta: %w", err)
		}
		c.meta = &m
		return nil
	}
}

// ParquetSink appends decoded rows to a Parquet file, deduplicating by id:
// the first occurrence of an id wins and later ones are counted as
// duplicates. The file has the columns of Schema(meta) (the embedding is a
// Parquet LIST; the Arrow schema is stored in the file, so arrow readers
// such as pyarrow get fixed_size_list<float32>[dim] back), the Meta in its
// key-value metadata, no dictionary encoding, and Zstd compression unless
// WithCompression says otherwise.
//
// Rows are written to a temporary file next to the target, which Close
// syncs and renames into place, so the target path never holds a partial
// file. The set of seen ids is kept in memory.
//
// A ParquetSink is safe for concurrent use.
type ParquetSink struct {
	fileSink
}

// NewParquetSink creates the sink for path. It creates the temporary file
// at once, so an unwritable directory fails here. Invalid options fail with
// ErrOption.
func NewParquetSink(path string, opts ...SinkOption) (*ParquetSink, error) {
	cfg, err := newSinkConfig(compress.Codecs.Zstd, opts)
	if err != nil {
		return nil, err
	}
	s := &ParquetSink{}
	if err := s.init("parquet", path, cfg, openParquet); err != nil {
		return nil, err
	}
	return s, nil
}

// openParquet is ParquetSink's recordWriter.
func openParquet(cfg sinkConfig, schema *arrow.Schema, w io.Writer) (recordWriter, error) {
	props := parquet.NewWriterProperties(
		parquet.WithCompression(cfg.codec),
		parquet.WithMaxRowGroupLength(int64(cfg.rowGroupRows)),
		parquet.WithDictionaryDefault(false),
		parquet.WithCreatedBy("seqembed"),
	)
	return pqarrow.NewFileWriter(schema, w, props, pqarrow.NewArrowWriterProperties(pqarrow.WithStoreSchema()))
}

// newSinkConfig applies opts over the defaults, with codec as the default
// compression.
func newSinkConfig(codec compress.Compression, opts []SinkOption) (sinkConfig, error) {
	cfg := sinkConfig{rowGroupRows: DefaultRowGroupRows, codec: codec}
	for _, o := range opts {
		if err := o(&cfg); err != nil {
			return sinkConfig{}, err
		}
	}
	return cfg, nil
}

// recordWriter writes the record batches of one output file format
// (*pqarrow.FileWriter, *ipc.FileWriter); Close finishes the file.
type recordWriter interface {
	Write(rec arrow.RecordBatch) error
	Close() error
}

// fileSink is what ParquetSink and ArrowFileSink share, everything but the
// file format: decoding messages, deduplicating by id, fixing the Meta,
// buffering rows into record batches of cfg.rowGroupRows rows, the counts,
// and the temporary file that Close renames into place. The format is the
// recordWriter that open returns once the Meta is fixed.
type fileSink struct {
	mu     sync.Mutex
	kind   string // "parquet" or "arrow", for messages
	path   string
	cfg    sinkConfig
	open   func(cfg sinkConfig, schema *arrow.Schema, w io.Writer) (recordWriter, error)
	tmp    *os.File
	bw     *bufio.Writer
	meta   Meta
	fixed  bool // meta, fw and rb are set
	fw     recordWriter
	rb     *array.RecordBuilder
	seen   map[string]struct{}
	rows   int // unique rows accepted
	dups   int
	msgs   int
	err    error // sticky write error
	closed bool
}

// init sets up s for path and creates the temporary file; with WithMeta it
// also fixes the Meta.
func (s *fileSink) init(kind, path string, cfg sinkConfig, open func(sinkConfig, *arrow.Schema, io.Writer) (recordWriter, error)) error {
	if path == "" {
		return fmt.Errorf("%w: empty %s path", ErrOption, kind)
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*.tmp")
	if err != nil {
		return fmt.Errorf("arrowout: %s sink %s: %w", kind, path, err)
	}
	// CreateTemp makes 0600 files; the result is an ordinary output file (umask applies to none
	// of this, so use the usual 0644).
	if err := tmp.Chmod(0o644); err != nil {
		tmp.Close()
		os.Remove(tmp.Name())
		return fmt.Errorf("arrowout: %s sink %s: %w", kind, path, err)
	}
	s.kind, s.path, s.cfg, s.open = kind, path, cfg, open
	s.tmp = tmp
	s.bw = bufio.NewWriterSize(tmp, 1<<20)
	s.seen = make(map[string]struct{})
	if cfg.meta != nil {
		if err := s.accept(*cfg.meta); err != nil {
			s.abort()
			return err
		}
	}
	return nil
}

// accept fixes the sink's Meta on first use (creating the format's writer)
// and afterwards checks that m matches it. Caller holds s.mu.
func (s *fileSink) accept(m Meta) error {
	if s.fixed {
		if m != s.meta {
			return fmt.Errorf("%w: %s: message meta %+v, sink has %+v", ErrSchemaMismatch, s.path, m, s.meta)
		}
		return nil
	}
	schema := Schema(m)
	fw, err := s.open(s.cfg, schema, s.bw)
	if err != nil {
		return fmt.Errorf("arrowout: %s sink %s: %w", s.kind, s.path, err)
	}
	s.meta, s.fw, s.fixed = m, fw, true
	s.rb = array.NewRecordBuilder(memory.DefaultAllocator, schema)
	s.reserve()
	return nil
}

// reserve sizes the builders for one row group.
func (s *fileSink) reserve() {
	s.rb.Reserve(s.cfg.rowGroupRows)
	s.rb.Field(4).(*array.FixedSizeListBuilder).ValueBuilder().Reserve(s.cfg.rowGroupRows * s.meta.Dim)
}

// WriteIPC decodes one Arrow IPC stream (one published message) and appends
// its rows whose id was not seen before. It returns how many rows were
// added and how many were duplicates. The first message fixes the sink's
// Meta unless WithMeta did; a message with another Meta fails with
// ErrSchemaMismatch and adds nothing. Undecodable data fails with
// ErrDecode. Rows of earlier record batches of the same stream may have
// been added when a later one fails (seqembed messages hold one batch).
// A write error is sticky: every later call returns it.
func (s *fileSink) WriteIPC(data []byte) (added, dups int, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return 0, 0, fmt.Errorf("arrowout: %s sink %s: write after Close", s.kind, s.path)
	}
	if s.err != nil {
		return 0, 0, s.err
	}
	m, err := readStream(data, memory.DefaultAllocator, func(m Meta, c columns) error {
		if err := s.accept(m); err != nil {
			return err
		}
		a, d, err := s.appendColumns(c)
		added, dups = added+a, dups+d
		return err
	})
	if err == nil {
		err = s.accept(m) // a stream without record batches must match too
	}
	if err == nil {
		s.msgs++
	}
	return added, dups, err
}

// appendColumns appends the unseen rows of c, flushing full row groups.
// Caller holds s.mu and has accepted c's Meta.
func (s *fileSink) appendColumns(c columns) (added, dups int, err error) {
	var (
		ids   = s.rb.Field(0).(*array.StringBuilder)
		seqs  = s.rb.Field(1).(*array.Uint64Builder)
		lens  = s.rb.Field(2).(*array.Int32Builder)
		truns = s.rb.Field(3).(*array.BooleanBuilder)
		embs  = s.rb.Field(4).(*array.FixedSizeListBuilder)
		vals  = embs.ValueBuilder().(*array.Float32Builder)
	)
	for i := range c.len() {
		id := c.id.Value(i)
		if _, ok := s.seen[id]; ok {
			dups++
			s.dups++
			continue
		}
		// Value aliases the IPC buffer: clone so the map does not pin it.
		s.seen[strings.Clone(id)] = struct{}{}
		ids.Append(id)
		seqs.Append(c.seq.Value(i))
		lens.Append(c.length.Value(i))
		truns.Append(c.truncated.Value(i))
		embs.Append(true)
		vals.AppendValues(c.embedding(i), nil)
		added++
		s.rows++
		if ids.Len() >= s.cfg.rowGroupRows {
			if err := s.flush(); err != nil {
				return added, dups, err
			}
		}
	}
	return added, dups, nil
}

// flush writes the buffered rows as one row group (record batch). Caller
// holds s.mu.
func (s *fileSink) flush() error {
	rec := s.rb.NewRecordBatch()
	defer rec.Release()
	if rec.NumRows() == 0 {
		return nil
	}
	if err := s.fw.Write(rec); err != nil {
		s.err = fmt.Errorf("arrowout: %s sink %s: write row group: %w", s.kind, s.path, err)
		return s.err
	}
	s.reserve()
	return nil
}

// Rows returns the number of unique rows accepted so far (written or
// buffered for the current row group).
func (s *fileSink) Rows() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.rows
}

// Duplicates returns the number of rows dropped because their id was
// already seen.
func (s *fileSink) Duplicates() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.dups
}

// Messages returns the number of IPC messages successfully written.
func (s *fileSink) Messages() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.msgs
}

// Has reports whether a row with this id was accepted.
func (s *fileSink) Has(id string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	_, ok := s.seen[id]
	return ok
}

// Meta returns the sink's Meta and whether it is fixed yet.
func (s *fileSink) Meta() (Meta, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.meta, s.fixed
}

// Close writes the buffered rows and the file footer, syncs the file and
// renames it to the target path. If the Meta was never fixed (no message
// and no WithMeta) there is nothing to describe the file with: the
// temporary file is removed and no file is created. On error the temporary
// file is removed too. Close is idempotent; later calls return nil.
func (s *fileSink) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil
	}
	s.closed = true
	if !s.fixed {
		s.abort()
		return nil
	}
	defer s.rb.Release()
	err := s.err
	if err == nil {
		err = s.flush()
	}
	if err == nil {
		err = s.fw.Close()
	}
	if err == nil {
		err = s.bw.Flush()
	}
	if err == nil {
		err = s.tmp.Sync()
	}
	if err == nil {
		err = s.tmp.Close()
	}
	if err == nil {
		err = os.Rename(s.tmp.Name(), s.path)
	}
	if err != nil {
		s.abort()
		return fmt.Errorf("arrowout: %s sink %s: close: %w", s.kind, s.path, err)
	}
	return nil
}

// abort closes and removes the temporary file, ignoring errors (it may be
// closed already).
func (s *fileSink) abort() {
	_ = s.tmp.Close()
	_ = os.Remove(s.tmp.Name())
}

// MessageWriter is what Sink writes to: *ParquetSink and *ArrowFileSink.
// WriteIPC takes one published message (an Arrow IPC stream) and returns
// how many rows it added and how many were duplicates; Rows is the number
// of unique rows accepted so far.
type MessageWriter interface {
	WriteIPC(data []byte) (added, dups int, err error)
	Rows() int
}

var (
	_ MessageWriter = (*ParquetSink)(nil)
	_ MessageWriter = (*ArrowFileSink)(nil)
)

// Sink reads the output stream with an ordered consumer (all messages of
// stream, filtered to subject unless it is empty, from the first) and
// feeds each message to s.WriteIPC, until stop(s.Rows()) returns true or
// ctx is done. stop may be nil (run until ctx is done) and is checked once
// before the first message. The counts are on s (for a ParquetSink or an
// ArrowFileSink: Rows, Duplicates, Messages). Sink does not close s.
//
// It returns nil when stop returned true, an error wrapping ctx.Err() when
// ctx ended first, and otherwise the consumer or WriteIPC error naming the
// message's stream sequence. The consumer buffers at most 64 MiB.
func Sink(ctx context.Context, js jetstream.JetStream, stream, subject string, s MessageWriter, stop func(rows int) bool) error {
	done := func() bool { return stop != nil && stop(s.Rows()) }
	if done() {
		return nil
	}
	where := "stream " + stream
	if subject != "" {
		where += " subject " + subject
	}
	cfg := jetstream.OrderedConsumerConfig{}
	if subject != "" {
		cfg.FilterSubjects = []string{subject}
	}
	cons, err := js.OrderedConsumer(ctx, stream, cfg)
	if err != nil {
		return fmt.Errorf("arrowout: sink %s: create consumer: %w", where, err)
	}
	it, err := cons.Messages(jetstream.PullMaxBytes(sinkPullMaxBytes))
	if err != nil {
		return fmt.Errorf("arrowout: sink %s: consume: %w", where, err)
	}
	defer it.Stop()
	for {
		msg, err := it.Next(jetstream.NextContext(ctx))
		if err != nil {
			if ctxErr := ctx.Err(); ctxErr != nil && !errors.Is(err, ctxErr) {
				err = fmt.Errorf("%w (%w)", ctxErr, err)
			}
			return fmt.Errorf("arrowout: sink %s after %d rows: %w", where, s.Rows(), err)
		}
		if _, _, err := s.WriteIPC(msg.Data()); err != nil {
			var seq uint64
			if md, mdErr := msg.Metadata(); mdErr == nil {
				seq = md.Sequence.Stream
			}
			return fmt.Errorf("arrowout: sink %s: message at stream seq %d (subject %s): %w", where, seq, msg.Subject(), err)
		}
		if done() {
			return nil
		}
	}
}
