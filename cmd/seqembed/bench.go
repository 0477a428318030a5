package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/seqembed/seqembed/batcher"
	"github.com/seqembed/seqembed/fasta"
	"github.com/seqembed/seqembed/gpurun"
	"github.com/seqembed/seqembed/telemetry"
)

// benchResult is one bench run, printed as one JSON line.
type benchResult struct {
	Mode              string  `json:"mode"` // "e2e" (JetStream → worker → Arrow) or "raw" (ORT alone)
	Device            string  `json:"device"`
	Model             string  `json:"model"`
	DType             string  `json:"dtype"`
	Inflight          int     `json:"inflight"`
	MaxBatchTokens    int     `json:"max_batch_tokens"`
	Sequences         int     `json:"sequences"`
	Residues          int64   `json:"residues"`
	Seconds           float64 `json:"seconds"`
	ResiduesPerSec    float64 `json:"residues_per_s"`
	SequencesPerSec   float64 `json:"sequences_per_s"`
	Batches           int     `json:"batches"`
	PaddingEfficiency float64 `json:"padding_efficiency"`
	RunnerBusy        float64 `json:"runner_busy"`        // fraction of wall time with >= 1 run in flight
	MeanGapMs         float64 `json:"runner_mean_gap_ms"` // runner's wait for its next batch
	GPUUtil           float64 `json:"gpu_util"`           // NVML mean over the run (all devices); -1 without NVML
	// GPUUtilPerDevice is the NVML mean of each device of --device, in that order (multi-GPU runs).
	GPUUtilPerDevice []float64 `json:"gpu_util_per_device,omitempty"`
	// WorkerProcs is the number of worker processes (--worker-procs: one per device); 0 = in-process.
	WorkerProcs   int     `json:"worker_procs,omitempty"`
	LatencyP50Ms  float64 `json:"latency_p50_ms"` // e2e: arrival at the worker → acked
	LatencyP99Ms  float64 `json:"latency_p99_ms"`
	WarmupSeconds float64 `json:"warmup_seconds"`
	CUDAGraphs    bool    `json:"cuda_graphs"` // runs replayed CUDA graphs (--cuda-graphs)
}

func runBenchCmd(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("bench", flag.ContinueOnError)
	var cfg workerConfig
	cfg.register(fs)
	fastaPath := fs.String("fasta", "", "FASTA file (plain or .gz) to embed (required)")
	raw := fs.Bool("raw", false, "run the same batches through ONNX Runtime alone (no NATS, no Arrow), to price the pipeline")
	jsonOut := fs.String("json-out", "", "append the result as one JSON line to this file")
	report := fs.String("report", "", "write PNG plots (throughput over time, batch padding, GPU busy, batch rows) and summary.md into this directory")
	procs := fs.Bool("worker-procs", false, "end to end with one `seqembed worker` process per device of --device "+
		"(each given one device, sharing the durable consumer) instead of one worker driving all of them")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if *fastaPath == "" {
		fs.Usage()
		return flag.ErrHelp
	}
	if *procs && (*raw || *report != "") {
		return fmt.Errorf("bench: --worker-procs measures end to end only, without --raw or --report")
	}
	log, err := telemetry.NewLogger("warn", "console")
	if err != nil {
		return err
	}
	gpu := startGPUMeter(cfg.Device)
	var res benchResult
	var series benchSeries
	switch {
	case *raw:
		res, err = benchRaw(ctx, cfg, *fastaPath, gpu, &series)
	case *procs:
		res, err = benchProcs(ctx, cfg, workerFlagArgs(fs), *fastaPath, log, gpu)
	default:
		res, err = benchE2E(ctx, cfg, *fastaPath, log, gpu, &series)
	}
	gpu.close()
	if err != nil {
		return err
	}
	line, _ := json.Marshal(res)
	fmt.Println(string(line))
	util := "n/a"
	if res.GPUUtil >= 0 {
		util = fmt.Sprintf("%.1f%%", 100*res.GPUUtil)
	}
	if res.WorkerProcs > 0 { // batches, padding, busy and latency live in the worker processes
		fmt.Fprintf(os.Stderr, "bench %s %s inflight=%d, %d worker processes: %.0f residues/s, %.1f seq/s, GPU util %s\n",
			res.Mode, res.Device, res.Inflight, res.WorkerProcs, res.ResiduesPerSec, res.SequencesPerSec, util)
	} else {
		fmt.Fprintf(os.Stderr, "bench %s %s inflight=%d cuda-graphs=%t: %.0f residues/s, %.1f seq/s, padding %.3f, runner busy %.1f%%, GPU util %s, p50 %.0f ms, p99 %.0f ms\n",
			res.Mode, res.Device, res.Inflight, res.CUDAGraphs, res.ResiduesPerSec, res.SequencesPerSec, res.PaddingEfficiency,
			100*res.RunnerBusy, util, res.LatencyP50Ms, res.LatencyP99Ms)
	}
	if len(res.GPUUtilPerDevice) > 0 {
		fmt.Fprintf(os.Stderr, "bench: GPU util per device %v\n", res.GPUUtilPerDevice)
	}
	if *report != "" {
		series.GPU = gpu.samplesIn(series.Start, series.End)
		if err := writeBenchReport(*report, res, &series, reportMeta{Date: time.Now(), Input: *fastaPath, Args: args}); err != nil {
			return fmt.Errorf("bench report: %w", err)
		}
		fmt.Fprintf(os.Stderr, "bench report: %s\n", filepath.Join(*report, reportSummary))
	}
	if *jsonOut != "" {
		f, err := os.OpenFile(*jsonOut, os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o644)
		if err != nil {
			return err
		}
		defer f.Close()
		_, err = fmt.Fprintln(f, string(line))
		return err
	}
	return nil
}

func benchE2E(ctx context.Context, cfg workerConfig, path string, log *zap.Logger, gpu *gpuMeter, series *benchSeries) (benchResult, error) {
	dir, err := os.MkdirTemp("", "seqembed-bench-")
	if err != nil {
		return benchResult{}, err
	}
	defer os.RemoveAll(dir)
	cfg.collectLatency = true
	sum, err := runJob(ctx, path, filepath.Join(dir, "out.parquet"), cfg, nil, log)
	if err != nil {
		return benchResult{}, err
	}
	st := sum.Stats
	*series = e2eSeries(st, sum.Processing, time.Now())
	busy, _, gap := st.busy.Snapshot(false)
	// Residues embedded (after truncation), the same count raw mode reports.
	res := benchResult{Mode: "e2e", Sequences: sum.Embedded, Residues: st.realTokens - 2*int64(st.rows),
		Seconds: sum.Processing.Seconds(), Batches: st.batches, RunnerBusy: busy,
		MeanGapMs: float64(gap.Microseconds()) / 1000, WarmupSeconds: sum.Warmup.Seconds(), CUDAGraphs: sum.CUDAGraphs}
	res.PaddingEfficiency = float64(st.realTokens) / float64(max(1, st.paddedTokens))
	res.LatencyP50Ms, res.LatencyP99Ms = percentileMs(st.latencies, 0.50), percentileMs(st.latencies, 0.99)
	end := time.Now()
	res.GPUUtil, res.GPUUtilPerDevice = gpu.mean(end.Add(-sum.Processing), end), gpu.perDevice(end.Add(-sum.Processing), end)
	return finish(res, cfg)
}

// benchRaw batches the file exactly as the worker's batcher does (every bucket filled, then
// drained) and times only the ORT runs, with cfg.Inflight runs in flight.
func benchRaw(ctx context.Context, cfg workerConfig, path string, gpu *gpuMeter, series *benchSeries) (benchResult, error) {
	dev, err := gpurun.ParseDevice(cfg.Device)
	if err != nil {
		return benchResult{}, err
	}
	opts, err := cfg.runnerOptions(dev)
	if err != nil {
		return benchResult{}, err
	}
	r, err := gpurun.New(cfg.ModelDir, opts...)
	if err != nil {
		return benchResult{}, err
	}
	defer r.Close()
	man := r.Manifest()
	alloc, err := gpurun.NewHostAllocator(cfg.MaxBatchTokens, dev.Kind == "cuda")
	if err != nil {
		return benchResult{}, err
	}
	defer alloc.Close()
	tok, err := batcher.NewTokenizer(man.Residues)
	if err != nil {
		return benchResult{}, err
	}
	bat, err := batcher.New(man.MaxLength, batcher.WithTokenizer(tok), batcher.WithAllocator(alloc),
		batcher.WithMaxBatchTokens(cfg.MaxBatchTokens), batcher.WithMaxBatchRows(cfg.MaxBatchRows),
		batcher.WithMaxWait(time.Hour), batcher.WithQueueSize(1<<16), batcher.WithOutputSize(1<<14),
		batcher.WithBucketStep(cfg.BucketStep))
	if err != nil {
		return benchResult{}, err
	}
	res := benchResult{Mode: "raw"}
	h := bat.Start(ctx)
	err = eachEmbeddable(path, tok, man.MaxLength, func(id string, seq []byte) error {
		res.Sequences++
		res.Residues += int64(len(seq))
		return bat.Add(ctx, batcher.Item{ID: id, Residues: slices.Clone(seq)})
	})
	if err != nil {
		return res, err
	}
	h.Drain()
	var batches []*batcher.Batch
	var shapes [][2]int
	for b := range bat.Out() {
		batches = append(batches, b)
		res.Batches++
		res.PaddingEfficiency += float64(b.Tokens)
	}
	padded := 0
	for _, b := range batches {
		padded += b.Rows * b.Cols
	}
	res.PaddingEfficiency /= float64(max(1, padded))
	if dev.Kind == "cuda" {
		for _, b := range bat.Buckets() {
			shapes = append(shapes, [2]int{b.Rows, b.Cols})
		}
		d, err := r.Warmup(ctx, shapes, alloc)
		if err != nil {
			return res, err
		}
		res.WarmupSeconds = d.Seconds()
	}
	busy := gpurun.NewBusyMeter()
	next := make(chan *batcher.Batch, len(batches))
	for _, b := range batches {
		next <- b
	}
	close(next)
	var wg sync.WaitGroup
	var firstErr error
	var mu sync.Mutex
	start := time.Now()
	for range cfg.Inflight {
		wg.Go(func() {
			var out []float32
			for b := range next {
				end := busy.Begin()
				var err error
				out, err = r.Embed(ctx, gpurun.Input{IDs: b.InputIDs, Mask: b.Mask, Rows: b.Rows, Cols: b.Cols}, out[:0])
				end()
				mu.Lock()
				series.Batches = append(series.Batches, batchPoint{At: time.Now(), Rows: b.Rows, Tokens: b.Tokens, Padded: b.Rows * b.Cols})
				if err != nil {
					firstErr = errors.Join(firstErr, err)
				}
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	elapsed := time.Since(start)
	series.Start, series.End, series.BatchTime = start, start.Add(elapsed), "when the batch's ORT run returned"
	for _, b := range batches {
		b.Release()
	}
	if firstErr != nil {
		return res, firstErr
	}
	res.Seconds = elapsed.Seconds()
	b, _, gap := busy.Snapshot(false)
	res.RunnerBusy, res.MeanGapMs = b, float64(gap.Microseconds())/1000
	res.GPUUtil = gpu.mean(start, start.Add(elapsed))
	res.Model, res.DType, res.CUDAGraphs = man.Name, man.DType, r.CUDAGraphs()
	return finish(res, cfg)
}

// eachEmbeddable calls fn with each record of path that a worker embeds (valid residues; records
// the worker dead-letters are skipped), its residues cut at maxLen. seq aliases the reader's
// buffer: valid only during the call.
func eachEmbeddable(path string, tok *batcher.Tokenizer, maxLen int, fn func(id string, seq []byte) error) error {
	rd, closer, err := fasta.Open(path)
	if err != nil {
		return err
	}
	defer closer.Close()
	for {
		rec, err := rd.Next()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			if fasta.Recoverable(err) {
				continue
			}
			return err
		}
		if tok.Validate(rec.Seq) != nil {
			continue
		}
		if err := fn(rec.ID, rec.Seq[:min(len(rec.Seq), maxLen)]); err != nil {
			return err
		}
	}
}

func finish(res benchResult, cfg workerConfig) (benchResult, error) {
	res.Device, res.Inflight, res.MaxBatchTokens = cfg.Device, cfg.Inflight, cfg.MaxBatchTokens
	if res.Model == "" {
		if man, err := gpurun.LoadManifest(cfg.ModelDir); err == nil {
			res.Model, res.DType = man.Name, man.DType
		}
	}
	if res.Seconds > 0 {
		res.ResiduesPerSec = float64(res.Residues) / res.Seconds
		res.SequencesPerSec = float64(res.Sequences) / res.Seconds
	}
	return res, nil
}

func percentileMs(d []time.Duration, p float64) float64 {
	if len(d) == 0 {
		return 0
	}
	s := slices.Clone(d)
	slices.Sort(s)
	return float64(s[min(len(s)-1, int(p*float64(len(s))))].Microseconds()) / 1000
}

// gpuMeter samples NVML utilisation during a bench run (nothing on the CPU or without NVML).
type gpuMeter struct {
	mu      sync.Mutex
	samples []gpurun.GPUSample
	indices []int // NVML indices sampled, in --device order
	stop    func()
}

func startGPUMeter(device string) *gpuMeter {
	g := &gpuMeter{stop: func() {}}
	devs, err := gpurun.ParseDevices(device)
	if err != nil || len(devs) == 0 || devs[0].Kind != "cuda" {
		return g
	}
	for _, d := range devs {
		g.indices = append(g.indices, d.Index)
	}
	s, err := gpurun.NewNVMLSampler(g.indices, gpurun.WithInterval(200*time.Millisecond),
		gpurun.WithReport(func(x gpurun.GPUSample, _ gpurun.Tier) {
			g.mu.Lock()
			g.samples = append(g.samples, x)
			g.mu.Unlock()
		}))
	if err != nil || !s.Available() {
		return g
	}
	h := s.Start(context.Background())
	g.stop = func() { h.Stop(); <-h.Done(); s.Close() }
	return g
}

func (g *gpuMeter) close() { g.stop() }

// mean is the mean NVML utilisation of samples taken in [from, to] on every device, or -1 if
// there are none.
func (g *gpuMeter) mean(from, to time.Time) float64 { return g.meanOf(from, to, -1) }

// meanOf is mean for NVML device index (all devices when index < 0).
func (g *gpuMeter) meanOf(from, to time.Time, index int) float64 {
	g.mu.Lock()
	defer g.mu.Unlock()
	sum, n := 0.0, 0
	for _, s := range g.samples {
		if !s.Time.Before(from) && !s.Time.After(to) && (index < 0 || s.Index == index) {
			sum += s.Util
			n++
		}
	}
	if n == 0 {
		return -1
	}
	return sum / float64(n)
}

// perDevice is meanOf for each sampled device, in --device order; nil for fewer than two devices.
func (g *gpuMeter) perDevice(from, to time.Time) []float64 {
	if len(g.indices) < 2 {
		return nil
	}
	out := make([]float64, len(g.indices))
	for i, idx := range g.indices {
		out[i] = g.meanOf(from, to, idx)
	}
	return out
}
