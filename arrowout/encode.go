package arrowout

import (
	"bytes"
	"fmt"
	"math"
	"slices"

	"github.com/apache/arrow-go/v18/arrow"
	"github.com/apache/arrow-go/v18/arrow/array"
	"github.com/apache/arrow-go/v18/arrow/bitutil"
	"github.com/apache/arrow-go/v18/arrow/ipc"
	"github.com/apache/arrow-go/v18/arrow/memory"
)

// Batch is the plain-struct result of one inference batch. Row i is
// IDs[i], StreamSeqs[i], Lengths[i], Truncated[i],
// Embeddings[i*Dim:(i+1)*Dim], SeqSHA256s[i], Descriptions[i],
// InputLengths[i], StopStripped[i], InputIndexes[i] and Chunks[i]. All slices must have
// len(IDs) rows, but Chunks may be empty (every row 1).
//
// The caller owns every slice. The encoder only reads them during an
// Encode/Split call (the bytes it returns are a copy) and never keeps them,
// so the caller may reuse them as soon as the call returns.
type Batch struct {
	Seq        uint64    // batch number, used in error messages and nothing else
	IDs        []string  // sequence ids; one per row
	StreamSeqs []uint64  // input JetStream stream sequences; one per row
	Lengths    []int32   // residues embedded (after truncation); one per row
	Truncated  []bool    // whether the sequence was truncated; one per row
	Embeddings []float32 // row-major, len(IDs)*Dim values
	// The record's identity and provenance (see Schema), one per row.
	SeqSHA256s   []string // hex SHA-256 of the whole sequence
	Descriptions []string // "" when none
	InputLengths []int32  // residues before truncation
	StopStripped []bool   // the publisher removed a trailing '*'
	InputIndexes []int64  // position in the input; -1 when unknown
	// Chunks are the windows each row's sequence was embedded in (--overlength chunk; layout
	// version 3 only): empty for every row 1, which is all a version-2 stream can carry.
	Chunks []int32
	// Outputs are the extra outputs of Meta.Outputs, in its order (none for a Meta without).
	Outputs []OutputData
}

// Reset empties every slice of b, keeping their capacity.
func (b *Batch) Reset() {
	b.IDs, b.StreamSeqs, b.Lengths, b.Truncated = b.IDs[:0], b.StreamSeqs[:0], b.Lengths[:0], b.Truncated[:0]
	b.Embeddings = b.Embeddings[:0]
	b.SeqSHA256s, b.Descriptions, b.InputLengths = b.SeqSHA256s[:0], b.Descriptions[:0], b.InputLengths[:0]
	b.StopStripped, b.InputIndexes, b.Chunks = b.StopStripped[:0], b.InputIndexes[:0], b.Chunks[:0]
	for k := range b.Outputs {
		b.Outputs[k].F32, b.Outputs[k].F16 = b.Outputs[k].F32[:0], b.Outputs[k].F16[:0]
	}
}

// AppendRow appends row r of src, whose embeddings are dim wide, to b.
func (b *Batch) AppendRow(src *Batch, r, dim int) {
	b.IDs = append(b.IDs, src.IDs[r])
	b.StreamSeqs = append(b.StreamSeqs, src.StreamSeqs[r])
	b.Lengths = append(b.Lengths, src.Lengths[r])
	b.Truncated = append(b.Truncated, src.Truncated[r])
	b.Embeddings = append(b.Embeddings, src.Embeddings[r*dim:(r+1)*dim]...)
	b.SeqSHA256s = append(b.SeqSHA256s, src.SeqSHA256s[r])
	b.Descriptions = append(b.Descriptions, src.Descriptions[r])
	b.InputLengths = append(b.InputLengths, src.InputLengths[r])
	b.StopStripped = append(b.StopStripped, src.StopStripped[r])
	b.InputIndexes = append(b.InputIndexes, src.InputIndexes[r])
	if len(src.Chunks) > 0 || len(b.Chunks) > 0 {
		for len(b.Chunks) < len(b.IDs)-1 { // the rows before had no count: 1 each
			b.Chunks = append(b.Chunks, 1)
		}
		b.Chunks = append(b.Chunks, src.chunks(r))
	}
	if len(src.Outputs) == 0 {
		return
	}
	if len(b.Outputs) != len(src.Outputs) {
		b.Outputs = make([]OutputData, len(src.Outputs))
	}
	first, n := src.residueOffset(r), int(src.Lengths[r])
	for k, o := range src.Outputs {
		d := &b.Outputs[k]
		d.PerResidue = o.PerResidue
		switch {
		case !o.PerResidue:
			d.F32 = append(d.F32, o.F32[r*dim:(r+1)*dim]...)
		case o.F16 != nil:
			d.F16 = append(d.F16, o.F16[first*dim:(first+n)*dim]...)
		default:
			d.F32 = append(d.F32, o.F32[first*dim:(first+n)*dim]...)
		}
	}
}

// Rows returns the number of rows of b (len(b.IDs)).
func (b *Batch) Rows() int { return len(b.IDs) }

// chunks is row r's Chunks (1 when b has none).
func (b *Batch) chunks(r int) int32 {
	if len(b.Chunks) == 0 {
		return 1
	}
	return b.Chunks[r]
}

// validate checks that every slice of b has one entry per row for dimension
// dim. Errors wrap ErrInvalidBatch.
func (b *Batch) validate(dim int) error {
	n := len(b.IDs)
	switch {
	case len(b.StreamSeqs) != n:
		return fmt.Errorf("%w: batch %d: %d ids but %d stream seqs", ErrInvalidBatch, b.Seq, n, len(b.StreamSeqs))
	case len(b.Lengths) != n:
		return fmt.Errorf("%w: batch %d: %d ids but %d lengths", ErrInvalidBatch, b.Seq, n, len(b.Lengths))
	case len(b.Truncated) != n:
		return fmt.Errorf("%w: batch %d: %d ids but %d truncated flags", ErrInvalidBatch, b.Seq, n, len(b.Truncated))
	case len(b.SeqSHA256s) != n:
		return fmt.Errorf("%w: batch %d: %d ids but %d sequence hashes", ErrInvalidBatch, b.Seq, n, len(b.SeqSHA256s))
	case len(b.Descriptions) != n:
		return fmt.Errorf("%w: batch %d: %d ids but %d descriptions", ErrInvalidBatch, b.Seq, n, len(b.Descriptions))
	case len(b.InputLengths) != n:
		return fmt.Errorf("%w: batch %d: %d ids but %d input lengths", ErrInvalidBatch, b.Seq, n, len(b.InputLengths))
	case len(b.StopStripped) != n:
		return fmt.Errorf("%w: batch %d: %d ids but %d stop-stripped flags", ErrInvalidBatch, b.Seq, n, len(b.StopStripped))
	case len(b.InputIndexes) != n:
		return fmt.Errorf("%w: batch %d: %d ids but %d input indexes", ErrInvalidBatch, b.Seq, n, len(b.InputIndexes))
	case len(b.Chunks) != 0 && len(b.Chunks) != n:
		return fmt.Errorf("%w: batch %d: %d ids but %d chunk counts", ErrInvalidBatch, b.Seq, n, len(b.Chunks))
	case len(b.Embeddings) != n*dim:
		return fmt.Errorf("%w: batch %d: %d rows of dim %d need %d embedding values, got %d", ErrInvalidBatch, b.Seq, n, dim, n*dim, len(b.Embeddings))
	}
	for i, c := range b.Chunks {
		if c < 1 {
			return fmt.Errorf("%w: batch %d: row %d (id %q) embedded in %d chunks, want 1 or more", ErrInvalidBatch, b.Seq, i, b.IDs[i], c)
		}
	}
	return nil
}

// seqRange returns the smallest and largest stream sequence of rows [lo,hi)
// (0, 0 for an empty range).
func (b *Batch) seqRange(lo, hi int) (minSeq, maxSeq uint64) {
	if lo >= hi {
		return 0, 0
	}
	minSeq, maxSeq = b.StreamSeqs[lo], b.StreamSeqs[lo]
	for _, s := range b.StreamSeqs[lo+1 : hi] {
		minSeq, maxSeq = min(minSeq, s), max(maxSeq, s)
	}
	return minSeq, maxSeq
}

// EncoderOption configures an Encoder.
type EncoderOption func(*encoderConfig) error

type encoderConfig struct {
	mem memory.Allocator
}

// WithAllocator sets the Arrow allocator used for the small per-call buffers
// of the IPC writer (message metadata, sliced offsets and bitmaps). Default:
// memory.DefaultAllocator. A memory.CheckedAllocator here lets tests prove
// the encoder releases everything it allocates.
func WithAllocator(mem memory.Allocator) EncoderOption {
	return func(c *encoderConfig) error {
		if mem == nil {
			return fmt.Errorf("%w: WithAllocator(nil)", ErrOption)
		}
		c.mem = mem
		return nil
	}
}

// Encoder turns Batches into Arrow IPC streams of Schema(meta).
//
// The fixed-width columns (stream_seq, length, embedding, input_length,
// input_index) are handed to the IPC writer as zero-copy views of the Batch
// slices, and the string and bool columns are built in scratch buffers the
// Encoder reuses, so the only per-row copy is the one into the returned
// bytes. The serialized schema
// message is computed once.
//
// An Encoder is NOT safe for concurrent use; use one per goroutine (they are
// cheap) or guard it with a mutex.
type Encoder struct {
	schema      *arrow.Schema
	meta        Meta
	cols        []OutputColumn // extra outputs
	residueCols int
	offsets     []int32 // scratch: per-residue list offsets
	dim         int
	mem         memory.Allocator
	schemaMsg   []byte // encapsulated schema message opening every stream
	overhead    int    // size of a stream holding a zero-row record batch

	// scratch, reused across calls
	ids, shas, descs    stringScratch
	truncBits, stopBits []byte
	ones                []int32 // the chunks column of a batch without Chunks
	pending             []pendingPart
}

// pendingPart is a row range whose record-batch payload has been sized and
// accepted by Split but not yet written out.
type pendingPart struct {
	lo, hi       int
	resLo, resHi int // a row slice's residues; 0, 0 for whole rows
	payload      ipc.Payload
	size         int
}

// partPadding bounds the padding one part pays beyond e.overhead: up to 7
// bytes for each of the record batch's buffers (3 per string column, 2 per
// fixed-width or bool column, 1 + 2 for the embedding: 24), rounded up.
const partPadding = 24 * 8

// eos is the Arrow IPC end-of-stream marker.
var eos = [8]byte{0xFF, 0xFF, 0xFF, 0xFF, 0, 0, 0, 0}

// NewEncoder returns an Encoder for m. It fails with ErrOption when m is
// invalid (see Meta.Validate) or an option is.
func NewEncoder(m Meta, opts ...EncoderOption) (*Encoder, error) {
	if err := m.Validate(); err != nil {
		return nil, err
	}
	cfg := encoderConfig{mem: memory.DefaultAllocator}
	for _, o := range opts {
		if err := o(&cfg); err != nil {
			return nil, err
		}
	}
	e := &Encoder{schema: Schema(m), meta: m, cols: m.mustOutputColumns(), dim: m.Dim, mem: cfg.mem}
	for _, c := range e.cols {
		if c.Pooling == PoolPerResidue {
			e.residueCols++
		}
	}

	sp := ipc.GetSchemaPayload(e.schema, e.mem)
	defer sp.Release()
	var buf bytes.Buffer
	if _, err := sp.WritePayload(&buf); err != nil {
		return nil, fmt.Errorf("arrowout: serialize schema: %w", err)
	}
	e.schemaMsg = buf.Bytes()

	empty, err := e.Encode(nil, &Batch{}, 0, 0)
	if err != nil {
		return nil, fmt.Errorf("arrowout: encode empty batch: %w", err)
	}
	e.overhead = len(empty)
	return e, nil
}

// Schema returns the schema of every stream the Encoder writes. Callers
// must not modify it.
func (e *Encoder) Schema() *arrow.Schema { return e.schema }

// Encode writes rows [lo,hi) of b as one complete Arrow IPC stream (schema
// message, one record batch, end-of-stream marker) appended to dst, which
// may be nil, and returns the extended slice. An empty range yields a valid
// stream with a zero-row batch. Errors wrap ErrInvalidBatch.
func (e *Encoder) Encode(dst []byte, b *Batch, lo, hi int) ([]byte, error) {
	if err := e.checkRange(b, lo, hi); err != nil {
		return dst, err
	}
	rec, err := e.record(b, lo, hi)
	if err != nil {
		return dst, err
	}
	defer rec.Release()
	p, size, err := e.payload(rec)
	if err != nil {
		return dst, fmt.Errorf("arrowout: batch %d rows [%d,%d): %w", b.Seq, lo, hi, err)
	}
	defer p.Release()
	return e.appendStream(growBytes(dst, size), &p), nil
}

// Part is one IPC stream produced by Split: rows [Lo,Hi) of the batch, or, for a row whose
// per-residue outputs alone do not fit one part (a row slice, Hi == Lo+1 and ResHi > 0), row Lo
// with only residues [ResLo,ResHi) of its per-residue columns (every other column whole). The
// publisher marks row slices with HeaderResidues; the sink joins them back into one row.
type Part struct {
	Lo, Hi       int
	ResLo, ResHi int // residues of the row in this part (row slices only; 0, 0 otherwise)
	Data         []byte
}

// Split encodes b into one or more IPC streams of at most maxBytes bytes
// each, returned in row order and covering every row exactly once. A row
// range that does not fit is cut into k >= 2 equal row ranges, k estimated
// from its encoded size so that each piece should fit, and any piece that
// still does not fit is cut again (recursive halving with a better first
// guess), so the result is close to the fewest parts possible. Sizing a
// range does not serialize it, so rejected attempts are cheap. The split
// depends only on b and maxBytes: re-splitting a batch gives identical
// parts.
//
// A row that does not fit alone but has per-residue outputs is cut the same
// way along its residues into row slices (Part.ResLo, Part.ResHi), each
// holding the row's other columns whole.
//
// An empty batch yields no parts. The parts' Data share one freshly
// allocated backing array owned by the caller. A row that cannot fit alone
// (no per-residue outputs, or a single residue does not fit) fails with a
// *TooLargeError (wrapping ErrTooLarge) naming the batch and row; invalid
// input fails with ErrInvalidBatch or ErrOption.
func (e *Encoder) Split(b *Batch, maxBytes int) ([]Part, error) {
	_, parts, err := e.split(nil, nil, b, maxBytes)
	return parts, err
}

// split is Split appending the encoded streams to buf and the parts to
// parts; it returns both extended slices.
func (e *Encoder) split(buf []byte, parts []Part, b *Batch, maxBytes int) ([]byte, []Part, error) {
	if maxBytes <= 0 {
		return buf, parts, fmt.Errorf("%w: batch %d: maxBytes %d must be > 0", ErrOption, b.Seq, maxBytes)
	}
	if err := e.validate(b); err != nil {
		return buf, parts, err
	}
	n := b.Rows()
	if n == 0 {
		return buf, parts, nil
	}
	rec, err := e.record(b, 0, n)
	if err != nil {
		return buf, parts, err
	}
	defer rec.Release()
	defer func() {
		for i := range e.pending {
			e.pending[i].payload.Release()
		}
		clear(e.pending)
		e.pending = e.pending[:0]
	}()
	if err := e.fit(rec, b, 0, n, maxBytes); err != nil {
		return buf, parts, err
	}

	total := 0
	for _, pp := range e.pending {
		total += pp.size
	}
	buf = growBytes(buf, total)
	for i := range e.pending {
		pp := &e.pending[i]
		start := len(buf)
		buf = e.appendStream(buf, &pp.payload)
		parts = append(parts, Part{Lo: pp.lo, Hi: pp.hi, ResLo: pp.resLo, ResHi: pp.resHi, Data: buf[start:len(buf):len(buf)]})
	}
	return buf, parts, nil
}

// fit sizes rows [lo,hi) of rec and either queues them as one part or
// splits the range, recursively, in row order.
func (e *Encoder) fit(rec arrow.RecordBatch, b *Batch, lo, hi, maxBytes int) error {
	slice := rec.NewSlice(int64(lo), int64(hi))
	p, size, err := e.payload(slice)
	slice.Release()
	if err != nil {
		return fmt.Errorf("arrowout: batch %d rows [%d,%d): %w", b.Seq, lo, hi, err)
	}
	if size <= maxBytes {
		e.pending = append(e.pending, pendingPart{lo: lo, hi: hi, payload: p, size: size})
		return nil
	}
	p.Release()
	n := hi - lo
	if n == 1 {
		if e.residueCols > 0 && b.Lengths[lo] > 1 {
			return e.fitResidues(rec, b, lo, 0, int(b.Lengths[lo]), size, maxBytes)
		}
		return &TooLargeError{Batch: b.Seq, Row: lo, ID: b.IDs[lo], StreamSeq: b.StreamSeqs[lo], Size: size, Limit: maxBytes}
	}
	k := e.pieces(n, size, maxBytes)
	for i := range k {
		if err := e.fit(rec, b, lo+n*i/k, lo+n*(i+1)/k, maxBytes); err != nil {
			return err
		}
	}
	return nil
}

// pieces is how many pieces a range of n rows (or residues) that encodes to size bytes is cut
// into so that each should fit maxBytes: every part pays e.overhead plus up to 7 bytes of padding
// per buffer, so the pieces are sized for the body to fit in what is left.
func (e *Encoder) pieces(n, size, maxBytes int) int {
	k := n
	if room := maxBytes - e.overhead - partPadding; room > 0 {
		k = min(n, max(2, (size-e.overhead+room-1)/room))
	}
	return k
}

// fitResidues queues row r's residues [a,c) (of a row too large for one part; size is what the
// range encodes to) as row slices, cut as fit cuts rows.
func (e *Encoder) fitResidues(rec arrow.RecordBatch, b *Batch, r, a, c, size, maxBytes int) error {
	n := c - a
	k := e.pieces(n, size, maxBytes)
	for i := range k {
		lo, hi := a+n*i/k, a+n*(i+1)/k
		slice := e.rowSlice(rec, b, r, lo, hi)
		p, sz, err := e.payload(slice)
		slice.Release()
		if err != nil {
			return fmt.Errorf("arrowout: batch %d row %d residues [%d,%d): %w", b.Seq, r, lo, hi, err)
		}
		if sz <= maxBytes {
			e.pending = append(e.pending, pendingPart{lo: r, hi: r + 1, resLo: lo, resHi: hi, payload: p, size: sz})
			continue
		}
		p.Release()
		if hi-lo == 1 {
			return &TooLargeError{Batch: b.Seq, Row: r, ID: b.IDs[r], StreamSeq: b.StreamSeqs[r], Size: sz, Limit: maxBytes}
		}
		if err := e.fitResidues(rec, b, r, lo, hi, sz, maxBytes); err != nil {
			return err
		}
	}
	return nil
}

// rowSlice is row r of rec with its per-residue columns cut to residues [a,c): zero-copy views of
// b's outputs (the list offsets are a new two-value buffer, so nothing of e's scratch is
// reused while rec's queued payloads still point at it). The caller releases it.
func (e *Encoder) rowSlice(rec arrow.RecordBatch, b *Batch, r, a, c int) arrow.RecordBatch {
	row := rec.NewSlice(int64(r), int64(r+1))
	defer row.Release()
	cols := slices.Clone(row.Columns())
	first := b.residueOffset(r)
	offsets := []int32{0, int32(c - a)}
	var made []arrow.Array
	for k, col := range e.cols {
		if col.Pooling != PoolPerResidue {
			continue
		}
		f := e.schema.Field(firstOutputField + k)
		d := perResidueList(f.Type.(*arrow.ListType), b.Outputs[k].residueBytes(e.meta.ResiduesFP16, (first+a)*e.dim, (first+c)*e.dim), offsets)
		cols[firstOutputField+k] = array.MakeFromData(d)
		d.Release()
		made = append(made, cols[firstOutputField+k])
	}
	out := array.NewRecordBatch(e.schema, cols, 1)
	for _, m := range made {
		m.Release()
	}
	return out
}

// checkRange validates b and the row range [lo,hi).
func (e *Encoder) checkRange(b *Batch, lo, hi int) error {
	if err := e.validate(b); err != nil {
		return err
	}
	if lo < 0 || hi < lo || hi > b.Rows() {
		return fmt.Errorf("%w: batch %d: row range [%d,%d) outside [0,%d)", ErrInvalidBatch, b.Seq, lo, hi, b.Rows())
	}
	return nil
}

// validate checks b for e's schema. Errors wrap ErrInvalidBatch.
func (e *Encoder) validate(b *Batch) error {
	if err := b.validate(e.dim); err != nil {
		return err
	}
	if len(e.cols) == 0 {
		for i, c := range b.Chunks {
			if c != 1 {
				return fmt.Errorf("%w: batch %d: row %d (id %q) was chunked (%d windows): layout version 2 has no chunks column (chunked rows need per-residue outputs, layout version 3)",
					ErrInvalidBatch, b.Seq, i, b.IDs[i], c)
			}
		}
	}
	if len(e.cols) == 0 && len(b.Outputs) == 0 || b.Rows() == 0 && len(b.Outputs) == 0 {
		return nil
	}
	return b.validateOutputs(e.meta, e.cols)
}

// record assembles rows [lo,hi) of b as a record batch. stream_seq, length
// and embedding are zero-copy views of b's slices; id and truncated live in
// the Encoder's scratch buffers. The record is valid until b is modified or
// the next call to record; the caller releases it.
func (e *Encoder) record(b *Batch, lo, hi int) (arrow.RecordBatch, error) {
	n := hi - lo
	for _, col := range []struct {
		sc   *stringScratch
		vals []string
		what string
	}{{&e.ids, b.IDs, "ids"}, {&e.shas, b.SeqSHA256s, "sequence hashes"}, {&e.descs, b.Descriptions, "descriptions"}} {
		if !col.sc.fill(col.vals[lo:hi]) {
			return nil, fmt.Errorf("%w: batch %d: %s of rows [%d,%d) exceed 2 GiB", ErrInvalidBatch, b.Seq, col.what, lo, hi)
		}
	}
	e.truncBits = fillBits(e.truncBits, b.Truncated[lo:hi])
	e.stopBits = fillBits(e.stopBits, b.StopStripped[lo:hi])

	wrap := memory.NewBufferBytes
	values := array.NewData(arrow.PrimitiveTypes.Float32, n*e.dim,
		[]*memory.Buffer{nil, wrap(arrow.Float32Traits.CastToBytes(b.Embeddings[lo*e.dim : hi*e.dim]))}, nil, 0, 0)
	defer values.Release()
	str := func(sc *stringScratch) arrow.ArrayData {
		return array.NewData(arrow.BinaryTypes.String, n,
			[]*memory.Buffer{nil, wrap(arrow.Int32Traits.CastToBytes(sc.offsets)), wrap(sc.data)}, nil, 0, 0)
	}
	datas := [...]arrow.ArrayData{
		str(&e.ids),
		array.NewData(arrow.PrimitiveTypes.Uint64, n,
			[]*memory.Buffer{nil, wrap(arrow.Uint64Traits.CastToBytes(b.StreamSeqs[lo:hi]))}, nil, 0, 0),
		array.NewData(arrow.PrimitiveTypes.Int32, n,
			[]*memory.Buffer{nil, wrap(arrow.Int32Traits.CastToBytes(b.Lengths[lo:hi]))}, nil, 0, 0),
		array.NewData(arrow.FixedWidthTypes.Boolean, n,
			[]*memory.Buffer{nil, wrap(e.truncBits)}, nil, 0, 0),
		array.NewData(e.schema.Field(4).Type, n,
			[]*memory.Buffer{nil}, []arrow.ArrayData{values}, 0, 0),
		str(&e.shas),
		str(&e.descs),
		array.NewData(arrow.PrimitiveTypes.Int32, n,
			[]*memory.Buffer{nil, wrap(arrow.Int32Traits.CastToBytes(b.InputLengths[lo:hi]))}, nil, 0, 0),
		array.NewData(arrow.FixedWidthTypes.Boolean, n,
			[]*memory.Buffer{nil, wrap(e.stopBits)}, nil, 0, 0),
		array.NewData(arrow.PrimitiveTypes.Int64, n,
			[]*memory.Buffer{nil, wrap(arrow.Int64Traits.CastToBytes(b.InputIndexes[lo:hi]))}, nil, 0, 0),
	}
	all := datas[:]
	if e.meta.layoutVersion() >= OutputsVersion {
		all = append(all, e.chunksArray(b, lo, hi))
		all = append(all, e.outputArrays(b, lo, hi)...)
	}
	cols := make([]arrow.Array, len(all))
	for i, d := range all {
		cols[i] = array.MakeFromData(d)
		d.Release()
	}
	rec := array.NewRecordBatch(e.schema, cols, int64(n))
	for _, c := range cols {
		c.Release()
	}
	return rec, nil
}

// chunksArray is the chunks column of rows [lo,hi) of b: a zero-copy view of b.Chunks, or of
// e's scratch of ones when b has none.
func (e *Encoder) chunksArray(b *Batch, lo, hi int) arrow.ArrayData {
	vals := b.Chunks
	if len(vals) == 0 {
		for len(e.ones) < hi {
			e.ones = append(e.ones, 1)
		}
		vals = e.ones
	}
	return array.NewData(arrow.PrimitiveTypes.Int32, hi-lo,
		[]*memory.Buffer{nil, memory.NewBufferBytes(arrow.Int32Traits.CastToBytes(vals[lo:hi]))}, nil, 0, 0)
}

// stringScratch holds the offsets and bytes of one utf8 column being built.
type stringScratch struct {
	offsets []int32
	data    []byte
}

// fill sets sc to the column of vals; false if the bytes exceed 2 GiB.
func (sc *stringScratch) fill(vals []string) bool {
	sc.offsets = append(sc.offsets[:0], 0)
	sc.data = sc.data[:0]
	for _, v := range vals {
		sc.data = append(sc.data, v...)
		if len(sc.data) > math.MaxInt32 {
			return false
		}
		sc.offsets = append(sc.offsets, int32(len(sc.data)))
	}
	return true
}

// fillBits returns buf (reused if large enough) as the validity-style bitmap of vals.
func fillBits(buf []byte, vals []bool) []byte {
	nb := int(bitutil.BytesForBits(int64(len(vals))))
	if cap(buf) < nb {
		buf = make([]byte, nb)
	}
	buf = buf[:nb]
	clear(buf)
	for i, t := range vals {
		if t {
			bitutil.SetBit(buf, i)
		}
	}
	return buf
}

// payload encodes rec as an IPC record-batch payload and returns it with
// the size of the complete stream (schema + batch + EOS) it makes. The
// caller releases the payload.
func (e *Encoder) payload(rec arrow.RecordBatch) (ipc.Payload, int, error) {
	p, err := ipc.GetRecordBatchPayload(rec, ipc.WithAllocator(e.mem))
	if err != nil {
		return ipc.Payload{}, 0, err
	}
	var c countWriter
	if _, err := p.WritePayload(&c); err != nil {
		p.Release()
		return ipc.Payload{}, 0, err
	}
	return p, len(e.schemaMsg) + int(c) + len(eos), nil
}

// appendStream appends schema message, p and EOS to dst. Writing to an
// appendWriter cannot fail.
func (e *Encoder) appendStream(dst []byte, p *ipc.Payload) []byte {
	dst = append(dst, e.schemaMsg...)
	w := appendWriter{buf: dst}
	_, _ = p.WritePayload(&w)
	return append(w.buf, eos[:]...)
}

// growBytes returns dst with room for at least n more bytes.
func growBytes(dst []byte, n int) []byte {
	if cap(dst)-len(dst) >= n {
		return dst
	}
	out := make([]byte, len(dst), len(dst)+n)
	copy(out, dst)
	return out
}

// countWriter counts the bytes written to it.
type countWriter int

func (c *countWriter) Write(p []byte) (int, error) { *c += countWriter(len(p)); return len(p), nil }

// appendWriter appends what is written to it to buf.
type appendWriter struct{ buf []byte }

func (w *appendWriter) Write(p []byte) (int, error) { w.buf = append(w.buf, p...); return len(p), nil }
