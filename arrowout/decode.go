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

// Row is one decoded output row. A row of a version-1 message (FormatVersion)
// has no identity columns: SeqSHA256 and Description are "", InputLength and
// InputIndex -1, StopStripped false.
type Row struct {
	ID           string
	StreamSeq    uint64
	Length       int32
	Truncated    bool
	Embedding    []float32 // Dim values
	SeqSHA256    string    // hex SHA-256 of the whole sequence
	Description  string
	InputLength  int32 // residues before truncation
	StopStripped bool
	InputIndex   int64 // position in the input; -1 when unknown
	// Chunks is the number of windows the sequence was embedded in (--overlength chunk): 1 for
	// a row embedded whole, and for every row of a version-1 or -2 message.
	Chunks int32
	// Outputs are the row's extra outputs (Meta.Outputs' order; nil for none): Dim values of a
	// pooled output, Length × Dim of a per-residue one (float16 columns widened to float32).
	Outputs [][]float32
}

// Decode reads every record batch of the Arrow IPC stream data back into
// plain rows, in stream order, and returns the stream's Meta. Streams of
// layout version 1 and 2 are read (see Row). The rows own their memory
// (nothing aliases data); the embeddings of one record batch share a backing
// array. Errors wrap ErrDecode. Decode is safe for concurrent use.
func Decode(data []byte) (Meta, []Row, error) {
	var rows []Row
	m, err := readStream(data, memory.DefaultAllocator, func(m Meta, c columns) error {
		n := c.len()
		vals := make([]float32, n*m.Dim)
		for i := range n {
			emb := vals[i*m.Dim : (i+1)*m.Dim : (i+1)*m.Dim]
			copy(emb, c.embedding(i))
			rows = append(rows, c.row(i, emb))
			rows[len(rows)-1].Outputs = c.outputs(i)
		}
		return nil
	})
	if err != nil {
		return Meta{}, nil, err
	}
	return m, rows, nil
}

// columns are the typed columns of one seqembed record batch; the version-2
// ones are nil in a version-1 batch.
type columns struct {
	id        *array.String
	seq       *array.Uint64
	length    *array.Int32
	truncated *array.Boolean
	emb       *array.FixedSizeList
	values    []float32 // emb's child values, offset-adjusted

	sha      *array.String
	desc     *array.String
	inputLen *array.Int32
	stop     *array.Boolean
	index    *array.Int64

	chunks *array.Int32  // version 3: windows per row
	extra  []arrow.Array // version 3: the extra output columns

	rec arrow.RecordBatch // the record batch the columns are of
}

// outputs returns row i's extra outputs, copied (float16 widened).
func (c *columns) outputs(i int) [][]float32 {
	if len(c.extra) == 0 {
		return nil
	}
	out := make([][]float32, len(c.extra))
	for k, col := range c.extra {
		switch a := col.(type) {
		case *array.FixedSizeList:
			lo, hi := a.ValueOffsets(i)
			out[k] = slices.Clone(a.ListValues().(*array.Float32).Float32Values()[lo:hi])
		case *array.List:
			lo, hi := a.ValueOffsets(i)
			rows := a.ListValues().(*array.FixedSizeList)
			vlo, _ := rows.ValueOffsets(int(lo))
			vhi := vlo
			if hi > lo {
				_, vhi = rows.ValueOffsets(int(hi) - 1)
			}
			switch v := rows.ListValues().(type) {
			case *array.Float32:
				out[k] = slices.Clone(v.Float32Values()[vlo:vhi])
			case *array.Float16:
				f := make([]float32, 0, vhi-vlo)
				for _, h := range v.Values()[vlo:vhi] {
					f = append(f, h.Float32())
				}
				out[k] = f
			}
		}
	}
	return out
}

// columnsOf returns the typed columns of rec, which must have the column
// types of a seqembed layout (list item names and nullability may differ).
func columnsOf(rec arrow.RecordBatch) columns {
	c := columns{
		id:        rec.Column(0).(*array.String),
		seq:       rec.Column(1).(*array.Uint64),
		length:    rec.Column(2).(*array.Int32),
		truncated: rec.Column(3).(*array.Boolean),
		emb:       rec.Column(4).(*array.FixedSizeList),
		rec:       rec,
	}
	c.values = c.emb.ListValues().(*array.Float32).Float32Values()
	if rec.NumCols() > 5 {
		c.sha = rec.Column(5).(*array.String)
		c.desc = rec.Column(6).(*array.String)
		c.inputLen = rec.Column(7).(*array.Int32)
		c.stop = rec.Column(8).(*array.Boolean)
		c.index = rec.Column(9).(*array.Int64)
	}
	if rec.NumCols() > chunksField {
		c.chunks = rec.Column(chunksField).(*array.Int32)
		c.extra = rec.Columns()[firstOutputField:]
	}
	return c
}

func (c *columns) len() int { return c.id.Len() }

// embedding returns row i's embedding as a view into the record's memory.
func (c *columns) embedding(i int) []float32 {
	lo, hi := c.emb.ValueOffsets(i)
	return c.values[lo:hi]
}

// meta returns row i's identity columns, aliasing the record's memory (the
// version-1 "unknown" values in a version-1 batch).
func (c *columns) meta(i int) (sha, desc string, inputLen int32, stop bool, index int64) {
	if c.sha == nil {
		return "", "", -1, false, -1
	}
	return c.sha.Value(i), c.desc.Value(i), c.inputLen.Value(i), c.stop.Value(i), c.index.Value(i)
}

// row is row i with embedding emb, every string copied.
func (c *columns) row(i int, emb []float32) Row {
	sha, desc, inputLen, stop, index := c.meta(i)
	chunks := int32(1)
	if c.chunks != nil {
		chunks = c.chunks.Value(i)
	}
	return Row{ID: strings.Clone(c.id.Value(i)), StreamSeq: c.seq.Value(i), Length: c.length.Value(i),
		Truncated: c.truncated.Value(i), Embedding: emb, SeqSHA256: strings.Clone(sha), Description: strings.Clone(desc),
		InputLength: inputLen, StopStripped: stop, InputIndex: index, Chunks: chunks}
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
	m, _, err := metaFromSchema(r.Schema())
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
		rows = append(rows, c.row(i, slices.Clone(c.embedding(i))))
		rows[len(rows)-1].Outputs = c.outputs(i)
	}
	return rows
}
