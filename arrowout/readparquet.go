package arrowout

import (
	"context"
	"fmt"

	"github.com/apache/arrow-go/v18/arrow/array"
	"github.com/apache/arrow-go/v18/arrow/memory"
	"github.com/apache/arrow-go/v18/parquet/file"
	"github.com/apache/arrow-go/v18/parquet/pqarrow"
)

// ReadParquet reads a file written by ParquetSink back into rows, in file order, with the Meta
// stored in its schema. It loads the whole file: meant for tests, checks and small files.
func ReadParquet(path string) (Meta, []Row, error) {
	rdr, err := file.OpenParquetFile(path, false)
	if err != nil {
		return Meta{}, nil, fmt.Errorf("%w: %s: %w", ErrDecode, path, err)
	}
	defer rdr.Close()
	fr, err := pqarrow.NewFileReader(rdr, pqarrow.ArrowReadProperties{BatchSize: 1 << 16}, memory.DefaultAllocator)
	if err != nil {
		return Meta{}, nil, fmt.Errorf("%w: %s: %w", ErrDecode, path, err)
	}
	tbl, err := fr.ReadTable(context.Background())
	if err != nil {
		return Meta{}, nil, fmt.Errorf("%w: %s: %w", ErrDecode, path, err)
	}
	defer tbl.Release()
	schema, err := fr.Schema() // the file's key-value metadata holds the Meta
	if err != nil {
		return Meta{}, nil, fmt.Errorf("%w: %s: %w", ErrDecode, path, err)
	}
	meta, _, err := metaFromMetadata(schema.Metadata())
	if err != nil {
		return Meta{}, nil, fmt.Errorf("%w: %s: %w", ErrDecode, path, err)
	}
	tr := array.NewTableReader(tbl, -1)
	defer tr.Release()
	var rows []Row
	for tr.Next() {
		rows = appendRows(rows, columnsOf(tr.RecordBatch()))
	}
	return meta, rows, nil
}
