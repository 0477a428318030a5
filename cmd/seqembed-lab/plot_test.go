package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/seqembed/seqembed/gpurun"
	"github.com/seqembed/seqembed/internal/benchrun"
)

var pngSignature = []byte("\x89PNG\r\n\x1a\n")

// checkReport checks that each PNG in want exists and is a PNG, and that summary.md links it.
func checkReport(t *testing.T, dir string, want []string) string {
	t.Helper()
	summary, err := os.ReadFile(filepath.Join(dir, benchrun.FileSummary))
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range want {
		data, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			t.Errorf("%s: %v", name, err)
			continue
		}
		if !bytes.HasPrefix(data, pngSignature) {
			t.Errorf("%s does not start with the PNG signature", name)
		}
		if !strings.Contains(string(summary), "]("+name+")") {
			t.Errorf("summary.md does not link %s", name)
		}
	}
	return string(summary)
}

// TestPlotGPUReport plots a synthetic 25 s GPU run: every plot is drawn, without notes.
func TestPlotGPUReport(t *testing.T) {
	start := time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)
	s := &benchrun.Series{Start: start, End: start.Add(25 * time.Second), BatchTime: "synthetic"}
	for i := range 228 {
		s.Batches = append(s.Batches, benchrun.BatchPoint{At: start.Add(time.Duration(i+1) * 109 * time.Millisecond),
			Rows: 16 + i%48, Tokens: 15000 + 10*(i%100), Padded: 16384})
	}
	for i := range 125 {
		s.GPU = append(s.GPU, gpurun.GPUSample{Time: start.Add(time.Duration(i) * 200 * time.Millisecond),
			Name: "NVIDIA H100 80GB HBM3", Util: 0.9 + 0.08*float64(i%3)/2})
	}
	res := benchrun.Result{Mode: "e2e", Device: "cuda:0", Model: "esm2-t33_650M", DType: "float16", Sequences: 8000,
		Residues: 3292827, Seconds: 25, ResiduesPerSec: 131711, Batches: 228, PaddingEfficiency: 0.933, GPUUtil: 0.978}
	dir := t.TempDir()
	if err := benchrun.WriteReport(dir, res, s, benchrun.Meta{Date: start}); err != nil {
		t.Fatal(err)
	}
	if err := runPlotCmd(context.Background(), []string{dir}); err != nil {
		t.Fatal(err)
	}
	summary := checkReport(t, dir, benchrun.PlotFiles)
	for _, want := range []string{"cuda:0 (NVIDIA H100 80GB HBM3)", "| gpu_util | 0.978 |", "2026-11-25T12:00:00Z"} {
		if !strings.Contains(summary, want) {
			t.Errorf("summary.md lacks %q:\n%s", want, summary)
		}
	}
	if strings.Contains(summary, "Note") || strings.Contains(summary, "Not drawn yet") {
		t.Errorf("a 25 s GPU run needs no notes:\n%s", summary)
	}
	if out := os.Getenv("SEQEMBED_REPORT_KEEP"); out != "" { // to look at the plots
		for _, f := range append(benchrun.PlotFiles, benchrun.FileSummary) {
			data, _ := os.ReadFile(filepath.Join(dir, f))
			_ = os.WriteFile(filepath.Join(out, f), data, 0o644)
		}
	}
}

// TestPlotCPUReport plots a synthetic CPU run (benchrun's own tests run the real bench and
// write its report): with no NVML samples the GPU plot is skipped with a note.
func TestPlotCPUReport(t *testing.T) {
	start := time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)
	s := &benchrun.Series{Start: start, End: start.Add(3 * time.Second), BatchTime: "synthetic"}
	for i := range 30 {
		s.Batches = append(s.Batches, benchrun.BatchPoint{At: start.Add(time.Duration(i+1) * 100 * time.Millisecond),
			Rows: 2, Tokens: 100 + i, Padded: 256})
	}
	res := benchrun.Result{Mode: "raw", Device: "cpu", Model: "esm2-tiny", DType: "float32", Sequences: 60,
		Residues: 3000, Seconds: 3, ResiduesPerSec: 1000, Batches: 30, PaddingEfficiency: 0.45, GPUUtil: -1}
	dir := filepath.Join(t.TempDir(), "report")
	if err := benchrun.WriteReport(dir, res, s, benchrun.Meta{Date: start, Input: "golden-input.fasta"}); err != nil {
		t.Fatal(err)
	}
	if err := plotReport(dir); err != nil {
		t.Fatal(err)
	}
	summary := checkReport(t, dir, []string{benchrun.FileThroughput, benchrun.FilePadding, benchrun.FileRows})
	if _, err := os.Stat(filepath.Join(dir, benchrun.FileGPU)); !os.IsNotExist(err) {
		t.Errorf("%s written on the CPU (stat: %v)", benchrun.FileGPU, err)
	}
	for _, want := range []string{"| mode | raw |", "| device | cpu |", "| gpu_util | n/a", "No NVML samples"} {
		if !strings.Contains(summary, want) {
			t.Errorf("summary.md lacks %q:\n%s", want, summary)
		}
	}
}

func TestPlotCmdArgs(t *testing.T) {
	if err := runPlotCmd(context.Background(), nil); !errors.Is(err, flag.ErrHelp) {
		t.Errorf("no DIR: %v, want flag.ErrHelp", err)
	}
	if err := runPlotCmd(context.Background(), []string{t.TempDir()}); err == nil {
		t.Error("a directory without a report: no error")
	}
}
