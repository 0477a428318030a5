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

// Column names of Schema, in order. The first five are the version-1 layout; version 2 appends
// the record's identity and provenance after them, so a reader of version 1 by position still
// finds its columns.
const (
	ColID        = "id"
	ColStreamSeq = "stream_seq"
	ColLength    = "length"
	ColTruncated = "truncated"
	ColEmbedding = "embedding"
	// Version 2.
	ColSeqSHA256    = "seq_sha256"
	ColDescription  = "description"
	ColInputLength  = "input_length"
	ColStopStripped = "stop_stripped"
	ColInputIndex   = "input_index"
	// Version 3.
	ColChunks = "chunks"
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
// layout changes. Version 1 had the first five columns; version 2 added
// seq_sha256, description, input_length, stop_stripped and input_index.
// Version 3 (OutputsVersion) is written for models with extra outputs only.
// Decoding reads all three (rows of version 1 get the "unknown" values, see Row).
const FormatVersion = 2

// OutputsVersion is the layout of streams of a Meta with extra outputs (Meta.Outputs): version
// 2's columns, chunks (int32: the windows the row's sequence was embedded in, 1 unless it was
// chunked), then one column per extra output, and the metadata keys MetaKeyOutputs,
// MetaKeyLayers, MetaKeyPoolings and MetaKeyResiduesDType after seqembed.version. Chunked rows
// (--overlength chunk) need per-residue outputs, so they are always in version 3; version 2
// has no chunks column and its streams are unchanged.
const OutputsVersion = 3

// maxVersion is the newest layout the decoder reads.
const maxVersion = OutputsVersion

// minVersion is the oldest layout the decoder reads.
const minVersion = 1

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
	// Outputs names the extra output columns, comma-separated in column order (mean_lN, bos_lN,
	// residues_lN: see OutputColumn); "" for none (layout version 2).
	Outputs string
	// ResiduesFP16: the per-residue columns hold float16 (default float32).
	ResiduesFP16 bool
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
	_, err := m.OutputColumns()
	return err
}

// String names the model for messages: "esm2-tiny (dim 64, model sha256 636658eb3701…)".
func (m Meta) String() string {
	sha := m.ModelSHA256
	if len(sha) > 12 {
		sha = sha[:12] + "…"
	}
	if sha == "" {
		sha = "none"
	}
	return fmt.Sprintf("%s (dim %d, model sha256 %s)", m.Model, m.Dim, sha)
}

// Schema returns the Arrow schema of seqembed output for m (layout version
// FormatVersion, 2):
//
//	id             utf8, not null
//	stream_seq     uint64  (input JetStream stream sequence)
//	length         int32   (residues embedded, after truncation)
//	truncated      bool
//	embedding      fixed_size_list<item: float32>[m.Dim]
//	seq_sha256     utf8    (lowercase hex SHA-256 of the whole sequence as the worker received it)
//	description    utf8    (the FASTA header text after the id, at most 1 KiB; "" when none)
//	input_length   int32   (residues before truncation)
//	stop_stripped  bool    (the publisher removed a trailing '*')
//	input_index    int64   (0-based position of the record in its input; -1 when unknown)
//
// with schema metadata seqembed.model, seqembed.model_sha256, seqembed.dim,
// seqembed.pooling and seqembed.version (in that order). Only id is declared
// not null; the encoder never writes nulls in any column. In pyarrow terms the
// embedding type is pa.list_(pa.float32(), m.Dim).
//
// Schema panics if m.Dim is out of range; call m.Validate first when m is
// untrusted. Each call returns a new schema.
//
// A Meta with extra outputs (Outputs) gets layout version 3: after input_index the column
//
//	chunks         int32   (windows the sequence was embedded in: 1, or more for --overlength chunk)
//
// then one column per output, and metadata keys seqembed.outputs, seqembed.layers, seqembed.poolings and
// seqembed.residues_dtype after seqembed.version.
func Schema(m Meta) *arrow.Schema { return schemaVersion(m, m.layoutVersion()) }

// schemaVersion is the schema of layout version v (1, 2 or 3) for m.
func schemaVersion(m Meta, v int) *arrow.Schema {
	keys := []string{MetaKeyModel, MetaKeyModelSHA256, MetaKeyDim, MetaKeyPooling, MetaKeyVersion}
	vals := []string{m.Model, m.ModelSHA256, strconv.Itoa(m.Dim), m.Pooling, strconv.Itoa(v)}
	if v >= 3 {
		k, x := outputMetadata(m)
		keys, vals = append(keys, k...), append(vals, x...)
	}
	md := arrow.NewMetadata(keys, vals)
	fields := []arrow.Field{
		{Name: ColID, Type: arrow.BinaryTypes.String, Nullable: false},
		{Name: ColStreamSeq, Type: arrow.PrimitiveTypes.Uint64, Nullable: true},
		{Name: ColLength, Type: arrow.PrimitiveTypes.Int32, Nullable: true},
		{Name: ColTruncated, Type: arrow.FixedWidthTypes.Boolean, Nullable: true},
		{Name: ColEmbedding, Type: embeddingType(m.Dim), Nullable: true},
	}
	if v >= 2 {
		fields = append(fields,
			arrow.Field{Name: ColSeqSHA256, Type: arrow.BinaryTypes.String, Nullable: true},
			arrow.Field{Name: ColDescription, Type: arrow.BinaryTypes.String, Nullable: true},
			arrow.Field{Name: ColInputLength, Type: arrow.PrimitiveTypes.Int32, Nullable: true},
			arrow.Field{Name: ColStopStripped, Type: arrow.FixedWidthTypes.Boolean, Nullable: true},
			arrow.Field{Name: ColInputIndex, Type: arrow.PrimitiveTypes.Int64, Nullable: true},
		)
	}
	if v >= 3 {
		fields = append(fields, arrow.Field{Name: ColChunks, Type: arrow.PrimitiveTypes.Int32, Nullable: true})
		fields = append(fields, outputFields(m)...)
	}
	return arrow.NewSchema(fields, &md)
}

// embeddingType is the type of the embedding column for dimension dim.
func embeddingType(dim int) *arrow.FixedSizeListType {
	return arrow.FixedSizeListOfField(int32(dim), arrow.Field{Name: "item", Type: arrow.PrimitiveTypes.Float32, Nullable: true})
}

// metaFromSchema recovers the Meta and layout version of a schema and checks
// that its columns are exactly those of that version's layout. Errors wrap
// ErrDecode.
func metaFromSchema(s *arrow.Schema) (Meta, int, error) {
	m, v, err := metaFromMetadata(s.Metadata())
	if err != nil {
		return Meta{}, 0, err
	}
	if v == 0 { // no version key: whichever layout the columns are
		v = minVersion
		if s.NumFields() == schemaVersion(m, 2).NumFields() {
			v = 2
		}
	}
	if (v >= 3) != (m.Outputs != "") {
		return Meta{}, 0, fmt.Errorf("%w: layout version %d with extra outputs %q", ErrDecode, v, m.Outputs)
	}
	want := schemaVersion(m, v)
	if !want.Equal(s) {
		return Meta{}, 0, fmt.Errorf("%w: columns %s do not match the seqembed layout version %d for dim %d", ErrDecode, fieldList(s), v, m.Dim)
	}
	return m, v, nil
}

// metaFromMetadata reads and validates the Meta keys, and the layout version
// (0 when the key is absent). Errors wrap ErrDecode.
func metaFromMetadata(md arrow.Metadata) (Meta, int, error) {
	get := func(k string) string { v, _ := md.GetValue(k); return v }
	m := Meta{
		Model:       get(MetaKeyModel),
		ModelSHA256: get(MetaKeyModelSHA256),
		Pooling:     get(MetaKeyPooling),
		Outputs:     get(MetaKeyOutputs),
	}
	switch dt := get(MetaKeyResiduesDType); dt {
	case "", "float32":
	case "float16":
		m.ResiduesFP16 = true
	default:
		return Meta{}, 0, fmt.Errorf("%w: schema metadata %s=%q (want float32 or float16)", ErrDecode, MetaKeyResiduesDType, dt)
	}
	dim, err := strconv.Atoi(get(MetaKeyDim))
	if err != nil {
		return Meta{}, 0, fmt.Errorf("%w: schema metadata %s=%q is not an integer", ErrDecode, MetaKeyDim, get(MetaKeyDim))
	}
	m.Dim = dim
	if err := m.Validate(); err != nil {
		return Meta{}, 0, fmt.Errorf("%w: schema metadata: %w", ErrDecode, err)
	}
	v := 0
	if s, ok := md.GetValue(MetaKeyVersion); ok {
		if v, err = strconv.Atoi(s); err != nil || v < minVersion || v > maxVersion {
			return Meta{}, 0, fmt.Errorf("%w: unsupported %s=%q (this build reads %d to %d)", ErrDecode, MetaKeyVersion, s, minVersion, maxVersion)
		}
	}
	return m, v, nil
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
