package benchrun

import (
	"slices"
	"time"

	"github.com/seqembed/seqembed/gpurun"
	"github.com/seqembed/seqembed/pipeline"
)

// Result is one bench run, printed as one JSON line (the GPU harness parses these fields).
type Result struct {
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
	CUDAGraphs    bool    `json:"cuda_graphs"`           // runs replayed CUDA graphs (--cuda-graphs)
	SinkFormat    string  `json:"sink_format,omitempty"` // e2e: the output file's format (parquet, arrow)
	// SlowConsumers (e2e): connections the embedded server dropped for falling behind (localrun.Summary).
	SlowConsumers int64 `json:"nats_slow_consumers"`
	// CUDA-graph runs only: copies on copy streams (--graph-copy-overlap), sessions per device,
	// and per batch (means over the timed part, gpurun.GraphStats): queued before its replay,
	// replaying, after the replay until the outputs were back, and the session's idle gap
	// before it.
	GraphCopyOverlap bool    `json:"graph_copy_overlap,omitempty"`
	GraphSessions    int     `json:"graph_sessions,omitempty"`
	GraphQueueMs     float64 `json:"graph_queue_ms,omitempty"`
	GraphRunMs       float64 `json:"graph_run_ms,omitempty"`
	GraphFinishMs    float64 `json:"graph_finish_ms,omitempty"`
	GraphGapMs       float64 `json:"graph_gap_ms,omitempty"`
}

// graphTimes fills res's per-batch CUDA-graph means from the counters' change between before and after.
func graphTimes(res *Result, cfg pipeline.Config, before, after gpurun.GraphStats) {
	n := after.Batches - before.Batches
	if n <= 0 {
		return
	}
	per := func(a, b time.Duration) float64 { return ms((a - b) / time.Duration(n)) }
	res.GraphCopyOverlap, res.GraphSessions = !cfg.GraphCopySync, cfg.GraphSessions
	if res.GraphSessions == 0 {
		res.GraphSessions = cfg.InflightPerDevice()
	}
	res.GraphQueueMs, res.GraphRunMs = per(after.Queue, before.Queue), per(after.Run, before.Run)
	res.GraphFinishMs, res.GraphGapMs = per(after.Finish, before.Finish), per(after.Gap, before.Gap)
}

// finish fills in what every mode reports the same way: the configuration, the model (from the
// manifest if the mode did not load it) and the rates.
func finish(res Result, cfg pipeline.Config) Result {
	res.Device, res.Inflight, res.MaxBatchTokens = cfg.Device, cfg.InflightPerDevice(), cfg.MaxBatchTokens
	if res.Model == "" {
		if man, err := gpurun.LoadManifest(cfg.ModelDir); err == nil {
			res.Model, res.DType = man.Name, man.DType
		}
	}
	if res.Seconds > 0 {
		res.ResiduesPerSec = float64(res.Residues) / res.Seconds
		res.SequencesPerSec = float64(res.Sequences) / res.Seconds
	}
	return res
}

// percentileMs is the p-quantile (0..1) of d in milliseconds; 0 for none.
func percentileMs(d []time.Duration, p float64) float64 {
	if len(d) == 0 {
		return 0
	}
	s := slices.Clone(d)
	slices.Sort(s)
	return float64(s[min(len(s)-1, int(p*float64(len(s))))].Microseconds()) / 1000
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
