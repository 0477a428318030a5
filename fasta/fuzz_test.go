package fasta

import (
	"bytes"
	"errors"
	"testing"
)

const asciiSpace = " \t\n\v\f\r"

// FuzzReader checks that the Reader never panics or loops, that records obey
// the documented invariants, and, for plain input, that the results match a
// simple line-splitting reference parser under both the default settings and
// a tiny buffer and record limit (which exercise line continuation and
// skipping oversized records).
func FuzzReader(f *testing.F) {
	f.Add([]byte(">sp|P1|A desc\nMKV\nLLA\n>P2\nGG"))
	f.Fuzz(func(t *testing.T, data []byte) {
		for _, cfg := range []struct{ max, buf int }{
			{DefaultMaxRecordBytes, defaultBufferSize},
			{8, 16},
		} {
			r, err := NewReader(bytes.NewReader(data), WithMaxRecordBytes(cfg.max), withBufferSize(cfg.buf))
			if err != nil {
				if detect(data) != Plain {
					return
				}
				t.Fatalf("NewReader: %v", err)
			}
			got, final := readAll(t, r)
			for _, it := range got {
				if it.Err != nil {
					continue
				}
				if it.ID == "" || bytes.ContainsAny([]byte(it.ID), asciiSpace) {
					t.Fatalf("bad ID %q", it.ID)
				}
				if bytes.ContainsAny([]byte(it.Seq), asciiSpace) {
					t.Fatalf("whitespace in Seq %q", it.Seq)
				}
				if len(it.Seq) > cfg.max {
					t.Fatalf("Seq of %d bytes exceeds the limit %d", len(it.Seq), cfg.max)
				}
				if string(bytes.Trim([]byte(it.Desc), asciiSpace)) != it.Desc {
					t.Fatalf("untrimmed Desc %q", it.Desc)
				}
			}
			if detect(data) != Plain {
				continue // compressed: no reference
			}
			want, fatal := refParse(data, cfg.max)
			if !equalItems(got, want) {
				t.Fatalf("max=%d buf=%d\n got %+v\nwant %+v", cfg.max, cfg.buf, got, want)
			}
			if fatal != (final != nil) || (final != nil && !errors.Is(final, ErrNoHeader)) {
				t.Fatalf("final error %v, reference fatal=%v", final, fatal)
			}
			if fatal {
				continue
			}
			n, err := countHeaders(mustSource(t, data))
			if err != nil || n != len(got) {
				t.Fatalf("countHeaders = %d, %v; Next produced %d results", n, err, len(got))
			}
		}
	})
}

// refParse is a deliberately naive reference implementation of the format
// documented in the package comment. fatal reports an ErrNoHeader, which is
// the last item.
func refParse(data []byte, max int) (items []item, fatal bool) {
	data = bytes.TrimPrefix(data, utf8BOM)
	lines := bytes.Split(data, []byte("\n"))
	type rec struct {
		line          int
		id, desc      string
		seq           []byte
		headerTooLong bool
		present       bool
	}
	var cur rec
	flush := func() {
		switch {
		case !cur.present:
		case cur.headerTooLong:
			items = append(items, item{ID: cur.id, Err: ErrRecordTooLarge, Line: cur.line})
		case cur.id == "":
			items = append(items, item{Err: ErrEmptyID, Line: cur.line})
		case len(cur.seq) > max:
			items = append(items, item{ID: cur.id, Err: ErrRecordTooLarge, Line: cur.line})
		default:
			items = append(items, item{ID: cur.id, Desc: cur.desc, Seq: string(cur.seq)})
		}
	}
	for i, line := range lines {
		switch {
		case bytes.HasPrefix(line, []byte(">")):
			flush()
			content := line[1:]
			cur = rec{line: i + 1, present: true, headerTooLong: len(content) > max}
			if cur.headerTooLong {
				content = content[:max]
			}
			content = bytes.TrimLeft(content, asciiSpace)
			id, rest := content, []byte(nil)
			if j := bytes.IndexAny(content, asciiSpace); j >= 0 {
				id, rest = content[:j], content[j:]
			}
			cur.id, cur.desc = string(id), string(bytes.Trim(rest, asciiSpace))
		case bytes.HasPrefix(line, []byte(";")):
		case !cur.present:
			if len(bytes.Trim(line, asciiSpace)) > 0 {
				return append(items, item{Err: ErrNoHeader, Line: i + 1}), true
			}
		default:
			for _, c := range line {
				if !bytes.ContainsRune([]byte(asciiSpace), rune(c)) {
					cur.seq = append(cur.seq, c)
				}
			}
		}
	}
	flush()
	return items, false
}
