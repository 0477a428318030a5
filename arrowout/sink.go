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

	"github.com/seqembed/seqembed/internal/natsconn"
)

// DefaultRowGroupRows is the default Parquet row group size of a
// ParquetSink: 8192 rows of 1280-dim float32 embeddings are ~40 MiB
// uncompressed, which is also about what the sink buffers in memory.
const DefaultRowGroupRows = 8192

// The sink's consumer asks the server for up to sinkPullMessages messages per request, each
// request bounded by sinkPullRequestBytes, or by the largest message the stream can hold where that
// is more (natsconn.LargestIn, plus sinkPullSlack for the subject and reply the server counts too),
// and asks again once fewer than sinkPullRefill are waiting (the next messages travel while the last
// is written). Not by a byte budget: with nats.go's PullMaxBytes a refill asks for what is left of
// the budget, which can be less than the next message; the server answers "409 Message Size
// Exceeds MaxBytes", the client asks again for the same, and the sink spins without a row (found
// 2026-12-02 with 31 MB per-residue messages: the server's consumer loaded the same message for
// ever). Every message fits a fresh request. And a request stays well under what the server
// queues for one connection before it drops it as a slow consumer (max_pending, 64 MiB by default;
// a 64 MiB byte budget did that): a file-backed stream's messages are at most 32 MiB, so a request
// is 48 MiB, two 20 MB messages of per-residue states, or one of 32 MiB.
// sinkPullMessages is also the client's buffer, status notices included: nats.go drops what
// overflows it.
const (
	sinkPullMessages     = 64
	sinkPullRefill       = 2
	sinkPullRequestBytes = 48 << 20
	sinkPullSlack        = 64 << 10
)

// SinkOption configures a ParquetSink or an ArrowFileSink.
type SinkOption func(*sinkConfig) error

type sinkConfig struct {
	rowGroupRows int
	codec        compress.Compression
	meta         *Meta
	conflicts    string // WithConflictsFile's path; "" none
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

// WithConflictsFile makes Close write the sink's id conflicts (rows kept
// under an id already seen with another sequence, see ParquetSink) to a TSV
// file at path (see ConflictsColumns), written like the output (a temporary
// file renamed into place) and only when there is a conflict; when there is
// none, a file already at path is removed, so that path always describes
// this output. Default: no file (the counts are still kept).
func WithConflictsFile(path string) SinkOption {
	return func(c *sinkConfig) error {
		if path == "" {
			return fmt.Errorf("%w: WithConflictsFile(\"\")", ErrOption)
		}
		c.conflicts = path
		return nil
	}
}

// ParquetSink appends decoded rows to a Parquet file, deduplicating by
// record identity, the pair (id, seq_sha256): the first row of a pair wins
// and later ones (redeliveries, replayed batches, a file published twice)
// are counted as duplicates. A row whose id was seen before with another
// sequence (seq_sha256) is an id conflict: it is kept, so the file holds one
// row per sequence, and counted (Conflicts, ConflictIDs; WithConflictsFile
// lists them). Rows of version-1 messages, which carry no seq_sha256, count
// as one more sequence (empty hash) per id. The file has the columns of
// Schema(meta) (the embedding is a Parquet LIST; the Arrow schema is stored
// in the file, so arrow readers such as pyarrow get
// fixed_size_list<float32>[dim] back), the Meta in its key-value metadata, no
// dictionary encoding, and Zstd compression unless WithCompression says
// otherwise.
//
// Rows are written to a temporary file next to the target, which Close
// syncs and renames into place, so the target path never holds a partial
// file. The identities seen are kept in memory: per id its first row's
// sequence hash, input length, index, stream sequence and description.
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
// file format: decoding messages, deduplicating by (id, seq_sha256) and
// counting id conflicts, fixing the Meta,
// buffering rows into record batches of cfg.rowGroupRows rows, the counts,
// and the temporary file that Close renames into place. The format is the
// recordWriter that open returns once the Meta is fixed.
type fileSink struct {
	mu      sync.Mutex
	kind    string // "parquet" or "arrow", for messages
	path    string
	cfg     sinkConfig
	open    func(cfg sinkConfig, schema *arrow.Schema, w io.Writer) (recordWriter, error)
	tmp     *os.File
	bw      *bufio.Writer
	meta    Meta
	fixed   bool // meta, fw and rb are set
	fw      recordWriter
	rb      *array.RecordBuilder
	seen    map[string]firstRow    // id → its first row
	others  map[string][]string    // id → the seq_sha256 of its further sequences (conflicts)
	partial map[string]*partialRow // row slices being joined, by RowSliceGroup/stream seq
	// buffered is about how many bytes of vectors the builders hold (see maxRowGroupBytes).
	buffered int
	book     conflictBook
	rows     int // unique rows accepted
	dups     int
	msgs     int
	err      error // sticky write error
	closed   bool
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
	s.seen = make(map[string]firstRow)
	s.partial = make(map[string]*partialRow)
	s.others = make(map[string][]string)
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
			return fmt.Errorf("%w: %s holds the embeddings of %s, the message is of %s: one file holds one model's embeddings",
				ErrSchemaMismatch, s.path, s.meta, m)
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
// its rows whose identity (id, seq_sha256) was not seen before. It returns
// how many rows were added and how many were duplicates. The first message
// fixes the sink's Meta unless WithMeta did; a message with another Meta
// fails with ErrSchemaMismatch and adds nothing. Undecodable data fails with
// ErrDecode. Rows of earlier record batches of the same stream may have
// been added when a later one fails (seqembed messages hold one batch).
// A write error is sticky: every later call returns it.
func (s *fileSink) WriteIPC(data []byte) (added, dups int, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.writable(); err != nil {
		return 0, 0, err
	}
	m, err := readStream(data, memory.DefaultAllocator, func(m Meta, c columns) error {
		if err := s.accept(m); err != nil {
			return err
		}
		if len(data) >= directBytes {
			if ok, err := s.writeDirect(c); ok || err != nil {
				added += c.len()
				return err
			}
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

// writable is nil unless s is closed or has a sticky write error. Caller holds s.mu.
func (s *fileSink) writable() error {
	if s.closed {
		return fmt.Errorf("arrowout: %s sink %s: write after Close", s.kind, s.path)
	}
	return s.err
}

// firstRow is what a sink keeps of the first row of an id: its identity, and
// what the conflicts file says of it.
type firstRow struct {
	sha, desc string
	index     int64
	streamSeq uint64
	inputLen  int32
}

// firstRowOf is what a sink keeps of row i of c, cloned (the values alias the IPC buffer, and the
// maps must not pin it).
func firstRowOf(c columns, i int) firstRow {
	sha, desc, inLen, _, index := c.meta(i)
	return firstRow{sha: strings.Clone(sha), desc: strings.Clone(desc), index: index, streamSeq: c.seq.Value(i), inputLen: inLen}
}

// seenAs classifies a row of id with sequence hash sha: a duplicate (that
// identity was kept before), a conflict (the id was kept with another
// sequence; first is its first row) or new. Caller holds s.mu.
func (s *fileSink) seenAs(id, sha string) (dup, conflict bool, first firstRow) {
	first, ok := s.seen[id]
	switch {
	case !ok:
		return false, false, first
	case first.sha == sha:
		return true, false, first
	}
	for _, o := range s.others[id] {
		if o == sha {
			return true, false, first
		}
	}
	return false, true, first
}

// appendColumns appends the rows of c whose identity is new, flushing full
// row groups. Caller holds s.mu and has accepted c's Meta.
func (s *fileSink) appendColumns(c columns) (added, dups int, err error) {
	var (
		ids     = s.rb.Field(0).(*array.StringBuilder)
		seqs    = s.rb.Field(1).(*array.Uint64Builder)
		lens    = s.rb.Field(2).(*array.Int32Builder)
		truns   = s.rb.Field(3).(*array.BooleanBuilder)
		embs    = s.rb.Field(4).(*array.FixedSizeListBuilder)
		vals    = embs.ValueBuilder().(*array.Float32Builder)
		shas    = s.rb.Field(5).(*array.StringBuilder)
		descs   = s.rb.Field(6).(*array.StringBuilder)
		inLens  = s.rb.Field(7).(*array.Int32Builder)
		stops   = s.rb.Field(8).(*array.BooleanBuilder)
		indexes = s.rb.Field(9).(*array.Int64Builder)
	)
	for i := range c.len() {
		id := c.id.Value(i)
		sha, desc, inLen, stop, index := c.meta(i)
		seq := c.seq.Value(i)
		dup, conflict, first := s.seenAs(id, sha)
		if dup {
			dups++
			s.dups++
			continue
		}
		// The values alias the IPC buffer: clone what is kept, so the maps do not pin it.
		if conflict {
			key := strings.Clone(id)
			s.others[key] = append(s.others[key], strings.Clone(sha))
			s.book.add(key, first, firstRowOf(c, i))
		} else {
			s.seen[strings.Clone(id)] = firstRowOf(c, i)
		}
		ids.Append(id)
		seqs.Append(seq)
		lens.Append(c.length.Value(i))
		truns.Append(c.truncated.Value(i))
		embs.Append(true)
		vals.AppendValues(c.embedding(i), nil)
		shas.Append(sha)
		descs.Append(desc)
		inLens.Append(inLen)
		stops.Append(stop)
		indexes.Append(index)
		appendOutputs(s.rb, c, i)
		s.buffered += rowBytes(c, i, s.meta.Dim)
		added++
		s.rows++
		if ids.Len() >= s.cfg.rowGroupRows || s.buffered >= maxRowGroupBytes {
			if err := s.flush(); err != nil {
				return added, dups, err
			}
		}
	}
	return added, dups, nil
}

// maxRowGroupBytes bounds the vectors a sink buffers for one row group: with per-residue outputs
// a row is up to megabytes, and WithRowGroupRows rows of them would be gigabytes, so a row group is
// written early once its rows hold this much.
const maxRowGroupBytes = 64 << 20

// rowBytes is about how many bytes of vectors row i of c holds (its embedding and extra outputs).
func rowBytes(c columns, i, dim int) int {
	n := 4 * dim
	for _, col := range c.extra {
		switch a := col.(type) {
		case *array.FixedSizeList:
			n += 4 * dim
		case *array.List:
			lo, hi := a.ValueOffsets(i)
			n += int(hi-lo) * dim * a.ListValues().(*array.FixedSizeList).ListValues().DataType().(arrow.FixedWidthDataType).Bytes()
		}
	}
	return n
}

// directBytes: a message at least this large whose rows are all new is written to the file as its
// record batch is, not copied row by row through the builders (per-residue messages are megabytes,
// and the copies were most of the sink's time: BenchmarkSinkPerResidue). Smaller messages (pooled
// outputs, a few hundred KB) are gathered into row groups of WithRowGroupRows rows.
const directBytes = 1 << 20

// writeDirect writes c's record batch to the file as it is when every row of it is new (no id seen
// before, none twice) and its column types are the sink's; it reports whether it did. Rows
// buffered before it are written first, so the file keeps the order rows came in. Caller holds
// s.mu and has accepted c's Meta.
func (s *fileSink) writeDirect(c columns) (bool, error) {
	schema := s.rb.Schema()
	if c.rec == nil || int(c.rec.NumCols()) != schema.NumFields() {
		return false, nil
	}
	for i, f := range schema.Fields() {
		if !arrow.TypeEqual(f.Type, c.rec.Column(i).DataType()) {
			return false, nil
		}
	}
	ids := make(map[string]bool, c.len())
	for i := range c.len() {
		id := c.id.Value(i)
		if _, seen := s.seen[id]; seen || ids[id] {
			return false, nil
		}
		ids[id] = true
	}
	if err := s.flush(); err != nil {
		return true, err
	}
	rec := array.NewRecordBatch(schema, c.rec.Columns(), c.rec.NumRows())
	defer rec.Release()
	if err := s.write(rec); err != nil {
		return true, err
	}
	for i := range c.len() {
		s.seen[strings.Clone(c.id.Value(i))] = firstRowOf(c, i)
	}
	s.rows += c.len()
	return true, nil
}

// flush writes the buffered rows as one row group (record batch). Caller
// holds s.mu.
func (s *fileSink) flush() error {
	s.buffered = 0
	rec := s.rb.NewRecordBatch()
	defer rec.Release()
	if rec.NumRows() == 0 {
		return nil
	}
	if err := s.write(rec); err != nil {
		return err
	}
	s.reserve()
	return nil
}

// write writes rec to the file as one row group (record batch); a failure is sticky. Caller
// holds s.mu.
func (s *fileSink) write(rec arrow.RecordBatch) error {
	if err := s.fw.Write(rec); err != nil {
		s.err = fmt.Errorf("arrowout: %s sink %s: write row group: %w", s.kind, s.path, err)
		return s.err
	}
	return nil
}

// Rows returns the number of unique rows accepted so far (written or
// buffered for the current row group).
func (s *fileSink) Rows() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.rows
}

// Duplicates returns the number of rows dropped because their identity
// (id, seq_sha256) was already seen.
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

// Conflicts returns the number of rows kept although their id was seen
// before with another sequence (id conflicts: the second, third, ...
// sequence of an id).
func (s *fileSink) Conflicts() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.book.rows
}

// ConflictIDs returns the number of ids seen with more than one sequence.
func (s *fileSink) ConflictIDs() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.book.groups)
}

// ConflictExamples returns up to n ids seen with more than one sequence, in
// the order their first conflict arrived.
func (s *fileSink) ConflictExamples(n int) []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]string, 0, min(n, len(s.book.groups)))
	for _, g := range s.book.groups[:min(n, len(s.book.groups))] {
		out = append(out, g.id)
	}
	return out
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
// renames it to the target path, and writes or removes the conflicts file
// (WithConflictsFile). If the Meta was never fixed (no message and no
// WithMeta) there is nothing to describe the file with: the temporary file
// is removed and no file is created. On error the temporary files are
// removed too. Close is idempotent; later calls return nil. Rows whose row
// slices did not all arrive (and that no complete copy replaced) are not in
// the file: Close then writes it and fails with ErrIncomplete naming them.
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
	var conflicts string // the conflicts file's temporary name, to rename after the output
	if err == nil && s.cfg.conflicts != "" && len(s.book.groups) > 0 {
		conflicts, err = s.book.writeTemp(s.cfg.conflicts)
	}
	if err == nil {
		err = os.Rename(s.tmp.Name(), s.path)
	}
	if err != nil {
		s.abort()
		if conflicts != "" {
			os.Remove(conflicts)
		}
		return fmt.Errorf("arrowout: %s sink %s: close: %w", s.kind, s.path, err)
	}
	switch {
	case conflicts != "":
		err = os.Rename(conflicts, s.cfg.conflicts)
	case s.cfg.conflicts != "":
		if err = os.Remove(s.cfg.conflicts); errors.Is(err, os.ErrNotExist) {
			err = nil
		}
	}
	if err != nil {
		os.Remove(conflicts)
		return fmt.Errorf("arrowout: %s sink %s: conflicts file: %w", s.kind, s.path, err)
	}
	if inc := s.incomplete(); len(inc) > 0 {
		return fmt.Errorf("%w: %s sink %s: %d rows left out, some of their row slices never arrived: %s",
			ErrIncomplete, s.kind, s.path, len(inc), strings.Join(inc[:min(len(inc), 5)], ", "))
	}
	return nil
}

// Abort discards the sink: the temporary file is removed and neither the
// target nor the conflicts file is written or touched. Later calls of Close
// and Abort do nothing.
func (s *fileSink) Abort() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return
	}
	s.closed = true
	if s.rb != nil {
		s.rb.Release()
	}
	s.abort()
}

// abort closes and removes the temporary file, ignoring errors (it may be
// closed already).
func (s *fileSink) abort() {
	_ = s.tmp.Close()
	_ = os.Remove(s.tmp.Name())
}

// MessageWriter is what Sink writes to: *ParquetSink and *ArrowFileSink.
// WriteIPC takes one published message (an Arrow IPC stream) and returns
// how many rows it added and how many were duplicates; WriteSlice takes a
// row slice and adds its row once all its slices are in; Rows is the number
// of unique rows (identities) accepted so far.
type MessageWriter interface {
	WriteIPC(data []byte) (added, dups int, err error)
	// WriteSlice takes a row slice (a message with HeaderResidues); see fileSink.WriteSlice.
	WriteSlice(data []byte, group string, sl RowSlice) (added, dups int, err error)
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
// ArrowFileSink: Rows, Duplicates, Conflicts, Messages). Sink does not close
// s. A stream of several models' embeddings stops at the first message of
// another model (ErrSchemaMismatch): filter by subject, or check the stream
// first with StreamModels.
//
// It returns nil when stop returned true, an error wrapping ctx.Err() when
// ctx ended first, and otherwise the consumer or WriteIPC error naming the
// message's stream sequence. The consumer buffers at most 64 MiB.
func Sink(ctx context.Context, js jetstream.JetStream, stream, subject string, s MessageWriter, stop func(rows int) bool) error {
	var subjects []string
	if subject != "" {
		subjects = []string{subject}
	}
	return sink(ctx, js, stream, subjects, s, stop, nil)
}

// sink is Sink filtered to subjects (none: every subject); read (when not nil) gets the stream
// sequence of each message once written.
func sink(ctx context.Context, js jetstream.JetStream, stream string, subjects []string, s MessageWriter, stop func(rows int) bool, read func(seq uint64)) error {
	done := func() bool { return stop != nil && stop(s.Rows()) }
	if done() {
		return nil
	}
	where := "stream " + stream
	if len(subjects) > 0 {
		where += " subject " + strings.Join(subjects, ", ")
	}
	cfg := jetstream.OrderedConsumerConfig{FilterSubjects: subjects}
	cons, err := js.OrderedConsumer(ctx, stream, cfg)
	if err != nil {
		return fmt.Errorf("arrowout: sink %s: create consumer: %w", where, err)
	}
	// A user allowed to consume but not to read the stream's info gets the bound for any stream.
	largest := natsconn.MaxPayloadCeiling
	if st, err := js.Stream(ctx, stream); err == nil {
		largest = natsconn.LargestIn(st.CachedInfo().Config)
	}
	request := max(sinkPullRequestBytes, largest+sinkPullSlack)
	it, err := cons.Messages(jetstream.PullMaxMessagesWithBytesLimit(sinkPullMessages, request),
		jetstream.PullThresholdMessages(sinkPullRefill))
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
		var seq uint64
		if md, mdErr := msg.Metadata(); mdErr == nil {
			seq = md.Sequence.Stream
		}
		if v := msg.Headers().Get(HeaderResidues); v != "" {
			var sl RowSlice
			if sl, err = ParseRowSlice(v); err == nil {
				_, _, err = s.WriteSlice(msg.Data(), RowSliceGroup(msg.Headers()), sl)
			}
		} else {
			_, _, err = s.WriteIPC(msg.Data())
		}
		if err != nil {
			return fmt.Errorf("arrowout: sink %s: message at stream seq %d (subject %s): %w", where, seq, msg.Subject(), err)
		}
		if read != nil {
			read(seq)
		}
		if done() {
			return nil
		}
	}
}
