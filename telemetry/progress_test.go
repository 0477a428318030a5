package telemetry

import (
	"bytes"
	"strings"
	"sync"
	"testing"
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

func TestProgressBar(t *testing.T) {
	var out syncBuffer
	p := NewProgress(100, "embedding", &out, true)
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
	p := NewProgress(-1, "reading", &out, true)
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
