package benchrun

import (
	"cmp"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"time"
)

// A report directory (`seqembed bench --report DIR`) holds summary.md and the data behind it;
// `seqembed-lab plot DIR` draws the PNGs from that data and rewrites summary.md with them.
const (
	FileSummary = "summary.md"
	FileResult  = "result.json" // the Result
	FileSeries  = "series.json" // the Series
	FileMeta    = "meta.json"   // the Meta

	FileThroughput = "throughput.png"
	FilePadding    = "padding.png"
	FileGPU        = "gpu_busy.png"
	FileRows       = "batch_rows.png"
)

// PlotFiles are the report's plots, in the summary's order.
var PlotFiles = []string{FileThroughput, FilePadding, FileGPU, FileRows}

// Meta is what the summary says beyond the Result.
type Meta struct {
	Date  time.Time `json:"date"`
	Input string    `json:"input,omitempty"` // the FASTA file
	Args  []string  `json:"args,omitempty"`  // bench's arguments
}

// Plot is what became of one plot of the report.
type Plot struct {
	Drawn bool   // the PNG is in the directory
	Note  string // a remark on the plot, or why it was not drawn
}

// WriteReport writes the report into dir (created if need be): result.json, series.json,
// meta.json and a summary.md without plots, which says how to draw them.
func WriteReport(dir string, res Result, s *Series, meta Meta) error {
	if s == nil {
		s = &Series{}
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	for _, f := range []struct {
		name string
		v    any
	}{{FileResult, res}, {FileSeries, s}, {FileMeta, meta}} {
		data, err := json.MarshalIndent(f.v, "", "  ")
		if err != nil {
			return fmt.Errorf("%s: %w", f.name, err)
		}
		if err := os.WriteFile(filepath.Join(dir, f.name), append(data, '\n'), 0o644); err != nil {
			return err
		}
	}
	return WriteSummary(dir, res, s, meta, nil)
}

// ReadReport reads back what WriteReport wrote into dir.
func ReadReport(dir string) (Result, *Series, Meta, error) {
	var res Result
	s := &Series{}
	var meta Meta
	var errs []error
	for _, f := range []struct {
		name string
		v    any
	}{{FileResult, &res}, {FileSeries, s}, {FileMeta, &meta}} {
		data, err := os.ReadFile(filepath.Join(dir, f.name))
		if err == nil {
			err = json.Unmarshal(data, f.v)
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", f.name, err))
		}
	}
	return res, s, meta, errors.Join(errs...)
}

// WriteSummary writes summary.md into dir; plots (by file name) are what became of each plot,
// nil when none was drawn yet.
func WriteSummary(dir string, res Result, s *Series, meta Meta, plots map[string]Plot) error {
	return os.WriteFile(filepath.Join(dir, FileSummary), []byte(SummaryMarkdown(res, s, meta, plots)), 0o644)
}

// SummaryMarkdown is summary.md: the run, the Result as a table, and the plots (see
// WriteSummary).
func SummaryMarkdown(res Result, s *Series, meta Meta, plots map[string]Plot) string {
	if s == nil {
		s = &Series{}
	}
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
	if plots == nil {
		fmt.Fprintf(&b, "\nNot drawn yet: `seqembed-lab plot DIR` (DIR: this directory) draws them from %s "+
			"and rewrites this summary with them. %s and %s hold the result and the run's details.\n",
			FileSeries, FileResult, FileMeta)
		return b.String()
	}
	captions := map[string]struct{ title, caption string }{
		FileThroughput: {"Throughput over time", "Residues per second of the batches in each window; the dashed line is the whole run's rate."},
		FilePadding:    {"Batch padding efficiency", "Real tokens / padded tokens (rows × bucket length) per batch; the dashed line is the token-weighted mean (`padding_efficiency`)."},
		FileGPU:        {"GPU busy", "NVML utilisation samples (every 200 ms) during the timed part; the dashed line is their mean (`gpu_util`)."},
		FileRows:       {"Batch rows", "How many sequences the batches held."},
	}
	for _, file := range PlotFiles {
		p, c := plots[file], captions[file]
		fmt.Fprintf(&b, "\n### %s\n\n", c.title)
		if !p.Drawn {
			fmt.Fprintf(&b, "%s\n", cmp.Or(p.Note, "Not plotted."))
			continue
		}
		fmt.Fprintf(&b, "![%s](%s)\n\n%s\n", c.title, file, c.caption)
		if p.Note != "" {
			fmt.Fprintf(&b, "\nNote: %s\n", p.Note)
		}
	}
	return b.String()
}
