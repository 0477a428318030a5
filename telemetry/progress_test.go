package telemetry

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// syncBuffer is a bytes.Buffer safe for the progress bar's concurrent writes.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// TestProgressBar is the terminal bar (forced: a buffer is no terminal).
func TestProgressBar(t *testing.T) {
	var out syncBuffer
	p := newProgress(100, "embedding", &out, true, true, ProgressLogInterval)
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			for range 25 {
				p.Add(1)
			}
		})
	}
	wg.Wait()
	p.Finish()
	p.Finish()
	s := out.String()
	for _, want := range []string{"embedding", "100/100", "rec/s"} {
		if !strings.Contains(s, want) {
			t.Errorf("output lacks %q: %q", want, s)
		}
	}
	if !strings.HasSuffix(s, "\n") {
		t.Errorf("output does not end its line: %q", s)
	}
}

func TestProgressSpinner(t *testing.T) {
	var out syncBuffer
	p := newProgress(-1, "reading", &out, true, true, ProgressLogInterval)
	for range 10 {
		p.Add(3)
	}
	p.Finish()
	if s := out.String(); !strings.Contains(s, "reading") || !strings.Contains(s, "30") {
		t.Errorf("spinner output = %q", s)
	}
}

func TestProgressNoop(t *testing.T) {
	var out syncBuffer
	for _, p := range []*Progress{
		NewProgress(10, "off", &out, false),
		NewProgress(0, "empty", &out, true),
		NewProgress(10, "nil writer", nil, true),
		nil,
	} {
		p.Add(5)
		p.Finish()
	}
	if s := out.String(); s != "" {
		t.Errorf("disabled progress wrote %q", s)
	}
}

// TestProgressLinesOffTerminal: written to a file, NewProgress writes plain lines, never a
// carriage return; with the default interval a short job writes only its final line.
func TestProgressLinesOffTerminal(t *testing.T) {
	f, err := os.Create(filepath.Join(t.TempDir(), "log"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	p := NewProgress(500, "embed", f, true)
	if p.bar != nil || p.line == nil {
		t.Fatal("a file got the terminal bar")
	}
	for range 500 {
		p.Add(1)
	}
	p.Finish()
	p.Finish()
	data, err := os.ReadFile(f.Name())
	if err != nil {
		t.Fatal(err)
	}
	s := string(data)
	if strings.Contains(s, "\r") || strings.Count(s, "\n") != 1 || !strings.HasPrefix(s, "embed: 500/500 records (100%) in ") ||
		!strings.HasSuffix(s, " rec/s\n") {
		t.Errorf("output %q: want one final line", s)
	}
}

// TestProgressPeriodicLines: every interval a line with count, share, rate and ETA; an unknown
// total gives count and rate.
func TestProgressPeriodicLines(t *testing.T) {
	var out syncBuffer
	p := newProgress(10, "publish", &out, true, false, 0) // a line on every Add
	for range 4 {
		p.Add(1)
	}
	p.Finish()
	lines := strings.Split(strings.TrimSuffix(out.String(), "\n"), "\n")
	if len(lines) != 5 {
		t.Fatalf("%d lines: %q", len(lines), out.String())
	}
	if !strings.HasPrefix(lines[1], "publish: 2/10 records (20%), ") || !strings.Contains(lines[1], " rec/s, ETA ") {
		t.Errorf("line %q", lines[1])
	}
	if !strings.HasPrefix(lines[4], "publish: 4/10 records (40%) in ") {
		t.Errorf("final line %q", lines[4])
	}
	var spin syncBuffer
	q := newProgress(-1, "sink", &spin, true, false, time.Hour)
	q.Add(7)
	q.Finish()
	if s := spin.String(); !strings.HasPrefix(s, "sink: 7 records in ") || strings.Contains(s, "\r") {
		t.Errorf("unknown total: %q", s)
	}
}
