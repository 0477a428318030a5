package pipeline_test

import (
	"context"
	"fmt"
	"math"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/seqembed/seqembed/arrowout"
	"github.com/seqembed/seqembed/consumer"
	"github.com/seqembed/seqembed/esm2graph"
	"github.com/seqembed/seqembed/gpurun"
	"github.com/seqembed/seqembed/internal/e2etest"
	"github.com/seqembed/seqembed/internal/natstest"
)

// readOutputRows reads the output stream through the product's sink (a Parquet file: row slices
// joined, duplicates dropped) until want rows are in, fails if any row was published twice, and
// returns the rows by id.
func readOutputRows(t *testing.T, ctx context.Context, js jetstream.JetStream, want int) (arrowout.Meta, map[string]arrowout.Row) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "out.parquet")
	fs, err := arrowout.NewParquetSink(path)
	if err != nil {
		t.Fatal(err)
	}
	run := arrowout.StartSink(ctx, js, arrowout.DefaultStreamName, "", fs, func(rows int) bool { return rows >= want })
	select {
	case <-run.Done():
	case <-ctx.Done():
		t.Fatalf("waiting for output: %d of %d rows", run.Rows(), want)
	}
	if err := run.Finish(); err != nil {
		t.Fatal(err)
	}
	if d := fs.Duplicates(); d != 0 {
		t.Errorf("%d rows published twice", d)
	}
	meta, list, err := arrowout.ReadParquet(path)
	if err != nil {
		t.Fatal(err)
	}
	rows := map[string]arrowout.Row{}
	for _, r := range list {
		rows[r.ID] = r
	}
	return meta, rows
}

// TestWorkerPublishesOutputs: a worker whose model (the tiny checkpoint built in Go with every
// layer 0..2 × mean, bos and per-residue) has extra outputs publishes them as layout-3 columns;
// every golden record's every column matches PyTorch's fair-esm-semantics reference within 1e-4
// (float16 per-residue columns within float16 rounding, 2e-3), records over the max length
// truncated as the reference is. Batches are halved (an injected out-of-memory over 3 rows), so
// outputs of runs put back together are checked too.
func TestWorkerPublishesOutputs(t *testing.T) {
	ref := e2etest.LoadRefOutputs(t)
	for _, fp16 := range []bool{false, true} {
		t.Run(fmt.Sprintf("residues_fp16=%v", fp16), func(t *testing.T) {
			ctx, _, nc, js := e2etest.Server(t, 120*time.Second)
			cfg := e2etest.Config()
			cfg.ModelDir = e2etest.OutputsModel(t, e2etest.AllOutputs(ref.NumLayers), fp16)
			cfg.MaxWait = 100 * time.Millisecond
			cfg.Hooks.WrapEmbed = e2etest.BeforeEmbed(func(in gpurun.Input) error {
				if in.Rows > 3 {
					return fmt.Errorf("CUDA failure 2: out of memory (injected)")
				}
				return nil
			})
			w, stop := start(t, ctx, nc, cfg)
			recs, index := map[string]string{}, map[string]int{}
			for i, r := range ref.Records {
				body := r.Sequence
				if len(body) == 1022 {
					body += strings.Repeat("A", 300) // truncated back to the reference's 1022
				}
				recs[r.ID], index[r.ID] = body, i
			}
			e2etest.PublishRecords(t, js, w.Model(), recs)
			meta, rows := readOutputRows(t, ctx, js, len(recs))
			stop()
			cols, err := meta.OutputColumns()
			if err != nil || len(cols) != 3*(ref.NumLayers+1)-1 || meta.ResiduesFP16 != fp16 {
				t.Fatalf("meta %+v: columns %v, %v", meta, cols, err)
			}
			perTol := 1e-4
			if fp16 {
				perTol = 2e-3
			}
			checked := 0
			for id, row := range rows {
				i, ok := index[id]
				if !ok {
					t.Fatalf("output id %q never published", id)
				}
				rec := ref.Records[i]
				if int(row.Length) != len(rec.Sequence) || row.Truncated != (len(recs[id]) > 1022) {
					t.Errorf("%s: length %d truncated %v, want %d", id, row.Length, row.Truncated, len(rec.Sequence))
				}
				if d := e2etest.MaxAbsDiff(row.Embedding, rec.Mean[ref.NumLayers]); d > 1e-4 {
					t.Errorf("%s embedding: max abs %.3g vs PyTorch", id, d)
				}
				for k, c := range cols {
					want := ref.RefValues(i, c)
					if want == nil {
						if len(row.Outputs[k]) != int(row.Length)*meta.Dim {
							t.Errorf("%s %s: %d values for %d residues", id, c.Name, len(row.Outputs[k]), row.Length)
						}
						continue
					}
					tol := 1e-4
					if c.Pooling == arrowout.PoolPerResidue {
						tol = perTol
						checked++
					}
					if d := e2etest.MaxAbsDiff(row.Outputs[k], want); d > tol {
						t.Errorf("%s %s: max abs %.3g vs PyTorch (limit %g)", id, c.Name, d, tol)
					}
				}
			}
			if checked == 0 {
				t.Error("no per-residue column checked against the reference")
			}
			e2etest.WaitQueueEmpty(t, js, w.Model())
		})
	}
}

// TestLongRowPublishedInSlices: with per-residue outputs a long record's row alone can exceed
// max_payload (here 256 KiB: 1022 residues × 64 × 3 layers of float32 is 785 KB). It is
// published as row slices (arrowout.HeaderResidues), which the sink joins into the row the model
// computed (every per-residue column 1022 × 64 values, equal to the same record's row from a
// server whose max_payload fits it whole); its batch-mates are published whole; nothing is
// dead-lettered or redelivered and the work queue ends empty.
func TestLongRowPublishedInSlices(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	e2etest.RequireORT(t)
	model := e2etest.OutputsModel(t, []esm2graph.Output{{Layer: 0, Pooling: esm2graph.PoolPerResidue},
		{Layer: 1, Pooling: esm2graph.PoolPerResidue}, {Layer: 2, Pooling: esm2graph.PoolPerResidue}, {Layer: 2, Pooling: esm2graph.PoolMean}}, false)
	recs := map[string]string{"huge": strings.Repeat("MKTAYIAKQR", 102)}
	for i := range 5 {
		recs[fmt.Sprint("small", i)] = strings.Repeat("MKTAYIAKQR", 3+i)
	}
	embed := func(maxPayload int32) (map[string]arrowout.Row, int) {
		srv := natstest.Server(t, func(o *server.Options) { o.MaxPayload = maxPayload })
		nc, js := natstest.Connect(t, srv)
		cfg := e2etest.Config()
		cfg.ModelDir = model
		cfg.MaxWait = 200 * time.Millisecond // one batch for all records
		w, stop := start(t, ctx, nc, cfg)
		e2etest.PublishRecords(t, js, w.Model(), recs)
		_, rows := readOutputRows(t, ctx, js, len(recs))
		e2etest.WaitQueueEmpty(t, js, w.Model())
		stop()
		if info := e2etest.DurableInfo(t, ctx, js, w.Model()); info.NumRedelivered != 0 {
			t.Errorf("max_payload %d: %d redelivered", maxPayload, info.NumRedelivered)
		}
		if dls, err := consumer.ReadDeadLetters(ctx, js, "SEQS", w.Model(), "", 0); err != nil || len(dls) != 0 {
			t.Errorf("max_payload %d: dead letters %+v, %v", maxPayload, dls, err)
		}
		n := 0
		for _, m := range natstest.StoredMsgs(t, ctx, e2etest.MustStream(t, ctx, js, arrowout.DefaultStreamName)) {
			if m.Header.Get(arrowout.HeaderResidues) != "" {
				n++
			}
		}
		return rows, n
	}
	small, sliced := embed(256 << 10)
	whole, none := embed(8 << 20)
	if sliced < 4 || none != 0 {
		t.Fatalf("%d row slices under 256 KiB (want >= 4: 785 KB), %d under 8 MiB (want 0)", sliced, none)
	}
	// Batches may form differently on the two servers: values agree to float32 rounding.
	near := func(a, b []float32) bool {
		if len(a) != len(b) {
			return false
		}
		for i := range a {
			if math.Abs(float64(a[i]-b[i])) > 1e-5 {
				return false
			}
		}
		return true
	}
	for id := range recs {
		g, w := small[id], whole[id]
		if g.Length != w.Length || len(g.Outputs) != 3 || !near(g.Embedding, w.Embedding) {
			t.Fatalf("%s: length %d vs %d, %d outputs", id, g.Length, w.Length, len(g.Outputs))
		}
		for k := range g.Outputs {
			if !near(g.Outputs[k], w.Outputs[k]) {
				t.Errorf("%s output %d differs between the sliced and the whole row", id, k)
			}
		}
	}
	if h := small["huge"]; h.Length != 1020 || len(h.Outputs[0]) != 1020*64 {
		t.Errorf("huge: length %d, %d per-residue values", h.Length, len(h.Outputs[0]))
	}
}
