package telemetry

import (
	"fmt"
	"io"
	"time"

	"github.com/schollz/progressbar/v3"
)

// progressThrottle bounds how often the bar is redrawn.
const progressThrottle = 100 * time.Millisecond

// Progress is a terminal progress indicator for batch (file) runs.
//
// With a known total it is a bar showing count, rate and ETA; with an
// unknown total (total < 0) it is a spinner showing count and rate; when
// disabled, when w is nil or when total is 0 it does nothing. Rendering is
// best effort: write errors are ignored. All methods are safe for concurrent
// use, and a nil *Progress is a valid no-op.
type Progress struct {
	bar *progressbar.ProgressBar // nil for the no-op indicator
}

// NewProgress returns a progress indicator for total items (-1 if unknown)
// labelled desc, drawn on w (typically os.Stderr, not owned). Pass
// enabled=false, e.g. when w is not a terminal or logs are JSON, for a no-op.
func NewProgress(total int64, desc string, w io.Writer, enabled bool) *Progress {
	if !enabled || w == nil || total == 0 {
		return &Progress{}
	}
	if total < 0 {
		total = -1
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

// Add advances the indicator by n items.
func (p *Progress) Add(n int) {
	if p == nil || p.bar == nil {
		return
	}
	_ = p.bar.Add(n)
}

// Finish completes the indicator (filling the bar) and ends its line.
// Calling it more than once is harmless.
func (p *Progress) Finish() {
	if p == nil || p.bar == nil || p.bar.IsFinished() {
		return
	}
	_ = p.bar.Finish()
}
