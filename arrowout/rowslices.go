package arrowout

import (
	"fmt"
	"slices"
	"sort"
	"strconv"
	"strings"

	"github.com/apache/arrow-go/v18/arrow"
	"github.com/apache/arrow-go/v18/arrow/array"
	"github.com/apache/arrow-go/v18/arrow/memory"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// RowSlice is what HeaderResidues says of a message: its one row holds residues [Lo,Hi) of the
// row's Length in its per-residue columns.
type RowSlice struct{ Lo, Hi, Length int }

// ParseRowSlice reads a HeaderResidues value, "<lo>-<hi>/<length>" with 0 <= lo < hi <= length.
func ParseRowSlice(v string) (RowSlice, error) {
	rng, length, ok := strings.Cut(v, "/")
	lo, hi, ok2 := strings.Cut(rng, "-")
	var s RowSlice
	var e1, e2, e3 error
	s.Lo, e1 = strconv.Atoi(lo)
	s.Hi, e2 = strconv.Atoi(hi)
	s.Length, e3 = strconv.Atoi(length)
	if !ok || !ok2 || e1 != nil || e2 != nil || e3 != nil || s.Lo < 0 || s.Hi <= s.Lo || s.Hi > s.Length {
		return RowSlice{}, fmt.Errorf("%w: %s %q: want <lo>-<hi>/<length> with 0 <= lo < hi <= length", ErrDecode, HeaderResidues, v)
	}
	return s, nil
}

// RowSliceGroup is the part of a row slice's Nats-Msg-Id that its row's other slices share (the
// id up to the part number): with the row's stream_seq it names the row being joined.
func RowSliceGroup(h nats.Header) string {
	id := h.Get(jetstream.MsgIDHeader)
	if i := strings.LastIndexByte(id, ':'); i >= 0 {
		return id[:i]
	}
	return id
}

// partialRow is a row whose slices are arriving: the first slice's message (its other columns),
// the per-residue values gathered so far, and which residues they cover.
type partialRow struct {
	first   []byte   // the first slice's IPC stream (a copy)
	id, sha string   // its identity, which every slice must repeat
	vals    [][]byte // per extra output column (per-residue ones only): length × dim values
	covered []bool   // per residue
	left    int      // residues not covered yet
}

// WriteSlice takes one row slice (a message with HeaderResidues: sl, and group from
// RowSliceGroup) and, once the row's slices cover all its residues, adds the joined row as
// WriteIPC adds a row (deduplicated by identity). Slices may come in any order and more than
// once. It returns what WriteIPC returns for the joined row (0, 0 before that). A slice that
// disagrees with its row's other slices, or is not a slice of a per-residue row, fails with
// ErrDecode.
func (s *fileSink) WriteSlice(data []byte, group string, sl RowSlice) (added, dups int, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.writable(); err != nil {
		return 0, 0, err
	}
	_, err = readStream(data, memory.DefaultAllocator, func(m Meta, c columns) error {
		if err := s.accept(m); err != nil {
			return err
		}
		a, d, err := s.addSlice(m, c, data, group, sl)
		added, dups = added+a, dups+d
		return err
	})
	if err == nil {
		s.msgs++
	}
	return added, dups, err
}

// addSlice is WriteSlice for the decoded record c of data. Caller holds s.mu.
func (s *fileSink) addSlice(m Meta, c columns, data []byte, group string, sl RowSlice) (added, dups int, err error) {
	bad := func(format string, args ...any) error {
		return fmt.Errorf("%w: row slice %s residues [%d,%d) of %d: %s", ErrDecode, group, sl.Lo, sl.Hi, sl.Length, fmt.Sprintf(format, args...))
	}
	if c.len() != 1 {
		return 0, 0, bad("%d rows, a row slice has 1", c.len())
	}
	if got := int(c.length.Value(0)); got != sl.Length {
		return 0, 0, bad("the row's length column is %d", got)
	}
	sha, _, _, _, _ := c.meta(0)
	key := group + "/" + strconv.FormatUint(c.seq.Value(0), 10)
	pr := s.partial[key]
	if pr == nil {
		pr = &partialRow{first: slices.Clone(data), id: strings.Clone(c.id.Value(0)), sha: strings.Clone(sha),
			vals: make([][]byte, len(c.extra)), covered: make([]bool, sl.Length), left: sl.Length}
	} else if pr.id != c.id.Value(0) || pr.sha != sha || len(pr.covered) != sl.Length {
		return 0, 0, bad("id %q (seq_sha256 %.12s, %d residues) where its first slice has %q (%.12s, %d)",
			c.id.Value(0), sha, sl.Length, pr.id, pr.sha, len(pr.covered))
	}
	perResidue := 0
	for k, col := range c.extra {
		l, ok := col.(*array.List)
		if !ok {
			continue
		}
		perResidue++
		lo, hi := l.ValueOffsets(0)
		if int(hi-lo) != sl.Hi-sl.Lo {
			return 0, 0, bad("column %s has %d residues", m.mustOutputColumns()[k].Name, hi-lo)
		}
		rows := l.ListValues().(*array.FixedSizeList)
		vlo, _ := rows.ValueOffsets(int(lo))
		_, vhi := rows.ValueOffsets(int(hi) - 1)
		var b []byte
		switch v := rows.ListValues().(type) {
		case *array.Float32:
			b = arrow.Float32Traits.CastToBytes(v.Float32Values()[vlo:vhi])
		case *array.Float16:
			b = arrow.Float16Traits.CastToBytes(v.Values()[vlo:vhi])
		}
		per := len(b) / (sl.Hi - sl.Lo) // bytes per residue
		if pr.vals[k] == nil {
			pr.vals[k] = make([]byte, per*sl.Length)
		}
		copy(pr.vals[k][sl.Lo*per:], b)
	}
	if perResidue == 0 {
		return 0, 0, bad("the stream has no per-residue column")
	}
	for i := sl.Lo; i < sl.Hi; i++ {
		if !pr.covered[i] {
			pr.covered[i] = true
			pr.left--
		}
	}
	if pr.left > 0 {
		s.partial[key] = pr
		return 0, 0, nil
	}
	delete(s.partial, key)
	return s.addJoined(pr)
}

// addJoined adds the row pr gathered: its first slice's columns with the per-residue columns
// replaced by all its residues. Caller holds s.mu.
func (s *fileSink) addJoined(pr *partialRow) (added, dups int, err error) {
	_, err = readStream(pr.first, memory.DefaultAllocator, func(_ Meta, c columns) error {
		offsets := []int32{0, int32(len(pr.covered))}
		var made []arrow.Array
		defer func() {
			for _, a := range made {
				a.Release()
			}
		}()
		extra := slices.Clone(c.extra)
		for k, col := range c.extra {
			l, ok := col.(*array.List)
			if !ok {
				continue
			}
			d := perResidueList(l.DataType().(*arrow.ListType), pr.vals[k], offsets)
			extra[k] = array.MakeFromData(d)
			d.Release()
			made = append(made, extra[k])
		}
		c.extra = extra
		a, d, err := s.appendColumns(c)
		added, dups = a, d
		return err
	})
	return added, dups, err
}

// incomplete are the rows some of whose slices arrived but not all, and whose identity no
// complete copy brought (a slice set cut short by a crash and republished whole is no loss):
// "id (stream seq N: k of L residues)", sorted. Caller holds s.mu.
func (s *fileSink) incomplete() []string {
	var out []string
	for key, pr := range s.partial {
		if dup, _, _ := s.seenAs(pr.id, pr.sha); dup {
			continue
		}
		seq := key[strings.LastIndexByte(key, '/')+1:]
		out = append(out, fmt.Sprintf("%s (stream seq %s: %d of %d residues)", pr.id, seq, len(pr.covered)-pr.left, len(pr.covered)))
	}
	sort.Strings(out)
	return out
}

// Incomplete is how many rows are waiting for slices (see WriteSlice) that no complete copy of
// the same record replaced.
func (s *fileSink) Incomplete() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.incomplete())
}
