package benchrun

import (
	"context"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/seqembed/seqembed/gpurun"
	"github.com/seqembed/seqembed/internal/e2etest"
	"github.com/seqembed/seqembed/pipeline"
)

var goldenFASTA = filepath.Join(e2etest.Root, "testdata", "golden-input.fasta")

// TestBenchCPU runs E2E and Raw on the CPU with the tiny model through Run and writes their
// reports: the result adds up with the series, and summary.md holds the run and the result and
// says how to draw the plots.
func TestBenchCPU(t *testing.T) {
	e2etest.RequireORT(t)
	for _, mode := range []string{"e2e", "raw"} {
		t.Run(mode, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()
			cfg := e2etest.Config()
			cfg.MaxBatchRows = 2
			res, s, err := Run(ctx, Job{Config: cfg, FASTA: goldenFASTA, Raw: mode == "raw"})
			if err != nil {
				t.Fatal(err)
			}
			if res.Mode != mode || res.Device != "cpu" || res.Model != "esm2-tiny" || res.Sequences != 20 ||
				res.Residues <= 0 || res.Seconds <= 0 || res.ResiduesPerSec <= 0 || res.Batches < 10 ||
				res.PaddingEfficiency <= 0 || res.PaddingEfficiency > 1 || res.GPUUtil != -1 ||
				res.Inflight != pipeline.InflightCPU || res.MaxBatchTokens != cfg.MaxBatchTokens {
				t.Fatalf("result %+v", res)
			}
			if mode == "e2e" && (res.LatencyP50Ms <= 0 || res.LatencyP99Ms < res.LatencyP50Ms) {
				t.Errorf("latencies p50 %v p99 %v", res.LatencyP50Ms, res.LatencyP99Ms)
			}
			if res.RunnerBusy <= 0 || res.RunnerBusy > 1 {
				t.Errorf("runner busy %v", res.RunnerBusy)
			}
			// The series holds every batch, each within the timed part.
			residues := int64(0)
			for _, b := range s.Batches {
				residues += int64(b.Residues())
				if b.At.Before(s.Start) || b.At.After(s.End.Add(time.Second)) {
					t.Errorf("batch at %s outside [%s, %s]", b.At, s.Start, s.End)
				}
			}
			if len(s.Batches) != res.Batches || residues != res.Residues || len(s.GPU) != 0 {
				t.Errorf("series: %d batches of %d residues, %d GPU samples; result: %d batches of %d residues",
					len(s.Batches), residues, len(s.GPU), res.Batches, res.Residues)
			}
			if got := s.End.Sub(s.Start).Seconds(); math.Abs(got-res.Seconds) > 1e-6 {
				t.Errorf("series spans %v s, result %v s", got, res.Seconds)
			}

			dir := filepath.Join(t.TempDir(), "report")
			if err := WriteReport(dir, res, s, Meta{Date: time.Now(), Input: goldenFASTA, Args: []string{"--fasta", "x"}}); err != nil {
				t.Fatal(err)
			}
			summary := readFile(t, filepath.Join(dir, FileSummary))
			for _, want := range []string{"| mode | " + mode + " |", "| device | cpu |", "esm2", "| residues_per_s |",
				"| padding_efficiency |", "| gpu_util | n/a", "`seqembed bench --fasta x`", "seqembed-lab plot",
				time.Now().Format("2006-01-02")} {
				if !strings.Contains(summary, want) {
					t.Errorf("summary.md lacks %q:\n%s", want, summary)
				}
			}
			for _, png := range PlotFiles {
				if _, err := os.Stat(filepath.Join(dir, png)); !os.IsNotExist(err) {
					t.Errorf("%s written by WriteReport (stat: %v)", png, err)
				}
			}
			if testing.Verbose() {
				t.Logf("summary.md:\n%s", summary)
			}
		})
	}
}

func TestRunRejectsRawWorkerProcs(t *testing.T) {
	if _, _, err := Run(context.Background(), Job{Config: e2etest.Config(), FASTA: goldenFASTA, Raw: true, WorkerProcs: true}); err == nil {
		t.Fatal("Raw with WorkerProcs: no error")
	}
}

// syntheticGPURun is a 25 s GPU run: 228 batches, 125 NVML samples.
func syntheticGPURun() (Result, *Series) {
	start := time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)
	s := &Series{Start: start, End: start.Add(25 * time.Second), BatchTime: "synthetic"}
	for i := range 228 {
		s.Batches = append(s.Batches, BatchPoint{At: start.Add(time.Duration(i+1) * 109 * time.Millisecond),
			Rows: 16 + i%48, Tokens: 15000 + 10*(i%100), Padded: 16384})
	}
	for i := range 125 {
		s.GPU = append(s.GPU, gpurun.GPUSample{Time: start.Add(time.Duration(i) * 200 * time.Millisecond),
			Name: "NVIDIA H100 80GB HBM3", Util: 0.9 + 0.08*float64(i%3)/2})
	}
	res := Result{Mode: "e2e", Device: "cuda:0", Model: "esm2-t33_650M", DType: "float16", Sequences: 8000,
		Residues: 3292827, Seconds: 25, ResiduesPerSec: 131711, Batches: 228, PaddingEfficiency: 0.933, GPUUtil: 0.978}
	return res, s
}

// TestReportRoundTrip: ReadReport gives back what WriteReport wrote, and the summary shows the
// plots once they are drawn.
func TestReportRoundTrip(t *testing.T) {
	res, s := syntheticGPURun()
	meta := Meta{Date: s.Start, Input: "in.fasta", Args: []string{"--raw"}}
	dir := t.TempDir()
	if err := WriteReport(dir, res, s, meta); err != nil {
		t.Fatal(err)
	}
	summary := readFile(t, filepath.Join(dir, FileSummary))
	for _, want := range []string{"cuda:0 (NVIDIA H100 80GB HBM3)", "| gpu_util | 0.978 |", "2026-11-25T12:00:00Z",
		"Not drawn yet", "seqembed-lab plot"} {
		if !strings.Contains(summary, want) {
			t.Errorf("summary.md lacks %q:\n%s", want, summary)
		}
	}
	res2, s2, meta2, err := ReadReport(dir)
	if err != nil {
		t.Fatal(err)
	}
	if res2.Mode != res.Mode || res2.Residues != res.Residues || res2.GPUUtil != res.GPUUtil || res2.DType != res.DType {
		t.Errorf("result %+v, want %+v", res2, res)
	}
	if !meta2.Date.Equal(meta.Date) || meta2.Input != meta.Input || len(meta2.Args) != 1 {
		t.Errorf("meta %+v, want %+v", meta2, meta)
	}
	if !s2.Start.Equal(s.Start) || !s2.End.Equal(s.End) || s2.BatchTime != s.BatchTime ||
		len(s2.Batches) != len(s.Batches) || len(s2.GPU) != len(s.GPU) {
		t.Fatalf("series differs: %d batches %d samples", len(s2.Batches), len(s2.GPU))
	}
	for i := range s.Batches {
		a, b := s.Batches[i], s2.Batches[i]
		if !a.At.Equal(b.At) || a.Rows != b.Rows || a.Tokens != b.Tokens || a.Padded != b.Padded {
			t.Fatalf("batch %d: %+v, want %+v", i, b, a)
		}
	}
	if g := s2.GPU[7]; !g.Time.Equal(s.GPU[7].Time) || g.Util != s.GPU[7].Util || g.Name != s.GPU[7].Name {
		t.Errorf("GPU sample %+v, want %+v", g, s.GPU[7])
	}
	if _, _, _, err := ReadReport(t.TempDir()); err == nil {
		t.Error("ReadReport of an empty directory: no error")
	}

	plots := map[string]Plot{FileThroughput: {Drawn: true, Note: "binned"}, FileGPU: {Note: "no samples"}}
	md := SummaryMarkdown(res, s, meta, plots)
	for _, want := range []string{"](" + FileThroughput + ")", "Note: binned", "no samples", "Not plotted."} {
		if !strings.Contains(md, want) {
			t.Errorf("summary lacks %q:\n%s", want, md)
		}
	}
	if strings.Contains(md, "]("+FileGPU+")") || strings.Contains(md, "Not drawn yet") {
		t.Errorf("summary links an undrawn plot or says none is drawn:\n%s", md)
	}
}

func TestThroughputWindows(t *testing.T) {
	start := time.Unix(1000, 0)
	at := func(ms int) time.Time { return start.Add(time.Duration(ms) * time.Millisecond) }
	pt := func(ms, residues int) BatchPoint {
		return BatchPoint{At: at(ms), Rows: 1, Tokens: residues + 2, Padded: residues + 2}
	}
	// 3.1 s: windows [0,1) [1,2) [2,3.1) — the last 0.1 s is merged into the window before it.
	s := Series{Start: start, End: at(3100), Batches: []BatchPoint{pt(100, 500), pt(900, 500), pt(1500, 2000), pt(2500, 1100), pt(3050, 1100)}}
	starts, rates := ThroughputWindows(&s, time.Second)
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
	_, rates = ThroughputWindows(&s, time.Second)
	if len(rates) != 4 || math.Abs(rates[2]-1100) > 1e-6 || math.Abs(rates[3]-3200) > 1e-6 {
		t.Errorf("rates %v, want [1000 2000 1100 3200]", rates)
	}
	if w := ThroughputWindow(25 * time.Second); w != time.Second {
		t.Errorf("window for 25 s: %v", w)
	}
	if w := ThroughputWindow(2 * time.Second); w != 200*time.Millisecond {
		t.Errorf("window for 2 s: %v", w)
	}
}

func TestGPUMeterCPU(t *testing.T) {
	g := StartGPUMeter("cpu")
	defer g.Close()
	now := time.Now()
	if m := g.Mean(now.Add(-time.Hour), now); m != -1 {
		t.Errorf("mean on the CPU %v, want -1", m)
	}
	if g.PerDevice(now, now) != nil || g.SamplesIn(now, now) != nil {
		t.Error("samples on the CPU")
	}
	var nilMeter *GPUMeter
	if nilMeter.Mean(now, now) != -1 || nilMeter.SamplesIn(now, now) != nil {
		t.Error("nil meter has samples")
	}
	nilMeter.Close()
}

func readFile(t *testing.T, path string) string {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(data)
}
