package main

import (
	"context"
	"flag"
	"os"
	"path/filepath"
	"strconv"

	"go.uber.org/zap"

	"github.com/seqembed/seqembed/pipeline"
	"github.com/seqembed/seqembed/telemetry"
)

// registerConfig registers the worker's flags on fs, each filling its field of c; the defaults
// are pipeline.Default()'s.
func registerConfig(fs *flag.FlagSet, c *pipeline.Config) {
	d := pipeline.Default()
	d.ModelDir = defaultModelDir(d.ModelDir)
	fs.StringVar(&c.ModelDir, "model", d.ModelDir, "model directory holding model.onnx and model.json, or hf:ORG/NAME[@REV]: a Hugging Face checkpoint, pulled and its graph built in the cache on first use (seqembed model)")
	fs.StringVar(&c.Device, "device", d.Device, "where inference runs: cpu, cuda:N, a list (cuda:0,cuda:1: one runner per GPU fed by one batcher) or cuda:all")
	fs.IntVar(&c.Threads, "threads", d.Threads, "ONNX Runtime intra-op threads on the CPU (0 = one per core)")
	fs.IntVar(&c.MaxBatchTokens, "max-batch-tokens", d.MaxBatchTokens, "padded-token budget of one batch (rows × bucket length)")
	fs.IntVar(&c.MaxBatchRows, "max-batch-rows", d.MaxBatchRows, "most sequences in one batch")
	fs.DurationVar(&c.MaxWait, "max-wait", d.MaxWait, "a bucket flushes once its oldest record has waited this long")
	fs.IntVar(&c.BucketStep, "bucket-step", d.BucketStep, "bucket lengths are multiples of this many tokens: smaller pads less but makes more shapes to warm up")
	fs.StringVar(&c.Overlength, "overlength", d.Overlength, "sequences over the model's max length: truncate (flagged in the output), reject (dead-lettered) or chunk (embedded whole in overlapping windows merged into one row; needs a model with the per-residue output of every mean-pooled layer: seqembed model build --outputs per-residue:-1,...)")
	fs.IntVar(&c.ChunkWindow, "chunk-window", d.ChunkWindow, "--overlength chunk: window in residues; longer sequences are chunked (0 = the model's max length)")
	fs.IntVar(&c.ChunkStride, "chunk-stride", d.ChunkStride, "--overlength chunk: residues between window starts, at most the window (0 = half the window)")
	fs.IntVar(&c.MaxRecordBytes, "max-record-bytes", d.MaxRecordBytes, "records with a larger body are dead-lettered")
	fs.DurationVar(&c.AckWait, "ack-wait", d.AckWait, "server redelivers a record not acked within this time")
	fs.IntVar(&c.MaxAckPending, "max-ack-pending", d.MaxAckPending, "unacked records allowed across all workers of the durable consumer")
	fs.IntVar(&c.MaxDeliver, "max-deliver", d.MaxDeliver, "deliveries of one record before it is given up")
	fs.IntVar(&c.MaxHeldTokens, "max-held-tokens", d.MaxHeldTokens, "most tokens of records one worker holds; pulls wait for room, the rest stays on the server (0 = no bound but --max-ack-pending): what a dying worker hands back is redelivered, spending --max-deliver, so where workers die often set a few batches' worth (docs/reliability.md)")
	fs.StringVar(&c.CUDAOptions, "cuda-options", d.CUDAOptions, "extra ONNX Runtime CUDA provider options, key=value,... (e.g. sdpa_kernel=8 for cuDNN attention in mha graphs); they override seqembed's own")
	fs.StringVar(&c.CUDAGraphs, "cuda-graphs", d.CUDAGraphs, "CUDA graphs, one per bucket shape captured at warm-up: auto (for --fused mha exports on CUDA), on or off")
	fs.BoolFunc("graph-copy-overlap", "CUDA graphs: copy batches in and out on copy streams while other batches replay (default true; =false: synchronous copies around each replay)",
		func(v string) error {
			on, err := strconv.ParseBool(v)
			c.GraphCopySync = !on
			return err
		})
	fs.IntVar(&c.GraphSessions, "graph-sessions", d.GraphSessions, "CUDA-graph sessions per device (0 = --inflight); fewer sessions than batches in flight lets copies overlap replays")
	fs.IntVar(&c.Inflight, "inflight", d.Inflight, "batches in flight at once per device, inference and publishing overlapping (0 = 4 on CUDA, 2 on the CPU)")
	fs.StringVar(&c.InStream, "in-stream", d.InStream, "input stream (work queue, subjects seqs.>)")
	fs.StringVar(&c.OutStream, "out-stream", d.OutStream, "output stream (subjects embeddings.>)")
	fs.DurationVar(&c.BacklogEvery, "backlog-interval", d.BacklogEvery, "how often the consumer's pending + unacked counts are read into seqembed_backlog_records")
	c.InMaxBytes, c.OutMaxBytes = d.InMaxBytes, d.OutMaxBytes
	fs.Var(byteSize{&c.InMaxBytes}, "in-max-bytes", "size cap of the input stream where it is created (or changed by `streams`): a full one refuses new records and `publish` waits (e.g. 10GiB)")
	fs.Var(byteSize{&c.OutMaxBytes}, "out-max-bytes", "size cap of the output stream where it is created (or changed by `streams`), 0 = none: a full one refuses outputs and their records wait unacked until a sink makes room")
	fs.DurationVar(&c.OutMaxAge, "max-age", d.OutMaxAge, "how long the output stream keeps embeddings, where it is created (or changed by `streams`), 0 = for ever (the input stream never ages records out)")
	fs.IntVar(&c.Replicas, "replicas", d.Replicas, "replicas of the streams a worker creates where they are missing (0 = 3 in a cluster of 3 or more servers, else 1)")
	fs.DurationVar(&c.ShutdownTimeout, "shutdown-timeout", d.ShutdownTimeout, "on SIGTERM, time allowed to finish in-flight batches")
}

func runWorkerCmd(ctx context.Context, args []string, hooks pipeline.Hooks) error {
	fs := flag.NewFlagSet("worker", flag.ContinueOnError)
	var cfg pipeline.Config
	registerConfig(fs, &cfg)
	var nf natsFlags
	nf.register(fs)
	httpAddr := fs.String("http-addr", ":9090", "address of /metrics, /healthz and /readyz (empty = off)")
	logLevel := fs.String("log-level", "info", "debug, info, warn or error")
	logFormat := fs.String("log-format", "json", "json or console")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	cfg.Hooks = hooks
	log, err := telemetry.NewLogger(*logLevel, *logFormat)
	if err != nil {
		return err
	}
	if err := resolveHFModel(ctx, &cfg, os.Stderr); err != nil {
		return err
	}
	defer log.Sync()
	reg, err := telemetry.NewRegistry() // Go runtime and process collectors included
	if err != nil {
		return err
	}
	health := telemetry.NewHealth()
	connMetrics, err := telemetry.NewConnMetrics(reg)
	if err != nil {
		return err
	}
	nc, err := nf.connectWatched("seqembed worker", log, health, connMetrics)
	if err != nil {
		return err
	}
	defer nc.Drain()
	if *httpAddr != "" {
		srv, err := telemetry.NewServer(*httpAddr, reg, health, log)
		if err != nil {
			return err
		}
		if err := srv.Start(); err != nil {
			return err
		}
		defer srv.Shutdown(context.Background())
		log.Info("telemetry", zap.String("addr", srv.Addr()))
	}
	p, err := pipeline.New(ctx, cfg, pipeline.Deps{Conn: nc, Log: log, Registerer: reg, Health: health})
	if err != nil {
		health.Fail(err)
		return err
	}
	return p.Run(ctx)
}

// defaultModelDir finds the default model (the tiny one of the repository, rel) from wherever the
// command runs: rel itself where it exists (the repository's root), else next to the binary
// (bin/seqembed of a checkout: ../testdata/esm2-tiny) or beside it; rel unchanged when none is
// there, so the error names the path a user expects.
func defaultModelDir(rel string) string {
	if _, err := os.Stat(filepath.Join(rel, "model.json")); err == nil {
		return rel
	}
	exe, err := os.Executable()
	if err != nil {
		return rel
	}
	if real, err := filepath.EvalSymlinks(exe); err == nil {
		exe = real
	}
	for _, dir := range []string{filepath.Join(filepath.Dir(exe), "..", rel), filepath.Join(filepath.Dir(exe), rel)} {
		if _, err := os.Stat(filepath.Join(dir, "model.json")); err == nil {
			return filepath.Clean(dir)
		}
	}
	return rel
}
