package main

import (
	"cmp"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"time"

	"github.com/seqembed/seqembed/batcher"
	"github.com/seqembed/seqembed/gpurun"
)

// `seqembed bench --report DIR`: PNG plots of the run's time series and a markdown summary.

// The files a report holds.
const (
	reportThroughput = "throughput.png"
	reportPadding    = "padding.png"
	reportGPU        = "gpu_busy.png"
	reportRows       = "batch_rows.png"
	reportSummary    = "summary.md"
)

// reportPlot draws one PNG of the report at path; ok false (with a note) when there was nothing
// to draw.
type reportPlot struct {
	name string
	draw func(path string, res benchResult, s *benchSeries) (ok bool, note string, err error)
}

// batchPoint is one batch of a bench run.
type batchPoint struct {
	At     time.Time // e2e: when a runner took the batch off the batcher; raw: when its ORT run returned
	Rows   int
	Tokens int // real tokens, CLS and EOS included (batcher.Batch.Tokens)
	Padded int // rows × bucket length
}

// residues is the batch's residues, the count benchResult.Residues sums.
func (p batchPoint) residues() int { return p.Tokens - 2*p.Rows }

func (p batchPoint) efficiency() float64 { return float64(p.Tokens) / float64(max(1, p.Padded)) }

// recordBatchLocked keeps one point per batch while the stats collect (bench only, so a
// long-running worker keeps nothing); the caller holds s.mu.
func (s *workerStats) recordBatchLocked(b *batcher.Batch) {
	if s.collect {
		s.timeline = append(s.timeline, batchPoint{At: time.Now(), Rows: b.Rows, Tokens: b.Tokens, Padded: b.Rows * b.Cols})
	}
}

func (s *workerStats) batchTimeline() []batchPoint {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.timeline)
}

// benchSeries is what a bench run saw over time.
type benchSeries struct {
	Start, End time.Time // the timed part of the run (benchResult.Seconds)
	Batches    []batchPoint
	GPU        []gpurun.GPUSample // NVML samples in [Start, End]; none on the CPU or without NVML
	BatchTime  string             // what a batch's time is, for the summary
}

// e2eSeries is the series of an e2e run from the worker's stats. runJob returns after its
// shutdown, so returned-processing is a little late for the start: the first batch bounds it.
func e2eSeries(st *workerStats, processing time.Duration, returned time.Time) benchSeries {
	s := benchSeries{Batches: st.batchTimeline(), Start: returned.Add(-processing),
		BatchTime: "when a runner took the batch off the batcher (before its run)"}
	for _, b := range s.Batches {
		if b.At.Before(s.Start) {
			s.Start = b.At
		}
	}
	s.End = s.Start.Add(processing)
	return s
}

// samplesIn is the NVML samples taken in [from, to].
func (g *gpuMeter) samplesIn(from, to time.Time) []gpurun.GPUSample {
	g.mu.Lock()
	defer g.mu.Unlock()
	var out []gpurun.GPUSample
	for _, s := range g.samples {
		if !s.Time.Before(from) && !s.Time.After(to) {
			out = append(out, s)
		}
	}
	return out
}

// throughputWindow is 1 s, or a tenth of the run for runs under 10 s (so a short run still
// shows a curve), never under 1 ms.
func throughputWindow(run time.Duration) time.Duration {
	if run >= 10*time.Second {
		return time.Second
	}
	return max(time.Millisecond, (run / 10).Round(time.Millisecond))
}

// throughputWindows bins the batches' residues into windows of w from s.Start and returns
// residues/s per window, as the window's start (seconds) and rate. The last window is divided by
// its own length; one shorter than w/4 is merged into the window before it.
func throughputWindows(s *benchSeries, w time.Duration) (starts, rates []float64) {
	end := s.End
	for _, b := range s.Batches {
		if b.At.After(end) {
			end = b.At
		}
	}
	run := end.Sub(s.Start)
	if run <= 0 || w <= 0 {
		return nil, nil
	}
	n := int((run + w - 1) / w)
	if last := run - time.Duration(n-1)*w; n > 1 && last < w/4 {
		n--
	}
	sums := make([]float64, n)
	for _, b := range s.Batches {
		i := min(n-1, max(0, int(b.At.Sub(s.Start)/w)))
		sums[i] += float64(b.residues())
	}
	for i := range n {
		from := time.Duration(i) * w
		length := w
		if i == n-1 {
			length = run - from
		}
		starts = append(starts, from.Seconds())
		rates = append(rates, sums[i]/length.Seconds())
	}
	return starts, rates
}

// reportMeta is what the summary says beyond benchResult.
type reportMeta struct {
	Date  time.Time
	Input string   // the FASTA file
	Args  []string // bench's arguments
}

// writeBenchReport writes the plots and summary.md into dir (created if need be).
func writeBenchReport(dir string, res benchResult, s *benchSeries, meta reportMeta) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	var errs []error
	plotted, notes := map[string]bool{}, map[string]string{}
	try := func(name string, draw func(string) (bool, string, error)) {
		ok, note, err := draw(filepath.Join(dir, name))
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", name, err))
		}
		plotted[name], notes[name] = ok && err == nil, note
	}
	for _, rp := range reportPlots {
		try(rp.name, func(p string) (bool, string, error) { return rp.draw(p, res, s) })
	}
	if err := errors.Join(errs...); err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(dir, reportSummary), []byte(summaryMarkdown(res, s, meta, plotted, notes)), 0o644)
}

// summaryMarkdown is summary.md: the run, benchResult as a table, and the plots; notes are the
// plots' remarks, or why one was not drawn.
func summaryMarkdown(res benchResult, s *benchSeries, meta reportMeta, plotted map[string]bool, notes map[string]string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "# seqembed bench report\n\n")
	device := res.Device
	if len(s.GPU) > 0 && s.GPU[0].Name != "" {
		device += " (" + s.GPU[0].Name + ")"
	}
	model := res.Model
	if res.DType != "" {
		model += " (" + res.DType + ")"
	}
	b.WriteString("| | |\n| --- | --- |\n")
	row := func(k, v string) { fmt.Fprintf(&b, "| %s | %s |\n", k, strings.ReplaceAll(v, "|", `\|`)) }
	row("date", meta.Date.Format(time.RFC3339))
	row("mode", res.Mode)
	row("device", device)
	row("model", model)
	if meta.Input != "" {
		row("input", "`"+meta.Input+"`")
	}
	if len(meta.Args) > 0 {
		row("command", "`seqembed bench "+strings.Join(meta.Args, " ")+"`")
	}
	row("batch times", s.BatchTime)

	b.WriteString("\n## Result\n\n| field | value |\n| --- | --- |\n")
	v, t := reflect.ValueOf(res), reflect.TypeOf(res)
	for i := range t.NumField() {
		name, _, _ := strings.Cut(t.Field(i).Tag.Get("json"), ",")
		if name == "" || name == "-" {
			name = t.Field(i).Name
		}
		val := fmt.Sprint(v.Field(i).Interface())
		if f, ok := v.Field(i).Interface().(float64); ok {
			val = fmt.Sprintf("%.6g", f)
		}
		if name == "gpu_util" && res.GPUUtil < 0 {
			val = "n/a (no NVML samples)"
		}
		row(name, val)
	}

	b.WriteString("\n## Plots\n")
	plots := []struct{ file, title, caption string }{
		{reportThroughput, "Throughput over time", "Residues per second of the batches in each window; the dashed line is the whole run's rate."},
		{reportPadding, "Batch padding efficiency", "Real tokens / padded tokens (rows × bucket length) per batch; the dashed line is the token-weighted mean (`padding_efficiency`)."},
		{reportGPU, "GPU busy", "NVML utilisation samples (every 200 ms) during the timed part; the dashed line is their mean (`gpu_util`)."},
		{reportRows, "Batch rows", "How many sequences the batches held."},
	}
	for _, p := range plots {
		fmt.Fprintf(&b, "\n### %s\n\n", p.title)
		if !plotted[p.file] {
			fmt.Fprintf(&b, "%s\n", cmp.Or(notes[p.file], "Not plotted."))
			continue
		}
		fmt.Fprintf(&b, "![%s](%s)\n\n%s\n", p.title, p.file, p.caption)
		if notes[p.file] != "" {
			fmt.Fprintf(&b, "\nNote: %s\n", notes[p.file])
		}
	}
	return b.String()
}
