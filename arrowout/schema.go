// Package arrowout encodes embedding batches as Arrow IPC streams, publishes
// them to NATS JetStream, and sinks them into Parquet files.
//
// Every message seqembed publishes is one complete, self-describing Arrow IPC
// stream (schema message, one record batch, end-of-stream marker) that
// pyarrow (pa.ipc.open_stream), DuckDB and arrow-go read directly. The schema
// is described by Schema.
package arrowout

import (
	"fmt"
	"math"
	"strconv"

	"github.com/apache/arrow-go/v18/arrow"
)

// Column names of Schema, in order.
const (
	ColID        = "id"
	ColStreamSeq = "stream_seq"
	ColLength    = "length"
	ColTruncated = "truncated"
	ColEmbedding = "embedding"
)

// Schema metadata keys. The values of MetaKeyDim and MetaKeyVersion are
// decimal integers.
const (
	MetaKeyModel       = "seqembed.model"
	MetaKeyModelSHA256 = "seqembed.model_sha256"
	MetaKeyDim         = "seqembed.dim"
	MetaKeyPooling     = "seqembed.pooling"
	MetaKeyVersion     = "seqembed.version"
)

// FormatVersion is the value of the MetaKeyVersion schema metadata key: the
// version of the column layout described by Schema. It changes only when the
// layout changes incompatibly.
const FormatVersion = 1

// maxDim bounds Meta.Dim: Arrow fixed-size lists have an int32 length.
const maxDim = math.MaxInt32

// Meta describes the model that produced the embeddings. It is stored in the
// Arrow schema metadata of every stream (see the MetaKey constants).
type Meta struct {
	// Model names the model, e.g. "esm2_t33_650M_UR50D". Required.
	Model string
	// ModelSHA256 is the hex SHA-256 of the model file. Optional.
	ModelSHA256 string
	// Pooling names how residue embeddings were pooled, e.g. "mean". Optional.
	Pooling string
	// Dim is the embedding width; it must be in [1, math.MaxInt32].
	Dim int
}

// Validate reports whether m can describe a schema: Model non-empty and Dim
// in [1, math.MaxInt32]. The error wraps ErrOption.
func (m Meta) Validate() error {
	if m.Model == "" {
		return fmt.Errorf("%w: Meta.Model is empty", ErrOption)
	}
	if m.Dim <= 0 || m.Dim > maxDim {
		return fmt.Errorf("%w: Meta.Dim %d out of range [1, %d]", ErrOption, m.Dim, maxDim)
	}
	return nil
}

// Schema returns the Arrow schema of seqembed output for m:
//
//	id          utf8, not null
//	stream_seq  uint64            (input JetStream stream sequence)
//	length      int32             (residues embedded, after truncation)
//	truncated   bool
//	embedding   fixed_size_list<item: float32>[m.Dim]
//
// with schema metadata seqembed.model, seqembed.model_sha256, seqembed.dim,
// seqembed.pooling and seqembed.version (in that order). Only id is declared
// not null; the encoder never writes nulls in any column. In pyarrow terms the
// embedding type is pa.list_(pa.float32(), m.Dim).
//
// Schema panics if m.Dim is out of range; call m.Validate first when m is
// untrusted. Each call returns a new schema.
func Schema(m Meta) *arrow.Schema {
	md := arrow.NewMetadata(
		[]string{MetaKeyModel, MetaKeyModelSHA256, MetaKeyDim, MetaKeyPooling, MetaKeyVersion},
		[]string{m.Model, m.ModelSHA256, strconv.Itoa(m.Dim), m.Pooling, strconv.Itoa(FormatVersion)},
	)
	return arrow.NewSchema([]arrow.Field{
		{Name: ColID, Type: arrow.BinaryTypes.String, Nullable: false},
		{Name: ColStreamSeq, Type: arrow.PrimitiveTypes.Uint64, Nullable: true},
		{Name: ColLength, Type: arrow.PrimitiveTypes.Int32, Nullable: true},
		{Name: ColTruncated, Type: arrow.FixedWidthTypes.Boolean, Nullable: true},
		{Name: ColEmbedding, Type: embeddingType(m.Dim), Nullable: true},
	}, &md)
}

// embeddingType is the type of the embedding column for dimension dim.
func embeddingType(dim int) *arrow.FixedSizeListType {
	return arrow.FixedSizeListOfField(int32(dim), arrow.Field{Name: "item", Type: arrow.PrimitiveTypes.Float32, Nullable: true})
}

// metaFromSchema recovers the Meta of a schema and checks that its columns
// are exactly those of Schema(meta). Errors wrap ErrDecode.
func metaFromSchema(s *arrow.Schema) (Meta, error) {
	m, err := metaFromMetadata(s.Metadata())
	if err != nil {
		return Meta{}, err
	}
	if want := Schema(m); !want.Equal(s) {
		return Meta{}, fmt.Errorf("%w: columns %s do not match the seqembed layout for dim %d", ErrDecode, fieldList(s), m.Dim)
	}
	return m, nil
}

// metaFromMetadata reads and validates the Meta keys. Errors wrap ErrDecode.
func metaFromMetadata(md arrow.Metadata) (Meta, error) {
	get := func(k string) string { v, _ := md.GetValue(k); return v }
	m := Meta{
		Model:       get(MetaKeyModel),
		ModelSHA256: get(MetaKeyModelSHA256),
		Pooling:     get(MetaKeyPooling),
	}
	dim, err := strconv.Atoi(get(MetaKeyDim))
	if err != nil {
		return Meta{}, fmt.Errorf("%w: schema metadata %s=%q is not an integer", ErrDecode, MetaKeyDim, get(MetaKeyDim))
	}
	m.Dim = dim
	if err := m.Validate(); err != nil {
		return Meta{}, fmt.Errorf("%w: schema metadata: %w", ErrDecode, err)
	}
	if v, ok := md.GetValue(MetaKeyVersion); ok && v != strconv.Itoa(FormatVersion) {
		return Meta{}, fmt.Errorf("%w: unsupported %s=%q (want %d)", ErrDecode, MetaKeyVersion, v, FormatVersion)
	}
	return m, nil
}

// fieldList renders a schema's fields compactly for error messages.
func fieldList(s *arrow.Schema) string {
	out := "["
	for i, f := range s.Fields() {
		if i > 0 {
			out += ", "
		}
		out += f.Name + " " + f.Type.String()
	}
	return out + "]"
}
