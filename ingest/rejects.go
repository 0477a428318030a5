package ingest

import (
	"bufio"
	"fmt"
	"os"
	"strconv"
	"strings"
)

// Reject is one record that was not embedded: refused at publish time, or dead-lettered by a
// worker. It is one row of a rejects file.
type Reject struct {
	ID       string // the record's id, "" when it has none
	Reason   string // the reason code (consumer.Reason*)
	Message  string // the full error message
	File     string // the input file, as named in messages ("stdin" for -); "" if unknown
	Line     int    // 1-based line of the record's header; 0 if unknown
	Position int    // 1-based position of the offending residue; 0 if none
}

// RejectsColumns are the columns of a rejects file, in order.
var RejectsColumns = []string{"id", "reason", "message", "file", "line", "position"}

// RejectsFile writes Rejects as tab-separated values: a header line (RejectsColumns), then one
// line per record. Unknown lines and positions are empty; a backslash, tab, newline or carriage
// return inside a value is written as \\, \t, \n or \r, so every record is one line.
type RejectsFile struct {
	f    *os.File
	w    *bufio.Writer
	rows int
}

// CreateRejectsFile creates (or truncates) the rejects file at path and writes its header.
func CreateRejectsFile(path string) (*RejectsFile, error) {
	f, err := os.Create(path)
	if err != nil {
		return nil, fmt.Errorf("ingest: rejects file: %w", err)
	}
	r := &RejectsFile{f: f, w: bufio.NewWriter(f)}
	if _, err := r.w.WriteString(strings.Join(RejectsColumns, "\t") + "\n"); err != nil {
		f.Close()
		return nil, fmt.Errorf("ingest: rejects file %s: %w", path, err)
	}
	return r, nil
}

// Write appends one row.
func (r *RejectsFile) Write(rej Reject) error {
	num := func(n int) string {
		if n <= 0 {
			return ""
		}
		return strconv.Itoa(n)
	}
	row := strings.Join([]string{tsvEscape(rej.ID), tsvEscape(rej.Reason), tsvEscape(rej.Message), tsvEscape(rej.File),
		num(rej.Line), num(rej.Position)}, "\t") + "\n"
	if _, err := r.w.WriteString(row); err != nil {
		return fmt.Errorf("ingest: rejects file %s: %w", r.f.Name(), err)
	}
	r.rows++
	return nil
}

// Rows is the number of rows written (the header not counted).
func (r *RejectsFile) Rows() int { return r.rows }

// Path is the file's path.
func (r *RejectsFile) Path() string { return r.f.Name() }

// Close flushes and closes the file.
func (r *RejectsFile) Close() error {
	err := r.w.Flush()
	if cerr := r.f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("ingest: rejects file %s: %w", r.f.Name(), err)
	}
	return nil
}

var tsvEscaper = strings.NewReplacer(`\`, `\\`, "\t", `\t`, "\n", `\n`, "\r", `\r`)

func tsvEscape(s string) string { return tsvEscaper.Replace(s) }
