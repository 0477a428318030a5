package pipeline_test

import (
	"context"
	"fmt"
	"path/filepath"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/seqembed/seqembed/arrowout"
	"github.com/seqembed/seqembed/esm2graph"
	"github.com/seqembed/seqembed/gpurun"
	"github.com/seqembed/seqembed/internal/e2etest"
	"github.com/seqembed/seqembed/internal/localrun"
	"github.com/seqembed/seqembed/internal/natstest"
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

// BenchmarkHostPathWide is the host path at real models' widths with the sink in the process, as
// `seqembed run` and bench e2e have it: records of 50–500 residues published first, the worker's
// model call replaced by zeros shaped as the graph's outputs (a one-layer random checkpoint of the
// width, built in Go: esm2graph.RandomCheckpoint), Arrow encode, publish (64 MiB max_payload, as
// `seqembed run` has it), ack, and the sink (on its own connection, as localrun has it)
// writing every row to an Arrow IPC file, timed until the file has every row. dim320 is ESM-2 8M's
// width (issue #19: 8M end to end is host-bound), dim1280 650M's, per-residue its last layer's
// states in float16 (issue #16). The naive baseline is BenchmarkHostPath (dim 64, no sink).
func BenchmarkHostPathWide(b *testing.B) {
	for _, c := range []struct {
		name    string
		dim     int
		outputs string
	}{{"dim320", 320, ""}, {"dim1280", 1280, ""}, {"dim1280-per-residue-fp16", 1280, "mean:-1,per-residue:-1"}} {
		b.Run(c.name, func(b *testing.B) {
			benchHostPathWide(b, c.dim, c.outputs)
		})
	}
}

func benchHostPathWide(b *testing.B, dim int, outputs string) {
	ck, err := esm2graph.RandomCheckpoint(esm2graph.Config{HiddenSize: dim, NumAttentionHeads: 20, NumHiddenLayers: 1, IntermediateSize: 64}, 1)
	if err != nil {
		b.Fatal(err)
	}
	outs, err := esm2graph.ParseOutputs(outputs)
	if err != nil {
		b.Fatal(err)
	}
	dir := filepath.Join(b.TempDir(), "model")
	if _, err := esm2graph.Build(context.Background(), ck, dir, esm2graph.Options{Device: esm2graph.DeviceCPU,
		Name: fmt.Sprintf("wide%d", dim), Outputs: outs, ResiduesFP16: outputs != ""}); err != nil {
		b.Fatal(err)
	}
	man, err := gpurun.LoadManifest(dir)
	if err != nil {
		b.Fatal(err)
	}
	// max_payload as `seqembed run`'s embedded server has it (64 MiB; messages stay under the file
	// store's 32 MiB).
	srv := natstest.Server(b, func(o *server.Options) { o.MaxPayload = localrun.EmbeddedMaxPayload })
	nc, js := natstest.Connect(b, srv)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	cfg := e2etest.Config()
	cfg.ModelDir = dir
	cfg.MaxAckPending = 1 << 16
	cfg.Hooks.WrapEmbed = func(pipeline.EmbedFunc) pipeline.EmbedFunc { return zeroOutputs(man) }
	n := max(b.N, 2000)
	w := e2etest.NewWorkerConn(b, ctx, nc, cfg)
	ids, seqs := e2etest.RandomSeqs("h", n, 5)
	residues := 0
	for _, s := range seqs {
		residues += len(s)
	}
	e2etest.PublishAsync(b, ctx, js, w.Model(), ids, seqs)
	fs, err := arrowout.NewFileSink("arrow", filepath.Join(b.TempDir(), "out.arrow"))
	if err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	start := time.Now()
	// The sink on a connection of its own, as localrun has it.
	_, sinkJS := natstest.Connect(b, srv)
	sink := arrowout.StartSink(ctx, sinkJS, arrowout.DefaultStreamName, "", fs, func(rows int) bool { return rows >= n })
	w.Start(b, ctx)
	select {
	case <-sink.Done():
	case <-ctx.Done():
		b.Fatalf("sink: %d of %d rows", sink.Rows(), n)
	}
	el := time.Since(start)
	b.StopTimer()
	if err := sink.Finish(); err != nil {
		b.Fatal(err)
	}
	b.ReportMetric(float64(n)/el.Seconds(), "records/s")
	b.ReportMetric(float64(residues)/el.Seconds(), "residues/s")
	b.ReportMetric(float64(srv.NumSlowConsumers()), "slow-consumers")
	b.ReportMetric(0, "ns/op")
}

// zeroOutputs is a model call that returns zeros shaped as man's outputs, as gpurun's EmbedAll
// returns them (per-residue states allocated per batch, rows × cols × dim, then compacted to the
// residues), without running anything.
func zeroOutputs(man *gpurun.Manifest) pipeline.EmbedFunc {
	return func(_ context.Context, in gpurun.Input, dst []float32) ([]float32, *gpurun.Result, error) {
		dim := man.EmbeddingDim
		if man.SingleOutput() {
			return append(dst, make([]float32, in.Rows*dim)...), nil, nil
		}
		res := gpurun.NewResult(in, dim)
		for _, o := range man.Outputs {
			v := gpurun.OutputValues{OutputSpec: o}
			switch {
			case !o.PerResidue():
				v.F32 = make([]float32, in.Rows*dim)
			case o.DType == "float16":
				v.F16 = make([]uint16, in.Rows*in.Cols*dim)[:res.Offsets[in.Rows]*dim]
			default:
				v.F32 = make([]float32, in.Rows*in.Cols*dim)[:res.Offsets[in.Rows]*dim]
			}
			res.Outputs = append(res.Outputs, v)
		}
		return append(dst, res.Output("embedding").F32...), res, nil
	}
}
