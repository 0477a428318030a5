package main

import (
	"bytes"
	"context"
	"encoding/json"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/seqembed/seqembed/gpurun"
)

var pngSignature = []byte("\x89PNG\r\n\x1a\n")

// checkReport checks that each PNG in want exists and is a PNG, and that summary.md links it.
func checkReport(t *testing.T, dir string, want []string) string {
	t.Helper()
	summary, err := os.ReadFile(filepath.Join(dir, reportSummary))
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

// TestBenchReportCPU runs `seqembed bench --report DIR` (e2e and raw) on the CPU with the tiny
// model: no NVML samples there, so the GPU plot is skipped with a note.
func TestBenchReportCPU(t *testing.T) {
	requireORT(t)
	for _, mode := range []string{"e2e", "raw"} {
		t.Run(mode, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "report")
			args := []string{"--model", tinyModel, "--threads", "2", "--max-batch-rows", "2",
				"--fasta", "../../testdata/golden-input.fasta", "--report", dir}
			if mode == "raw" {
				args = append(args, "--raw")
			}
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()
			if err := runBenchCmd(ctx, args); err != nil {
				t.Fatal(err)
			}
			summary := checkReport(t, dir, []string{reportThroughput, reportPadding, reportRows})
			if _, err := os.Stat(filepath.Join(dir, reportGPU)); !os.IsNotExist(err) {
				t.Errorf("%s written on the CPU (stat: %v)", reportGPU, err)
			}
			for _, s := range []string{"| mode | " + mode + " |", "| device | cpu |", "esm2", "| residues_per_s |",
				"| padding_efficiency |", "| gpu_util | n/a", "No NVML samples",
				time.Now().Format("2006-01-02")} {
				if !strings.Contains(summary, s) {
					t.Errorf("summary.md lacks %q:\n%s", s, summary)
				}
			}
			if testing.Verbose() {
				t.Logf("summary.md:\n%s", summary)
			}
		})
	}
}

// TestBenchReportGPUPlot feeds the writer a synthetic GPU run, so the GPU plot is drawn too.
func TestBenchReportGPUPlot(t *testing.T) {
	start := time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)
	s := benchSeries{Start: start, End: start.Add(25 * time.Second), BatchTime: "synthetic"}
	for i := range 228 {
		s.Batches = append(s.Batches, batchPoint{At: start.Add(time.Duration(i+1) * 109 * time.Millisecond),
			Rows: 16 + i%48, Tokens: 15000 + 10*(i%100), Padded: 16384})
	}
	for i := range 125 {
		s.GPU = append(s.GPU, gpurun.GPUSample{Time: start.Add(time.Duration(i) * 200 * time.Millisecond),
			Name: "NVIDIA H100 80GB HBM3", Util: 0.9 + 0.08*float64(i%3)/2})
	}
	res := benchResult{Mode: "e2e", Device: "cuda:0", Model: "esm2-t33_650M", DType: "float16", Sequences: 8000,
		Residues: 3292827, Seconds: 25, ResiduesPerSec: 131711, Batches: 228, PaddingEfficiency: 0.933, GPUUtil: 0.978}
	dir := t.TempDir()
	if err := writeBenchReport(dir, res, &s, reportMeta{Date: start}); err != nil {
		t.Fatal(err)
	}
	summary := checkReport(t, dir, []string{reportThroughput, reportPadding, reportGPU, reportRows})
	for _, want := range []string{"cuda:0 (NVIDIA H100 80GB HBM3)", "| gpu_util | 0.978 |", "2026-11-25T12:00:00Z"} {
		if !strings.Contains(summary, want) {
			t.Errorf("summary.md lacks %q:\n%s", want, summary)
		}
	}
	if strings.Contains(summary, "Note") {
		t.Errorf("a 25 s GPU run needs no notes:\n%s", summary)
	}
	if out := os.Getenv("SEQEMBED_REPORT_KEEP"); out != "" { // to look at the plots
		for _, f := range []string{reportThroughput, reportPadding, reportGPU, reportRows, reportSummary} {
			data, _ := os.ReadFile(filepath.Join(dir, f))
			_ = os.WriteFile(filepath.Join(out, f), data, 0o644)
		}
	}
}

func TestReportThroughputWindows(t *testing.T) {
	start := time.Unix(1000, 0)
	at := func(ms int) time.Time { return start.Add(time.Duration(ms) * time.Millisecond) }
	pt := func(ms, residues int) batchPoint {
		return batchPoint{At: at(ms), Rows: 1, Tokens: residues + 2, Padded: residues + 2}
	}
	// 3.1 s: windows [0,1) [1,2) [2,3.1) — the last 0.1 s is merged into the window before it.
	s := benchSeries{Start: start, End: at(3100), Batches: []batchPoint{pt(100, 500), pt(900, 500), pt(1500, 2000), pt(2500, 1100), pt(3050, 1100)}}
	starts, rates := throughputWindows(&s, time.Second)
	wantStarts, wantRates := []float64{0, 1, 2}, []float64{1000, 2000, 2000}
	if len(rates) != len(wantRates) {
		t.Fatalf("rates %v, want %v", rates, wantRates)
	}
	for i := range rates {
		if starts[i] != wantStarts[i] || math.Abs(rates[i]-wantRates[i]) > 1e-6 {
			t.Errorf("window %d: start %v rate %v, want %v %v", i, starts[i], rates[i], wantStarts[i], wantRates[i])
		}
	}
	// 3.5 s: the last window is half a window, divided by its own length.
	s.End = at(3500)
	s.Batches = append(s.Batches, pt(3400, 500))
	_, rates = throughputWindows(&s, time.Second)
	if len(rates) != 4 || math.Abs(rates[2]-1100) > 1e-6 || math.Abs(rates[3]-3200) > 1e-6 {
		t.Errorf("rates %v, want [1000 2000 1100 3200]", rates)
	}
	if w := throughputWindow(25 * time.Second); w != time.Second {
		t.Errorf("window for 25 s: %v", w)
	}
	if w := throughputWindow(2 * time.Second); w != 200*time.Millisecond {
		t.Errorf("window for 2 s: %v", w)
	}
}

// TestBenchWorkerProcs runs `seqembed bench --worker-procs --device cpu,cpu`: two worker processes
// share the durable consumer; every golden record is embedded once and the JSON line says so.
func TestBenchWorkerProcs(t *testing.T) {
	requireORT(t)
	defer func(orig func(...string) (*exec.Cmd, error)) { workerCommand = orig }(workerCommand)
	workerCommand = func(args ...string) (*exec.Cmd, error) {
		cmd := exec.Command(os.Args[0], "-test.run=^$")
		cmd.Env = append(os.Environ(), "SEQEMBED_TEST_MAIN="+strings.Join(args, " "))
		return cmd, nil
	}
	out := filepath.Join(t.TempDir(), "bench.jsonl")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	err := runBenchCmd(ctx, []string{"--model", tinyModel, "--threads", "1", "--max-batch-rows", "4",
		"--device", "cpu,cpu", "--worker-procs", "--fasta", "../../testdata/golden-input.fasta", "--json-out", out})
	if err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	var res benchResult
	if err := json.Unmarshal(data, &res); err != nil {
		t.Fatal(err)
	}
	if res.WorkerProcs != 2 || res.Sequences != 20 || res.Residues <= 0 || res.ResiduesPerSec <= 0 {
		t.Fatalf("result %+v: want 2 worker processes, 20 sequences, residues and a rate", res)
	}
	if err := runBenchCmd(ctx, []string{"--worker-procs", "--raw", "--fasta", "x"}); err == nil {
		t.Error("--worker-procs with --raw: no error")
	}
}
