package pipeline_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/seqembed/seqembed/arrowout"
	"github.com/seqembed/seqembed/consumer"
	"github.com/seqembed/seqembed/gpurun"
	"github.com/seqembed/seqembed/internal/e2etest"
	"github.com/seqembed/seqembed/pipeline"
)

// TestWorkerEndToEnd: records (good and bad) → worker → every valid id exactly once on the
// output with PyTorch-matching embeddings, every bad one dead-lettered with its reason, and the
// work queue ends empty.
func TestWorkerEndToEnd(t *testing.T) {
	ctx, _, nc, js := e2etest.Server(t, 60*time.Second)
	w := e2etest.NewWorkerConn(t, ctx, nc, e2etest.Config()).Start(t, ctx)

	golden := e2etest.LoadGolden(t)
	pub := func(id, body string) {
		if _, err := js.PublishMsg(ctx, e2etest.InputMsg(w.Model(), id, body)); err != nil {
			t.Fatal(err)
		}
	}
	long := map[string]bool{}
	for id, r := range golden {
		body := r.Sequence
		if len(body) == 1022 { // the exporter truncated it: publish the full-length original
			body += strings.Repeat("A", 300)
			long[id] = true
		}
		pub(id, body[:len(body)/2]+"\n"+body[len(body)/2:]) // a newline inside is ignored
	}
	bad := map[string]string{
		"bad-lower": consumer.ReasonInvalid, "bad-stop": consumer.ReasonInvalid,
		"bad-empty": consumer.ReasonEmpty, "bad-bytes": consumer.ReasonInvalid,
	}
	pub("bad-lower", "MKTayia")
	pub("bad-stop", "MKTAY*")
	pub("bad-empty", "  \n")
	pub("bad-bytes", "MK\xff\xfeT")
	pub("", "MKTAYIAK") // no id: never synthesised

	// Read the output stream until every valid id is there.
	oc := e2etest.OutputConsumer(t, ctx, js)
	seen := map[string]int{}
	for len(seen) < len(golden) {
		m, err := oc.Next(jetstream.FetchMaxWait(30 * time.Second))
		if err != nil {
			t.Fatalf("waiting for output (%d of %d ids): %v", len(seen), len(golden), err)
		}
		meta, rows, err := arrowout.Decode(m.Data())
		if err != nil {
			t.Fatal(err)
		}
		if dir := os.Getenv("SEQEMBED_DUMP_IPC"); dir != "" { // real messages for cross-language checks
			os.WriteFile(filepath.Join(dir, fmt.Sprintf("msg%d.arrows", len(seen))), m.Data(), 0o644)
		}
		if meta.Model != "esm2-tiny" || meta.Dim != 64 || meta.Pooling != "mean" {
			t.Fatalf("meta %+v", meta)
		}
		for _, r := range rows {
			seen[r.ID]++
			g, ok := golden[r.ID]
			if !ok {
				t.Fatalf("output has id %q that was never published", r.ID)
			}
			if r.Truncated != long[r.ID] || int(r.Length) != len(g.Sequence) {
				t.Errorf("%s: truncated=%v length=%d, want %v %d", r.ID, r.Truncated, r.Length, long[r.ID], len(g.Sequence))
			}
			e2etest.CheckEmbedding(t, r.ID, r.Embedding, g.Embedding)
		}
	}
	for id, n := range seen {
		if n != 1 {
			t.Errorf("%s appears %d times", id, n)
		}
	}

	// Dead letters: every bad record with its reason.
	got := map[string]string{}
	for _, d := range e2etest.DeadLetters(t, ctx, js, w.Model(), len(bad)+1) {
		got[d.ID] = d.Reason
		if d.Error == "" || (d.ID != "" && d.StreamSeq == 0) {
			t.Errorf("dead letter %+v lacks its error or stream seq", d)
		}
	}
	bad[""] = consumer.ReasonMissingID
	for id, reason := range bad {
		if got[id] != reason {
			t.Errorf("dead letter %q: reason %q, want %q", id, got[id], reason)
		}
	}

	if err := w.Wait(); err != nil {
		t.Fatal(err)
	}
	// The input subject is empty and nothing is pending on the durable consumer.
	e2etest.WaitQueueEmpty(t, js, w.Model())
}

// TestPoisonRecordIsolated: a record that makes the model fail is found by splitting its batch,
// dead-lettered with reason model_error; its batch-mates are embedded once each.
func TestPoisonRecordIsolated(t *testing.T) {
	ctx, _, nc, js := e2etest.Server(t, 60*time.Second)
	cfg := e2etest.Config()
	cfg.MaxWait = 200 * time.Millisecond // one batch for all records
	var runs atomic.Int64
	cfg.Hooks.WrapEmbed = e2etest.BeforeEmbed(func(in gpurun.Input) error {
		runs.Add(1)
		if slices.Contains(in.IDs[:in.Rows*in.Cols], 28) { // 'O' (pyrrolysine) poisons this test's model
			return errors.New("injected model failure")
		}
		return nil
	})
	w, stop := start(t, ctx, nc, cfg)
	recs := map[string]string{"poison": "MKTAYOAK"}
	for i := range 10 {
		recs[fmt.Sprint("ok", i)] = "MKTAYIAKQRQISFVKSHFSRQ"[:10+i]
	}
	e2etest.PublishRecords(t, js, w.Model(), recs)
	seen := e2etest.OutputIDs(t, js, 10)
	for id, n := range seen {
		if n != 1 || id == "poison" {
			t.Errorf("output %s ×%d", id, n)
		}
	}
	dls := e2etest.DeadLetters(t, ctx, js, w.Model(), 1)
	if len(dls) != 1 || dls[0].ID != "poison" || dls[0].Reason != consumer.ReasonModelError || !strings.Contains(dls[0].Error, "injected") {
		t.Fatalf("dead letters %+v", dls)
	}
	if runs.Load() < 3 {
		t.Errorf("only %d runs: the batch was not split", runs.Load())
	}
	stop()
	e2etest.WaitQueueEmpty(t, js, w.Model())
}

// TestLongBatchNotRedelivered: a batch that takes longer than AckWait is kept alive with
// InProgress and never redelivered.
func TestLongBatchNotRedelivered(t *testing.T) {
	ctx, _, nc, js := e2etest.Server(t, 60*time.Second)
	cfg := e2etest.Config()
	cfg.AckWait = time.Second
	cfg.Hooks.WrapEmbed = e2etest.BeforeEmbed(func(gpurun.Input) error {
		time.Sleep(2500 * time.Millisecond) // the scenario: a run of 2.5 × AckWait
		return nil
	})
	w, stop := start(t, ctx, nc, cfg)
	e2etest.PublishRecords(t, js, w.Model(), map[string]string{"a": "MKTAYIAK", "b": "MKTAYIAKQ"})
	seen := e2etest.OutputIDs(t, js, 2)
	info := e2etest.DurableInfo(t, ctx, js, w.Model())
	if info.NumRedelivered != 0 || seen["a"] != 1 || seen["b"] != 1 {
		t.Fatalf("redelivered %d, outputs %v", info.NumRedelivered, seen)
	}
	stop()
	e2etest.WaitQueueEmpty(t, js, w.Model())
}

// TestMultiDevice: with two devices (two CPU sessions here; cuda:0,cuda:1 on a GPU host) one
// batcher feeds both runners, every record is embedded once and both runners take batches.
func TestMultiDevice(t *testing.T) {
	ctx, _, nc, js := e2etest.Server(t, 60*time.Second)
	cfg := e2etest.Config()
	cfg.Device, cfg.Threads, cfg.MaxBatchRows = "cpu,cpu", 1, 4
	w, stop := start(t, ctx, nc, cfg)
	if n := len(w.P.Engine().Devices()); n != 2 {
		t.Fatalf("%d devices", n)
	}
	recs := map[string]string{}
	for i := range 200 {
		recs[fmt.Sprint("m", i)] = strings.Repeat("MKTAYIAKQRQISFVKSHFSRQ", 1+i%10)
	}
	e2etest.PublishRecords(t, js, w.Model(), recs)
	seen := e2etest.OutputIDs(t, js, len(recs))
	stop()
	e2etest.CheckEachOnce(t, seen)
	if runs := w.P.Engine().Runs(); runs[0] == 0 || runs[1] == 0 {
		t.Errorf("batches per device %v: one device idle", runs)
	}
	e2etest.WaitQueueEmpty(t, js, w.Model())
}

// TestOOMHalvesBatch: a device that runs out of memory above 2 rows gets halved batches; every
// record is embedded, none dead-lettered.
func TestOOMHalvesBatch(t *testing.T) {
	ctx, _, nc, js := e2etest.Server(t, 60*time.Second)
	cfg := e2etest.Config()
	cfg.MaxWait = 200 * time.Millisecond
	cfg.Hooks.WrapEmbed = e2etest.BeforeEmbed(func(in gpurun.Input) error {
		if in.Rows > 2 {
			return errors.New("CUDA failure 2: out of memory (injected)")
		}
		return nil
	})
	w, stop := start(t, ctx, nc, cfg)
	recs := map[string]string{}
	for i := range 12 {
		recs[fmt.Sprint("o", i)] = "MKTAYIAKQRQISFVKSHFSRQ"[:8+i]
	}
	e2etest.PublishRecords(t, js, w.Model(), recs)
	seen := e2etest.OutputIDs(t, js, len(recs))
	stop()
	e2etest.CheckEachOnce(t, seen)
	if dls, _ := consumer.ReadDeadLetters(ctx, js, "SEQS", w.Model(), "", 0); len(dls) != 0 {
		t.Errorf("dead letters %+v", dls)
	}
	e2etest.WaitQueueEmpty(t, js, w.Model())
}

// start runs a pipeline on nc for the test; stop cancels it and waits for Run, which must
// return nil.
func start(t *testing.T, ctx context.Context, nc *nats.Conn, cfg pipeline.Config) (w *e2etest.Worker, stop func()) {
	t.Helper()
	w = e2etest.NewWorkerConn(t, ctx, nc, cfg).Start(t, ctx)
	return w, func() {
		if err := w.Wait(); err != nil {
			t.Error(err)
		}
	}
}
