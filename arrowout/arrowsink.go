package arrowout

import (
	"fmt"
	"io"
	"os"

	"github.com/apache/arrow-go/v18/arrow"
	"github.com/apache/arrow-go/v18/arrow/ipc"
	"github.com/apache/arrow-go/v18/arrow/memory"
	"github.com/apache/arrow-go/v18/parquet/compress"
)

// ArrowFileSink appends decoded rows to an Arrow IPC file (the random-access
// "Feather v2" format that pyarrow.ipc.open_file, pyarrow.feather and DuckDB
// read), deduplicating by (id, seq_sha256) and counting id conflicts exactly
// like ParquetSink: the first row of a record wins and later ones are counted
// as duplicates; another sequence under a known id is kept. The file's schema
// is exactly Schema(meta), metadata included, so the embedding column is
// fixed_size_list<item: float32>[dim]; rows are written in record batches
// of WithRowGroupRows rows (default DefaultRowGroupRows), uncompressed
// unless WithCompression(compress.Codecs.Zstd).
//
// As with ParquetSink, rows go to a temporary file next to the target,
// which Close syncs and renames into place, and the identities seen are
// kept in memory.
//
// An ArrowFileSink is safe for concurrent use.
type ArrowFileSink struct {
	fileSink
}

// NewArrowFileSink creates the sink for path. It creates the temporary file
// at once, so an unwritable directory fails here. Invalid options, and
// compression codecs other than Uncompressed and Zstd, fail with ErrOption.
func NewArrowFileSink(path string, opts ...SinkOption) (*ArrowFileSink, error) {
	cfg, err := newSinkConfig(compress.Codecs.Uncompressed, opts)
	if err != nil {
		return nil, err
	}
	if cfg.codec != compress.Codecs.Uncompressed && cfg.codec != compress.Codecs.Zstd {
		return nil, fmt.Errorf("%w: WithCompression(%s): an Arrow IPC file takes Uncompressed or Zstd", ErrOption, cfg.codec)
	}
	s := &ArrowFileSink{}
	if err := s.init("arrow", path, cfg, openArrowFile); err != nil {
		return nil, err
	}
	return s, nil
}

// openArrowFile is ArrowFileSink's recordWriter.
func openArrowFile(cfg sinkConfig, schema *arrow.Schema, w io.Writer) (recordWriter, error) {
	opts := []ipc.Option{ipc.WithSchema(schema), ipc.WithAllocator(memory.DefaultAllocator)}
	if cfg.codec == compress.Codecs.Zstd {
		opts = append(opts, ipc.WithZstd())
	}
	return ipc.NewFileWriter(w, opts...)
}

// ReadArrowFile reads a file written by ArrowFileSink back into rows, in file
// order, with the Meta stored in its schema. The schema must be a seqembed
// layout and the data is fully validated. It loads the whole file: meant for
// tests, checks and small files. Errors wrap ErrDecode.
func ReadArrowFile(path string) (Meta, []Row, error) {
	f, err := os.Open(path)
	if err != nil {
		return Meta{}, nil, fmt.Errorf("%w: %s: %w", ErrDecode, path, err)
	}
	defer f.Close()
	r, err := ipc.NewFileReader(f, ipc.WithAllocator(memory.DefaultAllocator))
	if err != nil {
		return Meta{}, nil, fmt.Errorf("%w: %s: %w", ErrDecode, path, err)
	}
	defer r.Close()
	meta, _, err := metaFromSchema(r.Schema())
	if err != nil {
		return Meta{}, nil, fmt.Errorf("%s: %w", path, err)
	}
	var rows []Row
	for i := range r.NumRecords() {
		rec, err := r.RecordBatchAt(i)
		if err != nil {
			return Meta{}, nil, fmt.Errorf("%w: %s: record batch %d: %w", ErrDecode, path, i, err)
		}
		c, err := checkedColumns(rec, i)
		if err == nil {
			rows = appendRows(rows, c)
		}
		rec.Release()
		if err != nil {
			return Meta{}, nil, fmt.Errorf("%s: %w", path, err)
		}
	}
	return meta, rows, nil
}
