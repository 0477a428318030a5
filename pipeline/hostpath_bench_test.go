package pipeline_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/seqembed/seqembed/gpurun"
	"github.com/seqembed/seqembed/internal/e2etest"
	"github.com/seqembed/seqembed/internal/testutil"
	"github.com/seqembed/seqembed/pipeline"
)

// BenchmarkHostPath is the worker's host path alone: consumer → batcher → (no model: a run returns
// zeros at once) → Arrow encode → publish → ack, through a real in-process JetStream, records of
// 50–500 residues, dim 64 (the tiny model's). Its records/s is the ceiling the host puts on any
// model (issue #19: 8M end to end waits ~1 ms per batch on the host). The naive baseline is
// BenchmarkHostPath with --inflight 1: nothing overlaps.
func BenchmarkHostPath(b *testing.B) {
	for _, inflight := range []int{1, 2, 4} {
		b.Run("inflight"+string(rune('0'+inflight)), func(b *testing.B) {
			benchHostPath(b, inflight)
		})
	}
}

func benchHostPath(b *testing.B, inflight int) {
	ctx, _, nc, js := e2etest.Server(b, 10*time.Minute)
	cfg := e2etest.Config()
	cfg.Inflight = inflight
	cfg.MaxAckPending = 1 << 16
	cfg.Hooks.WrapEmbed = func(pipeline.EmbedFunc) pipeline.EmbedFunc {
		return func(_ context.Context, in gpurun.Input, dst []float32) ([]float32, *gpurun.Result, error) {
			return append(dst, make([]float32, in.Rows*64)...), nil, nil
		}
	}
	n := max(b.N, 2000)
	w := e2etest.NewWorkerConn(b, ctx, nc, cfg)
	ids, seqs := e2etest.RandomSeqs("h", n, 5)
	e2etest.PublishAsync(b, ctx, js, w.Model(), ids, seqs)
	b.ResetTimer()
	start := time.Now()
	w.Start(b, ctx)
	testutil.Eventually(b, 5*time.Minute, func() (bool, string) {
		st := w.P.Stats()
		return st.Acked >= n, fmt.Sprintf("%d of %d acked", st.Acked, n)
	})
	e2etest.WaitQueueEmpty(b, js, w.Model())
	el := time.Since(start)
	b.StopTimer()
	b.ReportMetric(float64(n)/el.Seconds(), "records/s")
	b.ReportMetric(0, "ns/op")
}
