package main

import (
	"cmp"
	"errors"
	"fmt"
	"image/color"
	"math"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"time"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"

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

// Plot size: 600 × 300 pt is 800 × 400 pixels at gonum/plot's 96 dpi.
const reportW, reportH = 600 * vg.Length(1), 300 * vg.Length(1)

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
	try(reportThroughput, func(p string) (bool, string, error) { return plotThroughput(p, res, s) })
	try(reportPadding, func(p string) (bool, string, error) { return plotPadding(p, res, s) })
	try(reportGPU, func(p string) (bool, string, error) { return plotGPU(p, res, s) })
	try(reportRows, func(p string) (bool, string, error) { return plotRows(p, s) })
	if err := errors.Join(errs...); err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(dir, reportSummary), []byte(summaryMarkdown(res, s, meta, plotted, notes)), 0o644)
}

func newPlot(title, x, y string) *plot.Plot {
	p := plot.New()
	p.Title.Text, p.X.Label.Text, p.Y.Label.Text = title, x, y
	p.Add(plotter.NewGrid())
	p.Legend.Top = true
	return p
}

// hline adds a dashed horizontal line at y, with a legend entry.
func hline(p *plot.Plot, y float64, label string, c color.Color) {
	f := plotter.NewFunction(func(float64) float64 { return y })
	f.Color, f.Width, f.Dashes = c, vg.Points(1.5), []vg.Length{vg.Points(6), vg.Points(3)}
	p.Add(f)
	p.Legend.Add(label, f)
}

var (
	reportBlue = color.RGBA{R: 31, G: 119, B: 180, A: 255}
	reportRed  = color.RGBA{R: 214, G: 39, B: 40, A: 255}
)

func plotThroughput(path string, res benchResult, s *benchSeries) (bool, string, error) {
	w := throughputWindow(s.End.Sub(s.Start))
	starts, rates := throughputWindows(s, w)
	if len(rates) == 0 {
		return false, "No batches were recorded: throughput plot skipped.", nil
	}
	// A post-step line: each window's rate held across the window.
	xys := make(plotter.XYs, 0, len(rates)+1)
	for i := range rates {
		xys = append(xys, plotter.XY{X: starts[i], Y: rates[i]})
	}
	end := max(s.End.Sub(s.Start).Seconds(), starts[len(starts)-1]+w.Seconds()/4)
	xys = append(xys, plotter.XY{X: end, Y: rates[len(rates)-1]})
	p := newPlot(fmt.Sprintf("Throughput (%s, %s windows)", res.Mode, w),
		"seconds since the timed part began", "residues/s")
	l, err := plotter.NewLine(xys)
	if err != nil {
		return false, "", err
	}
	l.StepStyle, l.Color, l.Width = plotter.PostStep, reportBlue, vg.Points(1.5)
	p.Add(l)
	p.Legend.Add("per window", l)
	hline(p, res.ResiduesPerSec, fmt.Sprintf("whole run %.0f", res.ResiduesPerSec), reportRed)
	p.Y.Min, p.Y.Max = 0, 1.15*max(slices.Max(rates), res.ResiduesPerSec) // room for the legend
	note := ""
	if w != time.Second {
		note = fmt.Sprintf("The run is under 10 s, so throughput is binned in %s windows instead of 1 s.", w)
	}
	return true, note, p.Save(reportW, reportH, path)
}

func plotPadding(path string, res benchResult, s *benchSeries) (bool, string, error) {
	if len(s.Batches) == 0 {
		return false, "", nil
	}
	xys := make(plotter.XYs, len(s.Batches))
	lo := res.PaddingEfficiency
	for i, b := range s.Batches {
		xys[i] = plotter.XY{X: float64(i + 1), Y: b.efficiency()}
		lo = min(lo, xys[i].Y)
	}
	p := newPlot(fmt.Sprintf("Padding efficiency per batch (%s, %d batches)", res.Mode, len(s.Batches)),
		"batch (in time order)", "real / padded tokens")
	sc, err := plotter.NewScatter(xys)
	if err != nil {
		return false, "", err
	}
	sc.GlyphStyle.Color, sc.GlyphStyle.Radius = reportBlue, vg.Points(2)
	if len(xys) > 500 {
		sc.GlyphStyle.Radius = vg.Points(1)
	}
	p.Add(sc)
	p.Legend.Add("batch", sc)
	hline(p, res.PaddingEfficiency, fmt.Sprintf("token-weighted mean %.3f", res.PaddingEfficiency), reportRed)
	p.Y.Min, p.Y.Max = max(0, lo-0.02), 1.01
	p.X.Min, p.X.Max = 0, float64(len(xys)+1)
	p.Legend.Left = true
	p.Legend.Top = false
	return true, "", p.Save(reportW, reportH, path)
}

func plotGPU(path string, res benchResult, s *benchSeries) (bool, string, error) {
	if len(s.GPU) == 0 {
		return false, "No NVML samples (CPU run, or NVML unavailable): GPU busy plot skipped.", nil
	}
	samples := slices.SortedFunc(slices.Values(s.GPU), func(a, b gpurun.GPUSample) int { return a.Time.Compare(b.Time) })
	xys := make(plotter.XYs, len(samples))
	sum := 0.0
	for i, g := range samples {
		xys[i] = plotter.XY{X: g.Time.Sub(s.Start).Seconds(), Y: 100 * g.Util}
		sum += g.Util
	}
	mean := sum / float64(len(samples))
	if res.GPUUtil >= 0 {
		mean = res.GPUUtil
	}
	p := newPlot(fmt.Sprintf("GPU busy, NVML every 200 ms (%s)", cmp.Or(samples[0].Name, res.Device)),
		"seconds since the timed part began", "GPU busy (%)")
	l, err := plotter.NewLine(xys)
	if err != nil {
		return false, "", err
	}
	l.Color, l.Width = reportBlue, vg.Points(1.5)
	p.Add(l)
	p.Legend.Add("NVML utilisation", l)
	hline(p, 100*mean, fmt.Sprintf("mean %.1f %%", 100*mean), reportRed)
	p.Y.Min, p.Y.Max = 0, 105
	p.X.Min = math.Min(0, xys[0].X)
	p.Legend.Top, p.Legend.Left = false, true
	return true, "", p.Save(reportW, reportH, path)
}

// plotRows is a histogram of batch rows, binned on whole rows (at most 40 bins).
func plotRows(path string, s *benchSeries) (bool, string, error) {
	if len(s.Batches) == 0 {
		return false, "", nil
	}
	lo, hi := s.Batches[0].Rows, s.Batches[0].Rows
	for _, b := range s.Batches {
		lo, hi = min(lo, b.Rows), max(hi, b.Rows)
	}
	width := max(1, (hi-lo+40)/40)
	bins := make([]plotter.HistogramBin, (hi-lo)/width+1)
	for i := range bins {
		bins[i] = plotter.HistogramBin{Min: float64(lo+i*width) - 0.5, Max: float64(lo+(i+1)*width) - 0.5}
	}
	for _, b := range s.Batches {
		bins[(b.Rows-lo)/width].Weight++
	}
	h := &plotter.Histogram{Bins: bins, Width: float64(width), FillColor: reportBlue, LineStyle: plotter.DefaultLineStyle}
	p := newPlot(fmt.Sprintf("Rows per batch (%d batches)", len(s.Batches)), "rows (sequences) in the batch", "batches")
	p.Add(h)
	return true, "", p.Save(reportW, reportH, path)
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
