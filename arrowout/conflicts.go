package arrowout

import (
	"bufio"
	"cmp"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
)

// ConflictsColumns are the columns of a conflicts file (WithConflictsFile), in order: one line
// per sequence of each id that was seen with more than one, in input order (by input_index, then
// stream_seq; unknown indexes last), the ids in the input order of their first line.
// input_length and input_index are empty when unknown (-1), seq_sha256 when the row came from a
// version-1 message. A backslash, tab, newline or carriage return inside a value is
// written \\, \t, \n or \r, so every row is one line.
var ConflictsColumns = []string{"id", "seq_sha256", "input_length", "input_index", "stream_seq", "description"}

// conflictBook collects the id conflicts of a sink: per id, its first row and every other
// sequence kept under it.
type conflictBook struct {
	groups []conflictGroup
	byID   map[string]int // id → index in groups
	rows   int            // conflicting rows (the others, not the first rows)
}

type conflictGroup struct {
	id   string
	rows []firstRow // the first row, then the others
}

// add records other as a further sequence of id, whose first row is first.
func (b *conflictBook) add(id string, first, other firstRow) {
	if b.byID == nil {
		b.byID = map[string]int{}
	}
	i, ok := b.byID[id]
	if !ok {
		i = len(b.groups)
		b.byID[id] = i
		b.groups = append(b.groups, conflictGroup{id: id, rows: []firstRow{first}})
	}
	b.groups[i].rows = append(b.groups[i].rows, other)
	b.rows++
}

// writeTemp writes the book as a TSV file (ConflictsColumns) to a temporary file next to path,
// synced and closed, and returns its name (the caller renames it to path).
func (b *conflictBook) writeTemp(path string) (string, error) {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*.tmp")
	if err != nil {
		return "", err
	}
	fail := func(err error) (string, error) {
		f.Close()
		os.Remove(f.Name())
		return "", err
	}
	if err := f.Chmod(0o644); err != nil {
		return fail(err)
	}
	w := bufio.NewWriter(f)
	w.WriteString(strings.Join(ConflictsColumns, "\t") + "\n")
	num := func(n int64) string {
		if n < 0 {
			return ""
		}
		return strconv.FormatInt(n, 10)
	}
	for _, g := range b.sorted() {
		for _, r := range g.rows {
			fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%d\t%s\n", tsvEscape(g.id), tsvEscape(r.sha), num(int64(r.inputLen)), num(r.index),
				r.streamSeq, tsvEscape(r.desc))
		}
	}
	if err := w.Flush(); err != nil {
		return fail(err)
	}
	if err := f.Sync(); err != nil {
		return fail(err)
	}
	if err := f.Close(); err != nil {
		os.Remove(f.Name())
		return "", err
	}
	return f.Name(), nil
}

// sorted returns the groups in input order, each one's rows in input order (see
// ConflictsColumns); the book is not changed.
func (b *conflictBook) sorted() []conflictGroup {
	before := func(x, y firstRow) int {
		switch {
		case (x.index < 0) != (y.index < 0): // unknown last
			return cmp.Compare(y.index, x.index)
		case x.index != y.index:
			return cmp.Compare(x.index, y.index)
		}
		return cmp.Compare(x.streamSeq, y.streamSeq)
	}
	out := make([]conflictGroup, len(b.groups))
	for i, g := range b.groups {
		out[i] = conflictGroup{id: g.id, rows: slices.Clone(g.rows)}
		slices.SortStableFunc(out[i].rows, before)
	}
	slices.SortStableFunc(out, func(x, y conflictGroup) int { return before(x.rows[0], y.rows[0]) })
	return out
}

var tsvEscaper = strings.NewReplacer(`\`, `\\`, "\t", `\t`, "\n", `\n`, "\r", `\r`)

func tsvEscape(s string) string { return tsvEscaper.Replace(s) }
