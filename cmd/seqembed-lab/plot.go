package main

// `seqembed-lab plot DIR`: the bench report's PNG plots (gonum/plot), drawn from the data
// `seqembed bench --report DIR` wrote, so that the production binary carries no plotting code.

import (
	"cmp"
	"context"
	"errors"
	"flag"
	"fmt"
	"image/color"
	"math"
	"os"
	"path/filepath"
	"slices"
	"time"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"

	"github.com/seqembed/seqembed/gpurun"
	"github.com/seqembed/seqembed/internal/benchrun"
)

func runPlotCmd(_ context.Context, args []string) error {
	fs := flag.NewFlagSet("plot", flag.ContinueOnError)
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "usage: seqembed-lab plot DIR\n\nDraws %v into DIR (a `seqembed bench --report DIR` directory) "+
			"from its %s, %s and %s, and rewrites its %s with them.\n",
			benchrun.PlotFiles, benchrun.FileSeries, benchrun.FileResult, benchrun.FileMeta, benchrun.FileSummary)
	}
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() != 1 {
		fs.Usage()
		return flag.ErrHelp
	}
	dir := fs.Arg(0)
	if err := plotReport(dir); err != nil {
		return err
	}
	fmt.Fprintf(os.Stderr, "bench report: %s\n", filepath.Join(dir, benchrun.FileSummary))
	return nil
}

// plotReport draws the plots of the report in dir and rewrites its summary.md with them.
func plotReport(dir string) error {
	res, s, meta, err := benchrun.ReadReport(dir)
	if err != nil {
		return fmt.Errorf("reading the report in %s: %w", dir, err)
	}
	plots := map[string]benchrun.Plot{}
	var errs []error
	for _, rp := range reportPlots {
		drawn, note, err := rp.draw(filepath.Join(dir, rp.file), res, s)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", rp.file, err))
		}
		plots[rp.file] = benchrun.Plot{Drawn: drawn && err == nil, Note: note}
	}
	if err := errors.Join(errs...); err != nil {
		return err
	}
	return benchrun.WriteSummary(dir, res, s, meta, plots)
}

// reportPlot draws one PNG of the report at path; drawn false (with a note) when there was
// nothing to draw.
type reportPlot struct {
	file string
	draw func(path string, res benchrun.Result, s *benchrun.Series) (drawn bool, note string, err error)
}

// reportPlots are drawn in this order.
var reportPlots = []reportPlot{
	{benchrun.FileThroughput, plotThroughput},
	{benchrun.FilePadding, plotPadding},
	{benchrun.FileGPU, plotGPU},
	{benchrun.FileRows, func(p string, _ benchrun.Result, s *benchrun.Series) (bool, string, error) { return plotRows(p, s) }},
}

// Plot size: 600 × 300 pt is 800 × 400 pixels at gonum/plot's 96 dpi.
const reportW, reportH = 600 * vg.Length(1), 300 * vg.Length(1)

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

func plotThroughput(path string, res benchrun.Result, s *benchrun.Series) (bool, string, error) {
	w := benchrun.ThroughputWindow(s.End.Sub(s.Start))
	starts, rates := benchrun.ThroughputWindows(s, w)
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

func plotPadding(path string, res benchrun.Result, s *benchrun.Series) (bool, string, error) {
	if len(s.Batches) == 0 {
		return false, "", nil
	}
	xys := make(plotter.XYs, len(s.Batches))
	lo := res.PaddingEfficiency
	for i, b := range s.Batches {
		xys[i] = plotter.XY{X: float64(i + 1), Y: b.Efficiency()}
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

func plotGPU(path string, res benchrun.Result, s *benchrun.Series) (bool, string, error) {
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
func plotRows(path string, s *benchrun.Series) (bool, string, error) {
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
