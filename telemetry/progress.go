package telemetry

import (
	"fmt"
	"io"
	"sync"
	"time"

	"github.com/schollz/progressbar/v3"
	"golang.org/x/term"
)

// progressThrottle bounds how often the bar is redrawn.
const progressThrottle = 100 * time.Millisecond

// ProgressLogInterval is how often a Progress that is not drawn on a terminal writes its line.
const ProgressLogInterval = 5 * time.Second

// Progress is the progress indicator of batch (file) runs.
//
// On a terminal it is a bar redrawn in place: with a known total it shows count, rate and ETA;
// with an unknown total (total < 0) it is a spinner showing count and rate. Anywhere else (a
// file, a pipe, a CI log) redrawing in place would pile up as one long line of carriage returns,
// so it writes one plain line every ProgressLogInterval ("embed: 1200/5000 records (24%), 350
// rec/s, ETA 11s") and a last one on Finish. When disabled, when w is nil or when total is 0 it
// does nothing. Rendering is best effort: write errors are ignored. All methods are safe for
// concurrent use, and a nil *Progress is a valid no-op.
type Progress struct {
	bar  *progressbar.ProgressBar // on a terminal
	line *lineProgress            // elsewhere
}

// NewProgress returns a progress indicator for total items (-1 if unknown) labelled desc, written
// to w (typically os.Stderr, not owned): a bar if w is a terminal, else plain lines. Pass
// enabled=false, e.g. for --quiet or when logs are JSON, for a no-op.
func NewProgress(total int64, desc string, w io.Writer, enabled bool) *Progress {
	return newProgress(total, desc, w, enabled, isTerminal(w), ProgressLogInterval)
}

// isTerminal reports whether w is a file open on a terminal.
func isTerminal(w io.Writer) bool {
	f, ok := w.(interface{ Fd() uintptr })
	return ok && term.IsTerminal(int(f.Fd()))
}

func newProgress(total int64, desc string, w io.Writer, enabled, terminal bool, every time.Duration) *Progress {
	if !enabled || w == nil || total == 0 {
		return &Progress{}
	}
	if total < 0 {
		total = -1
	}
	if !terminal {
		now := time.Now()
		return &Progress{line: &lineProgress{w: w, desc: desc, total: total, every: every, start: now, last: now}}
	}
	opts := []progressbar.Option{
		progressbar.OptionSetWriter(w),
		progressbar.OptionSetDescription(desc),
		progressbar.OptionSetWidth(30),
		progressbar.OptionShowCount(),
		progressbar.OptionShowIts(),
		progressbar.OptionSetItsString("rec"),
		progressbar.OptionThrottle(progressThrottle),
		progressbar.OptionSpinnerType(14),
		// The spinner is advanced by Add instead of by the library's
		// background ticker, whose unlocked state reads race with Add.
		progressbar.OptionSetSpinnerChangeInterval(0),
		progressbar.OptionOnCompletion(func() { _, _ = fmt.Fprintln(w) }),
	}
	if total > 0 {
		opts = append(opts, progressbar.OptionSetPredictTime(true), progressbar.OptionShowElapsedTimeOnFinish())
	} else {
		opts = append(opts, progressbar.OptionSetPredictTime(false), progressbar.OptionSetElapsedTime(true))
	}
	return &Progress{bar: progressbar.NewOptions64(total, opts...)}
}

// Add advances the indicator by n items (0 lets a plain-line indicator write its periodic line
// while nothing advances).
func (p *Progress) Add(n int) {
	switch {
	case p == nil:
	case p.bar != nil:
		_ = p.bar.Add(n)
	case p.line != nil:
		p.line.add(int64(n))
	}
}

// Finish completes the indicator (filling the bar, or writing the last line) and ends its line.
// Calling it more than once is harmless.
func (p *Progress) Finish() {
	switch {
	case p == nil:
	case p.bar != nil:
		if !p.bar.IsFinished() {
			_ = p.bar.Finish()
		}
	case p.line != nil:
		p.line.finish()
	}
}

// lineProgress is Progress off a terminal: a plain line every `every`, and one on finish.
type lineProgress struct {
	mu          sync.Mutex
	w           io.Writer
	desc        string
	total, n    int64
	every       time.Duration
	start, last time.Time
	done        bool
}

func (l *lineProgress) add(n int64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.done {
		return
	}
	l.n += n
	if now := time.Now(); now.Sub(l.last) >= l.every {
		l.last = now
		l.write(now, false)
	}
}

func (l *lineProgress) finish() {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.done {
		return
	}
	l.done = true
	l.write(time.Now(), true)
}

// write writes one line: count, share of the total, rate and ETA (or elapsed time when final).
func (l *lineProgress) write(now time.Time, final bool) {
	elapsed := now.Sub(l.start)
	rate := 0.0
	if s := elapsed.Seconds(); s > 0 {
		rate = float64(l.n) / s
	}
	msg := fmt.Sprintf("%s: %d records", l.desc, l.n)
	if l.total > 0 {
		msg = fmt.Sprintf("%s: %d/%d records (%d%%)", l.desc, l.n, l.total, 100*l.n/l.total)
	}
	switch {
	case final:
		msg += fmt.Sprintf(" in %s, %.0f rec/s", roundDuration(elapsed), rate)
	case l.total > 0 && rate > 0 && l.n < l.total:
		eta := time.Duration(float64(l.total-l.n) / rate * float64(time.Second))
		msg += fmt.Sprintf(", %.0f rec/s, ETA %s", rate, roundDuration(eta))
	default:
		msg += fmt.Sprintf(", %.0f rec/s", rate)
	}
	_, _ = fmt.Fprintln(l.w, msg)
}

// roundDuration rounds d for a human: tenths of a second under a minute, else seconds.
func roundDuration(d time.Duration) time.Duration {
	if d < time.Minute {
		return d.Round(100 * time.Millisecond)
	}
	return d.Round(time.Second)
}
