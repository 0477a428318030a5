// Package benchrun is `seqembed bench` without its flags: it measures the pipeline on a FASTA
// file end to end (E2E: embedded JetStream → pipeline → Arrow, through internal/localrun), the
// model alone (Raw: the same pipeline.Engine driven without NATS), or one `seqembed worker`
// process per device (Procs), and returns a Result (the JSON line the GPU harness parses) and
// the run's Series (batches and NVML samples over time). WriteReport writes summary.md with the
// data for plots (series.json, result.json, meta.json); `seqembed-lab plot DIR` draws them, so
// that the production binary carries no plotting library.
package benchrun

import (
	"context"
	"errors"
	"os/exec"

	"go.uber.org/zap"

	"github.com/seqembed/seqembed/pipeline"
)

// Job is one bench run.
type Job struct {
	Config pipeline.Config // the worker settings (--model, --device, --inflight, ...)
	FASTA  string          // the input file (plain or .gz)
	// Raw runs the batches through the engine alone (no NATS, no Arrow), to price the pipeline.
	Raw bool
	// WorkerProcs runs end to end with one `seqembed worker` process per device of
	// Config.Device (each given that device alone) instead of one in-process pipeline.
	WorkerProcs bool
	Procs       ProcsOptions // with WorkerProcs
	// SinkFormat is the file format end to end writes the embeddings in: "parquet" (the default
	// when empty) or "arrow" (Arrow IPC file).
	SinkFormat string
	Log        *zap.Logger // nil: no logs
}

// Run runs job with an NVML meter on its devices and returns the result and, for E2E and Raw,
// the series with the NVML samples of the timed part (Procs returns an empty series).
func Run(ctx context.Context, job Job) (Result, *Series, error) {
	if job.Raw && job.WorkerProcs {
		return Result{}, nil, errors.New("bench: worker processes measure end to end only, not raw")
	}
	if job.Log == nil {
		job.Log = zap.NewNop()
	}
	gpu := StartGPUMeter(job.Config.Device)
	var res Result
	series := &Series{}
	var err error
	switch {
	case job.Raw:
		res, series, err = Raw(ctx, job.Config, job.FASTA, job.Log, gpu)
	case job.WorkerProcs:
		res, err = Procs(ctx, job.Config, job.FASTA, job.Procs, job.Log, gpu)
	default:
		res, series, err = E2E(ctx, job.Config, job.FASTA, job.SinkFormat, job.Log, gpu)
	}
	gpu.Close() // every sample taken, so the series gets them all
	if err != nil {
		return res, series, err
	}
	if series != nil && !series.Start.IsZero() {
		series.GPU = gpu.SamplesIn(series.Start, series.End)
	}
	return res, series, nil
}

// ProcsOptions are what Procs needs beyond the configuration.
type ProcsOptions struct {
	// WorkerArgs are the worker flags the bench was given, passed to every worker process
	// (each also gets --nats, --http-addr, --log-level, --log-format and its own --device).
	WorkerArgs []string
	// Command returns the command that runs `seqembed ARGS...`; nil runs this executable.
	Command func(args ...string) (*exec.Cmd, error)
}
