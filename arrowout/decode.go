package arrowout

import (
	"bytes"
	"fmt"
	"slices"
	"strings"

	"github.com/apache/arrow-go/v18/arrow"
	"github.com/apache/arrow-go/v18/arrow/array"
	"github.com/apache/arrow-go/v18/arrow/ipc"
	"github.com/apache/arrow-go/v18/arrow/memory"
)

// Row is one decoded output row.
type Row struct {
	ID        string
	StreamSeq uint64
	Length    int32
	Truncated bool
	Embedding []float32 // Dim values
}

// Decode reads every record batch of the Arrow IPC stream data back into
// plain rows, in stream order, and returns the stream's Meta. The rows own
// their memory (nothing aliases data); the embeddings of one record batch
// share a backing array. Errors wrap ErrDecode. Decode is safe for
// concurrent use.
func Decode(data []byte) (Meta, []Row, error) {
	var rows []Row
	m, err := readStream(data, memory.DefaultAllocator, func(m Meta, c columns) error {
		n := c.len()
		vals := make([]float32, n*m.Dim)
		for i := range n {
			emb := vals[i*m.Dim : (i+1)*m.Dim : (i+1)*m.Dim]
			copy(emb, c.embedding(i))
			rows = append(rows, Row{
				ID:        strings.Clone(c.id.Value(i)),
				StreamSeq: c.seq.Value(i),
				Length:    c.length.Value(i),
				Truncated: c.truncated.Value(i),
				Embedding: emb,
			})
		}
		return nil
	})
	if err != nil {
		return Meta{}, nil, err
	}
	return m, rows, nil
}

// columns are the typed columns of one seqembed record batch.
type columns struct {
	id        *array.String
	seq       *array.Uint64
	length    *array.Int32
	truncated *array.Boolean
	emb       *array.FixedSizeList
	values    []float32 // emb's child values, offset-adjusted
}

// columnsOf returns the typed columns of rec, which must have the column
// types of Schema (list item names and nullability may differ).
func columnsOf(rec arrow.RecordBatch) columns {
	c := columns{
		id:        rec.Column(0).(*array.String),
		seq:       rec.Column(1).(*array.Uint64),
		length:    rec.Column(2).(*array.Int32),
		truncated: rec.Column(3).(*array.Boolean),
		emb:       rec.Column(4).(*array.FixedSizeList),
	}
	c.values = c.emb.ListValues().(*array.Float32).Float32Values()
	return c
}

func (c *columns) len() int { return c.id.Len() }

// embedding returns row i's embedding as a view into the record's memory.
func (c *columns) embedding(i int) []float32 {
	lo, hi := c.emb.ValueOffsets(i)
	return c.values[lo:hi]
}

// readStream parses the IPC stream data, checks that its schema is a
// seqembed layout, and calls fn for each record batch with its typed
// columns, which are valid only during the call. Record batches are fully
// validated first (untrusted input must not panic), and nulls are rejected
// since seqembed never writes them. Errors from parsing wrap ErrDecode;
// errors from fn are returned as is.
func readStream(data []byte, mem memory.Allocator, fn func(Meta, columns) error) (Meta, error) {
	// No message of data can be longer than data itself; the limits stop a
	// corrupt length prefix from allocating gigabytes (ipc.NewReader does
	// not apply any limit).
	limit := int64(max(len(data), 1))
	mr := ipc.NewMessageReader(bytes.NewReader(data), ipc.WithAllocator(mem),
		ipc.WithMetadataSizeLimit(limit), ipc.WithBodySizeLimit(limit))
	r, err := ipc.NewReaderFromMessageReader(mr, ipc.WithAllocator(mem))
	if err != nil {
		return Meta{}, fmt.Errorf("%w: %w", ErrDecode, err)
	}
	defer r.Release()
	m, err := metaFromSchema(r.Schema())
	if err != nil {
		return Meta{}, err
	}
	for batch := 0; r.Next(); batch++ {
		c, err := checkedColumns(r.RecordBatch(), batch)
		if err != nil {
			return m, err
		}
		if err := fn(m, c); err != nil {
			return m, err
		}
	}
	if err := r.Err(); err != nil {
		return m, fmt.Errorf("%w: %w", ErrDecode, err)
	}
	return m, nil
}

// checkedColumns fully validates record batch number batch, whose schema
// metaFromSchema accepted, rejects nulls, and returns its typed columns.
// Errors wrap ErrDecode.
func checkedColumns(rec arrow.RecordBatch, batch int) (columns, error) {
	if err := array.ValidateRecordFull(rec); err != nil {
		return columns{}, fmt.Errorf("%w: record batch %d: %w", ErrDecode, batch, err)
	}
	for i, col := range rec.Columns() {
		if int64(col.Len()) != rec.NumRows() {
			return columns{}, fmt.Errorf("%w: record batch %d: column %q has %d rows, batch has %d", ErrDecode, batch, rec.ColumnName(i), col.Len(), rec.NumRows())
		}
		if col.NullN() != 0 {
			return columns{}, fmt.Errorf("%w: record batch %d: column %q has %d nulls", ErrDecode, batch, rec.ColumnName(i), col.NullN())
		}
	}
	c := columnsOf(rec)
	if c.emb.ListValues().NullN() != 0 {
		return columns{}, fmt.Errorf("%w: record batch %d: embedding values contain nulls", ErrDecode, batch)
	}
	return c, nil
}

// appendRows appends the rows of c to rows, copying everything (nothing
// aliases c's memory).
func appendRows(rows []Row, c columns) []Row {
	for i := range c.len() {
		rows = append(rows, Row{ID: strings.Clone(c.id.Value(i)), StreamSeq: c.seq.Value(i), Length: c.length.Value(i),
			Truncated: c.truncated.Value(i), Embedding: slices.Clone(c.embedding(i))})
	}
	return rows
}
