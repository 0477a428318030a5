package benchrun

import (
	"context"
	"os"
	"path/filepath"
	"time"

	"go.uber.org/zap"

	"github.com/seqembed/seqembed/arrowout"
	"github.com/seqembed/seqembed/internal/localrun"
	"github.com/seqembed/seqembed/pipeline"
)

// E2E runs the whole job in one process (localrun.Run: embedded JetStream, one pipeline, the
// file published, every output sunk to a temporary file of format, "parquet" (also when empty)
// or "arrow") and times it from the first publish to the last record done. gpu may be nil.
func E2E(ctx context.Context, cfg pipeline.Config, path, format string, log *zap.Logger, gpu *GPUMeter) (Result, *Series, error) {
	if log == nil {
		log = zap.NewNop()
	}
	dir, err := os.MkdirTemp("", "seqembed-bench-")
	if err != nil {
		return Result{}, nil, err
	}
	defer os.RemoveAll(dir)
	cfg.CollectLatency = true
	if format == "" {
		format = arrowout.FormatParquet
	}
	// The file's suffix is its format; localrun refuses (arrowout.FileFormat) any other.
	sum, err := localrun.Run(ctx, path, filepath.Join(dir, "out."+format), cfg, nil, log)
	if err != nil {
		return Result{}, nil, err
	}
	st := sum.Stats
	series := e2eSeries(st.Timeline, sum.Processing, time.Now())
	// Residues embedded (after truncation), the same count raw mode reports.
	res := Result{Mode: "e2e", Sequences: sum.Embedded, Residues: st.Residues(), Seconds: sum.Processing.Seconds(),
		Batches: st.Batches, RunnerBusy: sum.Busy, MeanGapMs: ms(sum.MeanGap), WarmupSeconds: sum.Warmup.Seconds(),
		CUDAGraphs: sum.CUDAGraphs, SinkFormat: format, SlowConsumers: sum.SlowConsumers}
	res.PaddingEfficiency = float64(st.RealTokens) / float64(max(1, st.PaddedTokens))
	graphTimes(&res, cfg, sum.GraphsBefore, sum.GraphsAfter)
	res.LatencyP50Ms, res.LatencyP99Ms = percentileMs(st.Latencies, 0.50), percentileMs(st.Latencies, 0.99)
	res.GPUUtil, res.GPUUtilPerDevice = gpu.Mean(series.Start, series.End), gpu.PerDevice(series.Start, series.End)
	return finish(res, cfg), series, nil
}
