package arrowout

import (
	"fmt"
	"strconv"
	"strings"

	"github.com/apache/arrow-go/v18/arrow"
	"github.com/apache/arrow-go/v18/arrow/array"
	"github.com/apache/arrow-go/v18/arrow/memory"
)

// Output poolings of the extra output columns (Meta.Outputs), named as the model's graph outputs:
// mean_lN and bos_lN are fixed_size_list<float32>[dim] (the mean over residues, the <cls> row, of
// representation layer N), residues_lN is list<fixed_size_list<float32 or float16>[dim]> (one
// entry per residue, Length of them). The last layer's mean is the embedding column.
const (
	PoolMean       = "mean"
	PoolBOS        = "bos"
	PoolPerResidue = "per-residue"
)

// Schema metadata keys of layout version 3 (streams with extra outputs): the extra output
// columns' names, representation layers and poolings (comma-separated, in column order) and the
// per-residue columns' element type.
const (
	MetaKeyOutputs       = "seqembed.outputs"
	MetaKeyLayers        = "seqembed.layers"
	MetaKeyPoolings      = "seqembed.poolings"
	MetaKeyResiduesDType = "seqembed.residues_dtype"
)

// OutputColumn is one extra output column of a Meta.
type OutputColumn struct {
	Name    string
	Layer   int
	Pooling string
}

// ParseOutputColumn reads an output's graph name: mean_lN, bos_lN or residues_lN.
func ParseOutputColumn(name string) (OutputColumn, error) {
	for prefix, pooling := range map[string]string{"mean_l": PoolMean, "bos_l": PoolBOS, "residues_l": PoolPerResidue} {
		if rest, ok := strings.CutPrefix(name, prefix); ok {
			n, err := strconv.Atoi(rest)
			if err != nil || n < 0 || strconv.Itoa(n) != rest {
				break
			}
			return OutputColumn{Name: name, Layer: n, Pooling: pooling}, nil
		}
	}
	return OutputColumn{}, fmt.Errorf("%w: output column %q: want mean_lN, bos_lN or residues_lN", ErrOption, name)
}

// OutputColumns are m's extra output columns (Meta.Outputs), in order.
func (m Meta) OutputColumns() ([]OutputColumn, error) {
	if m.Outputs == "" {
		return nil, nil
	}
	var cols []OutputColumn
	seen := map[string]bool{}
	for _, name := range strings.Split(m.Outputs, ",") {
		c, err := ParseOutputColumn(name)
		if err != nil {
			return nil, err
		}
		if seen[name] {
			return nil, fmt.Errorf("%w: output column %q given twice", ErrOption, name)
		}
		seen[name] = true
		cols = append(cols, c)
	}
	return cols, nil
}

// mustOutputColumns is OutputColumns for a validated Meta.
func (m Meta) mustOutputColumns() []OutputColumn {
	cols, err := m.OutputColumns()
	if err != nil {
		panic(err)
	}
	return cols
}

// layoutVersion is the layout m's streams are written in: 2, or 3 with extra outputs.
func (m Meta) layoutVersion() int {
	if m.Outputs != "" {
		return OutputsVersion
	}
	return FormatVersion
}

// residueItem is the element type of m's per-residue columns.
func (m Meta) residueItem() arrow.DataType {
	if m.ResiduesFP16 {
		return arrow.FixedWidthTypes.Float16
	}
	return arrow.PrimitiveTypes.Float32
}

// outputFields are the extra output columns' fields.
func outputFields(m Meta) []arrow.Field {
	var fs []arrow.Field
	for _, c := range m.mustOutputColumns() {
		t := arrow.DataType(embeddingType(m.Dim))
		if c.Pooling == PoolPerResidue {
			t = arrow.ListOfField(arrow.Field{Name: "item", Type: arrow.FixedSizeListOfField(int32(m.Dim),
				arrow.Field{Name: "item", Type: m.residueItem(), Nullable: true}), Nullable: true})
		}
		fs = append(fs, arrow.Field{Name: c.Name, Type: t, Nullable: true})
	}
	return fs
}

// outputMetadata are the version-3 metadata keys and values of m.
func outputMetadata(m Meta) (keys, vals []string) {
	var layers, poolings []string
	for _, c := range m.mustOutputColumns() {
		layers, poolings = append(layers, strconv.Itoa(c.Layer)), append(poolings, c.Pooling)
	}
	dt := "float32"
	if m.ResiduesFP16 {
		dt = "float16"
	}
	return []string{MetaKeyOutputs, MetaKeyLayers, MetaKeyPoolings, MetaKeyResiduesDType},
		[]string{m.Outputs, strings.Join(layers, ","), strings.Join(poolings, ","), dt}
}

// OutputData is one extra output of a Batch (Meta.Outputs' order). Pooled outputs (mean_lN,
// bos_lN): F32 holds rows × dim values. Per-residue outputs (residues_lN, PerResidue): the rows'
// residues one after another, Lengths[i] × dim values for row i, in F32, or in F16 (IEEE half
// bits) when Meta.ResiduesFP16.
type OutputData struct {
	PerResidue bool
	F32        []float32
	F16        []uint16
}

// residueOffset is the first residue of row r in b's per-residue outputs.
func (b *Batch) residueOffset(r int) int {
	n := 0
	for _, l := range b.Lengths[:r] {
		n += int(l)
	}
	return n
}

// validateOutputs checks b's extra outputs against m's columns. Errors wrap ErrInvalidBatch.
func (b *Batch) validateOutputs(m Meta, cols []OutputColumn) error {
	if len(b.Outputs) != len(cols) {
		return fmt.Errorf("%w: batch %d: %d extra outputs, the schema has %d (%s)", ErrInvalidBatch, b.Seq, len(b.Outputs), len(cols), m.Outputs)
	}
	residues := b.residueOffset(len(b.Lengths))
	for k, c := range cols {
		o := b.Outputs[k]
		want, got := b.Rows()*m.Dim, len(o.F32)
		if c.Pooling == PoolPerResidue {
			want = residues * m.Dim
			if m.ResiduesFP16 {
				got = len(o.F16)
			}
		}
		if o.PerResidue != (c.Pooling == PoolPerResidue) || got != want {
			return fmt.Errorf("%w: batch %d: output %s has %d values (per-residue %v), want %d", ErrInvalidBatch, b.Seq, c.Name, got, o.PerResidue, want)
		}
	}
	return nil
}

// outputArrays are the extra output columns of rows [lo,hi) of b as zero-copy views; offsets is
// scratch for the list offsets.
func (e *Encoder) outputArrays(b *Batch, lo, hi int) []arrow.ArrayData {
	wrap := memory.NewBufferBytes
	n, dim := hi-lo, e.dim
	var out []arrow.ArrayData
	first, last := 0, 0
	if e.residueCols > 0 {
		first = b.residueOffset(lo)
		e.offsets = append(e.offsets[:0], 0)
		for _, l := range b.Lengths[lo:hi] {
			e.offsets = append(e.offsets, e.offsets[len(e.offsets)-1]+l)
		}
		last = first + int(e.offsets[n])
	}
	for k, c := range e.cols {
		var o OutputData // none in an empty batch
		if k < len(b.Outputs) {
			o = b.Outputs[k]
		}
		f := e.schema.Field(firstOutputField + k)
		if c.Pooling != PoolPerResidue {
			vals := array.NewData(arrow.PrimitiveTypes.Float32, n*dim,
				[]*memory.Buffer{nil, wrap(arrow.Float32Traits.CastToBytes(o.F32[lo*dim : hi*dim]))}, nil, 0, 0)
			out = append(out, array.NewData(f.Type, n, []*memory.Buffer{nil}, []arrow.ArrayData{vals}, 0, 0))
			vals.Release()
			continue
		}
		out = append(out, perResidueList(f.Type.(*arrow.ListType), o.residueBytes(e.meta.ResiduesFP16, first*dim, last*dim), e.offsets))
	}
	return out
}

// residueBytes are values [lo,hi) of a per-residue output as bytes: F16's when fp16, else F32's.
func (o OutputData) residueBytes(fp16 bool, lo, hi int) []byte {
	if fp16 {
		return arrow.Uint16Traits.CastToBytes(o.F16[lo:hi])
	}
	return arrow.Float32Traits.CastToBytes(o.F32[lo:hi])
}

// perResidueList is a per-residue column of type t (list<fixed_size_list<item>[dim]>) with
// len(offsets)-1 rows, row i holding residues offsets[i] to offsets[i+1] (offsets[0] is 0) of
// vals, the residues' item values as bytes: zero-copy views of vals and offsets. The encoder's
// columns, its row slices and the sink's joined rows are all made here. The caller releases it.
func perResidueList(t *arrow.ListType, vals []byte, offsets []int32) arrow.ArrayData {
	fsl := t.Elem().(*arrow.FixedSizeListType)
	residues := int(offsets[len(offsets)-1])
	items := array.NewData(fsl.Elem(), residues*int(fsl.Len()), []*memory.Buffer{nil, memory.NewBufferBytes(vals)}, nil, 0, 0)
	rows := array.NewData(fsl, residues, []*memory.Buffer{nil}, []arrow.ArrayData{items}, 0, 0)
	items.Release()
	d := array.NewData(t, len(offsets)-1, []*memory.Buffer{nil, memory.NewBufferBytes(arrow.Int32Traits.CastToBytes(offsets))},
		[]arrow.ArrayData{rows}, 0, 0)
	rows.Release()
	return d
}

// firstOutputField is the field index of the first extra output column (layout version 3:
// version 2's ten columns, then chunks).
const firstOutputField = 11

// chunksField is the field index of the chunks column (layout version 3).
const chunksField = 10

// appendOutputs appends row i's chunks and extra output columns of c to the builders of rb
// (fields 10 on) when c is of layout version 3.
func appendOutputs(rb *array.RecordBuilder, c columns, i int) {
	if c.chunks == nil {
		return
	}
	rb.Field(chunksField).(*array.Int32Builder).Append(c.chunks.Value(i))
	for k, col := range c.extra {
		switch a := col.(type) {
		case *array.FixedSizeList:
			b := rb.Field(firstOutputField + k).(*array.FixedSizeListBuilder)
			lo, hi := a.ValueOffsets(i)
			b.Append(true)
			b.ValueBuilder().(*array.Float32Builder).AppendValues(a.ListValues().(*array.Float32).Float32Values()[lo:hi], nil)
		case *array.List:
			b := rb.Field(firstOutputField + k).(*array.ListBuilder)
			rowsB := b.ValueBuilder().(*array.FixedSizeListBuilder)
			lo, hi := a.ValueOffsets(i)
			rows := a.ListValues().(*array.FixedSizeList)
			b.Append(true)
			if hi == lo {
				continue
			}
			vlo, _ := rows.ValueOffsets(int(lo))
			_, vhi := rows.ValueOffsets(int(hi) - 1)
			for range hi - lo {
				rowsB.Append(true)
			}
			switch v := rows.ListValues().(type) {
			case *array.Float32:
				rowsB.ValueBuilder().(*array.Float32Builder).AppendValues(v.Float32Values()[vlo:vhi], nil)
			case *array.Float16:
				rowsB.ValueBuilder().(*array.Float16Builder).AppendValues(v.Values()[vlo:vhi], nil)
			}
		}
	}
}
