package pipeline

import (
	"fmt"
	"time"

	"github.com/seqembed/seqembed/arrowout"
	"github.com/seqembed/seqembed/consumer"
	"github.com/seqembed/seqembed/gpurun"
)

// Config is every setting of the worker. cmd/seqembed fills it from flags (each field's flag is
// named in its comment); Default gives the documented defaults. Validate checks it; New calls
// Validate.
type Config struct {
	ModelDir       string        // --model: directory holding model.onnx and model.json
	Device         string        // --device: cpu, cuda:N, a list (cuda:0,cuda:1) or cuda:all
	Threads        int           // --threads: ORT intra-op threads on the CPU (0 = one per core)
	MaxBatchTokens int           // --max-batch-tokens: padded-token budget of one batch
	MaxBatchRows   int           // --max-batch-rows: most sequences in one batch
	MaxWait        time.Duration // --max-wait: a bucket flushes once its oldest record waited this long
	BucketStep     int           // --bucket-step: bucket lengths are multiples of this many tokens
	Overlength     string        // --overlength: truncate, reject or chunk sequences over the model's max length
	// ChunkWindow (--chunk-window) and ChunkStride (--chunk-stride) are the windows of
	// --overlength chunk, in residues: a record longer than the window is embedded in windows of
	// ChunkWindow residues every ChunkStride residues (batcher.Windows), merged into one row.
	// 0 = the defaults: the model's max length, and half the window. Validated as
	// 0 < stride ≤ window ≤ the model's max length; set only with --overlength chunk.
	ChunkWindow    int
	ChunkStride    int
	MaxRecordBytes int           // --max-record-bytes: larger bodies are dead-lettered
	AckWait        time.Duration // --ack-wait: the server redelivers a record not acked within this
	MaxAckPending  int           // --max-ack-pending: unacked records across all workers
	// MaxHeldTokens (--max-held-tokens) bounds the tokens of the records one worker holds; the
	// consumer pulls only while there is room, the rest stays on the server, safe from this
	// worker's death. 0 = no bound (only MaxAckPending), the default until its effect on GPU
	// throughput is measured (a small budget starves the batcher's buckets, which then flush on
	// the linger). See docs/reliability.md: what a dying worker hands back is redelivered, and
	// each redelivery spends MaxDeliver; where workers die often, set a few batches' worth.
	MaxHeldTokens int
	MaxDeliver    int // --max-deliver: deliveries of one record before it is given up
	// Inflight (--inflight) is how many batches run at once per device; 0 (the default) = 4 on
	// CUDA, 2 on the CPU (InflightPerDevice).
	Inflight int
	InStream string // --in-stream: input stream (work queue, subjects seqs.>)
	// BacklogEvery (--backlog-interval) is how often the worker reads its durable consumer's
	// pending and unacked counts into the seqembed_backlog_records gauge.
	BacklogEvery time.Duration
	// Replicas (--replicas) is the replica count of the streams the worker creates where they
	// are missing; 0 = 3 when the connection is to a cluster of three or more servers, else 1.
	Replicas  int
	OutStream string // --out-stream: output stream (subjects embeddings.>)
	// InMaxBytes (--in-max-bytes) caps the input stream a worker (or `streams`) creates; a full
	// one refuses new records (publish waits). OutMaxBytes (--out-max-bytes, 0 = no cap) and
	// OutMaxAge (--max-age, 0 = for ever) bound the output stream: a full one refuses outputs
	// (inputs stay unacked until a sink makes room), an aged-out output is gone from the stream
	// (read it before). The input stream never ages records out: that would lose them.
	InMaxBytes  int64
	OutMaxBytes int64
	OutMaxAge   time.Duration
	// ShutdownTimeout (--shutdown-timeout) bounds the graceful part of a shutdown: finishing
	// in-flight batches after ctx ends.
	ShutdownTimeout time.Duration
	CUDAOptions     string // --cuda-options: extra ORT CUDA provider options, key=value,...
	CUDAGraphs      string // --cuda-graphs: auto, on or off
	// GraphCopySync (--graph-copy-overlap=false) copies a CUDA-graph batch in and out
	// synchronously around its replay instead of on copy streams overlapping other batches'
	// replays (gpurun.WithGraphCopyOverlap); GraphSessions (--graph-sessions, 0 = InflightPerDevice)
	// is the number of graph-capturing sessions per device (gpurun.WithGraphSessions).
	GraphCopySync bool
	GraphSessions int

	// CollectLatency keeps per-record latencies and a per-batch timeline in Stats (bench).
	CollectLatency bool
	// Hooks inject faults; tests only. The zero value injects nothing.
	Hooks Hooks
}

// Default is the worker's configuration before any flag: the tiny model on the CPU, a 16,384
// padded-token budget, 256 rows, a 50 ms linger, 64-token buckets, 60 s AckWait, 4,096 unacked
// records, 5 deliveries, 4 batches in flight per CUDA device (2 on the CPU), a 30 s shutdown, a
// 1 GiB input stream and an output stream without limits.
func Default() Config {
	return Config{
		ModelDir: "testdata/esm2-tiny", Device: "cpu", MaxBatchTokens: 16384, MaxBatchRows: 256,
		MaxWait: 50 * time.Millisecond, BucketStep: 64, Overlength: "truncate", MaxRecordBytes: 1 << 20,
		AckWait: 60 * time.Second, MaxAckPending: 4096, MaxDeliver: 5,
		InStream: "SEQS", OutStream: arrowout.DefaultStreamName, ShutdownTimeout: 30 * time.Second,
		CUDAGraphs: gpurun.GraphsAuto, BacklogEvery: 5 * time.Second, InMaxBytes: 1 << 30,
	}
}

// Validate reports the first setting that cannot work, naming its flag.
func (c *Config) Validate() error {
	if c.ModelDir == "" {
		return fmt.Errorf("%w: --model is empty", ErrConfig)
	}
	if _, err := gpurun.ParseDevices(c.Device); err != nil {
		return fmt.Errorf("%w: --device: %w", ErrConfig, err)
	}
	overlength, err := consumer.ParseOverlength(c.Overlength)
	if err != nil {
		return fmt.Errorf("%w: --overlength: %w", ErrConfig, err)
	}
	if err := c.validateChunks(overlength); err != nil {
		return err
	}
	if _, err := gpurun.ParseProviderOptions(c.CUDAOptions); err != nil {
		return fmt.Errorf("%w: --cuda-options: %w", ErrConfig, err)
	}
	if _, err := gpurun.ParseCUDAGraphs(c.CUDAGraphs); err != nil {
		return fmt.Errorf("%w: --cuda-graphs: %w", ErrConfig, err)
	}
	for _, v := range []struct {
		flag string
		n    int64
	}{
		{"--max-batch-tokens", int64(c.MaxBatchTokens)},
		{"--max-batch-rows", int64(c.MaxBatchRows)}, {"--bucket-step", int64(c.BucketStep)},
		{"--max-record-bytes", int64(c.MaxRecordBytes)}, {"--ack-wait", int64(c.AckWait)},
		{"--max-ack-pending", int64(c.MaxAckPending)}, {"--max-deliver", int64(c.MaxDeliver)},
		{"--shutdown-timeout", int64(c.ShutdownTimeout)}, {"--max-wait", int64(c.MaxWait)},
		{"--backlog-interval", int64(c.BacklogEvery)},
	} {
		if v.n <= 0 {
			return fmt.Errorf("%w: %s must be > 0", ErrConfig, v.flag)
		}
	}
	if c.InMaxBytes <= 0 {
		return fmt.Errorf("%w: --in-max-bytes %d: want > 0", ErrConfig, c.InMaxBytes)
	}
	if c.OutMaxBytes < 0 {
		return fmt.Errorf("%w: --out-max-bytes %d: want 0 (no cap) or more", ErrConfig, c.OutMaxBytes)
	}
	if c.OutMaxAge < 0 {
		return fmt.Errorf("%w: --max-age %s: want 0 (for ever) or more", ErrConfig, c.OutMaxAge)
	}
	if c.Inflight < 0 {
		return fmt.Errorf("%w: --inflight %d: want 0 (%d on CUDA, %d on the CPU) or more", ErrConfig, c.Inflight, InflightCUDA, InflightCPU)
	}
	if n := c.InflightPerDevice(); c.GraphSessions < 0 || c.GraphSessions > n {
		return fmt.Errorf("%w: --graph-sessions %d: want 0 (= --inflight) to --inflight (%d)", ErrConfig, c.GraphSessions, n)
	}
	if c.Replicas < 0 || c.Replicas > 5 {
		return fmt.Errorf("%w: --replicas %d: want 0 (auto) to 5", ErrConfig, c.Replicas)
	}
	if c.MaxHeldTokens < 0 || (c.MaxHeldTokens > 0 && c.MaxHeldTokens < c.MaxBatchTokens) {
		return fmt.Errorf("%w: --max-held-tokens %d: want 0 (no bound) or at least --max-batch-tokens (%d)", ErrConfig, c.MaxHeldTokens, c.MaxBatchTokens)
	}
	if c.Threads < 0 {
		return fmt.Errorf("%w: --threads %d must be ≥ 0", ErrConfig, c.Threads)
	}
	if c.InStream == "" || c.OutStream == "" {
		return fmt.Errorf("%w: --in-stream and --out-stream must be named", ErrConfig)
	}
	return nil
}

// InflightCUDA and InflightCPU are the batches in flight per device where --inflight is 0. On an
// H200 (docs/perf.md, 2026-12-02 fifth session) 4 batches in flight made ESM-2 8M end to end 5 %
// faster than 2 (the host's gaps between CUDA-graph replays covered; within 1.5 % of raw) and 35M
// 1 % faster, and left 650M and 3B as they were (their GPU already busy); on the CPU the runs
// share the cores, so 2 overlap tokenising and publishing with inference without oversubscribing.
const (
	InflightCUDA = 4
	InflightCPU  = 2
)

// InflightPerDevice is the number of batches run at once on each device: Inflight, or where it
// is 0 InflightCUDA for a CUDA --device and InflightCPU for the CPU (and for a --device Validate
// refuses).
func (c *Config) InflightPerDevice() int {
	if c.Inflight > 0 {
		return c.Inflight
	}
	if kind, err := gpurun.DeviceKind(c.Device); err == nil && kind == "cuda" {
		return InflightCUDA
	}
	return InflightCPU
}

// validateChunks checks the chunk flags that need no model: ≥ 0, stride ≤ window, and set
// only with --overlength chunk (planChunks checks the rest against the model).
func (c *Config) validateChunks(overlength consumer.Overlength) error {
	switch {
	case c.ChunkWindow < 0 || c.ChunkStride < 0:
		return fmt.Errorf("%w: --chunk-window %d and --chunk-stride %d: want 0 (the default) or more", ErrConfig, c.ChunkWindow, c.ChunkStride)
	case overlength != consumer.Chunk && (c.ChunkWindow != 0 || c.ChunkStride != 0):
		return fmt.Errorf("%w: --chunk-window and --chunk-stride are the windows of --overlength chunk (it is %s)", ErrConfig, c.Overlength)
	case c.ChunkWindow > 0 && c.ChunkStride > c.ChunkWindow:
		return fmt.Errorf("%w: --chunk-stride %d > --chunk-window %d: windows would leave residues out", ErrConfig, c.ChunkStride, c.ChunkWindow)
	}
	return nil
}

// runnerOptions are the gpurun options for one runner on dev.
func (c *Config) runnerOptions(dev gpurun.Device) ([]gpurun.Option, error) {
	cuda, err := gpurun.ParseProviderOptions(c.CUDAOptions)
	if err != nil {
		return nil, fmt.Errorf("%w: --cuda-options: %w", ErrConfig, err)
	}
	return []gpurun.Option{gpurun.WithDevice(dev), gpurun.WithThreads(c.Threads), gpurun.WithMaxRows(c.MaxBatchRows),
		gpurun.WithCUDAProviderOptions(cuda), gpurun.WithCUDAGraphs(c.CUDAGraphs), gpurun.WithConcurrentRuns(c.InflightPerDevice()),
		gpurun.WithGraphCopyOverlap(!c.GraphCopySync), gpurun.WithGraphSessions(c.GraphSessions)}, nil
}

// OutStreamConfig is the output stream a worker creates where it is missing, with replicas copies.
func (c *Config) OutStreamConfig(replicas int) arrowout.StreamConfig {
	return arrowout.StreamConfig{Name: c.OutStream, Replicas: replicas, MaxBytes: c.OutMaxBytes, MaxAge: c.OutMaxAge}
}
