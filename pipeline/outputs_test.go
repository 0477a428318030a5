package pipeline_test

import (
	"context"
	"fmt"
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

// readOutputRows reads the output stream until want distinct ids have arrived: the rows by id
// (each id must come once) and the streams' Meta.
func readOutputRows(t *testing.T, ctx context.Context, js jetstream.JetStream, want int) (arrowout.Meta, map[string]arrowout.Row) {
	t.Helper()
	oc := e2etest.OutputConsumer(t, ctx, js)
	rows := map[string]arrowout.Row{}
	var meta arrowout.Meta
	for len(rows) < want {
		m, err := oc.Next(jetstream.FetchMaxWait(30 * time.Second))
		if err != nil {
			t.Fatalf("waiting for output (%d of %d ids): %v", len(rows), want, err)
		}
		mm, rs, err := arrowout.Decode(m.Data())
		if err != nil {
			t.Fatal(err)
		}
		meta = mm
		for _, r := range rs {
			if _, dup := rows[r.ID]; dup {
				t.Errorf("%s published twice", r.ID)
			}
			rows[r.ID] = r
		}
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

// TestRowTooLargeDeadLettered: with per-residue outputs a long record's row alone can exceed
// max_payload (here 256 KiB: 1022 residues × 64 × 3 layers of float32 is 785 KB). Its record is
// dead-lettered once with reason output_too_large and a message naming the size, the limit and
// the remedies; its batch-mates are published and acked; nothing is retried for ever (the work
// queue ends empty).
func TestRowTooLargeDeadLettered(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	e2etest.RequireORT(t)
	srv := natstest.Server(t, func(o *server.Options) { o.MaxPayload = 256 << 10 })
	nc, js := natstest.Connect(t, srv)
	cfg := e2etest.Config()
	cfg.ModelDir = e2etest.OutputsModel(t, []esm2graph.Output{{Layer: 0, Pooling: esm2graph.PoolPerResidue},
		{Layer: 1, Pooling: esm2graph.PoolPerResidue}, {Layer: 2, Pooling: esm2graph.PoolPerResidue}, {Layer: 2, Pooling: esm2graph.PoolMean}}, false)
	cfg.MaxWait = 200 * time.Millisecond // one batch for all records
	w, stop := start(t, ctx, nc, cfg)
	recs := map[string]string{"huge": strings.Repeat("MKTAYIAKQR", 102)}
	for i := range 5 {
		recs[fmt.Sprint("small", i)] = strings.Repeat("MKTAYIAKQR", 3+i)
	}
	e2etest.PublishRecords(t, js, w.Model(), recs)
	_, rows := readOutputRows(t, ctx, js, len(recs)-1)
	if _, ok := rows["huge"]; ok {
		t.Error("the too-large row was published")
	}
	dls := e2etest.DeadLetters(t, ctx, js, w.Model(), 1)
	if len(dls) != 1 || dls[0].ID != "huge" || dls[0].Reason != consumer.ReasonOutputTooLarge ||
		!strings.Contains(dls[0].Error, "row too large for max_payload") || !strings.Contains(dls[0].Error, "float16") {
		t.Fatalf("dead letters %+v", dls)
	}
	e2etest.WaitQueueEmpty(t, js, w.Model())
	stop()
	if info := e2etest.DurableInfo(t, ctx, js, w.Model()); info.NumRedelivered != 0 {
		t.Errorf("%d redelivered", info.NumRedelivered)
	}
}
