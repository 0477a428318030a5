package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"

	"github.com/seqembed/seqembed/arrowout"
	"github.com/seqembed/seqembed/consumer"
	"github.com/seqembed/seqembed/gpurun"
)

type goldenRec struct {
	ID        string    `json:"id"`
	Sequence  string    `json:"sequence"`
	Embedding []float32 `json:"embedding"`
}

// loadGolden returns the 20 golden records by id (sequences truncated at 1022 by the exporter).
func loadGolden(t *testing.T) map[string]goldenRec {
	data, err := os.ReadFile(tinyModel + "/golden.json")
	if err != nil {
		t.Fatal(err)
	}
	var g struct{ Records []goldenRec }
	if err := json.Unmarshal(data, &g); err != nil {
		t.Fatal(err)
	}
	out := map[string]goldenRec{}
	for _, r := range g.Records {
		out[r.ID] = r
	}
	return out
}

func checkEmbedding(t *testing.T, id string, got, want []float32) {
	t.Helper()
	worst := 0.0
	for i := range want {
		worst = math.Max(worst, math.Abs(float64(got[i]-want[i])))
	}
	if len(got) != len(want) || worst > 1e-4 {
		t.Errorf("%s: embedding differs from PyTorch golden by %.3g (len %d vs %d)", id, worst, len(got), len(want))
	}
}

// TestWorkerEndToEnd: records (good and bad) → worker → every valid id exactly once on the
// output with PyTorch-matching embeddings, every bad one dead-lettered with its reason, and the
// work queue ends empty.
func TestWorkerEndToEnd(t *testing.T) {
	ctx, _, nc, js := ortServer(t, 60*time.Second)
	w := newTestWorker(t, ctx, testConfig(t), nc)
	rw := runWorker(t, ctx, w)

	golden := loadGolden(t)
	pub := func(id, body string) {
		if _, err := js.PublishMsg(ctx, inputMsg(w.model, id, body)); err != nil {
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
	oc := outputConsumer(t, ctx, js)
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
			checkEmbedding(t, r.ID, r.Embedding, g.Embedding)
		}
	}
	for id, n := range seen {
		if n != 1 {
			t.Errorf("%s appears %d times", id, n)
		}
	}

	// Dead letters: every bad record with its reason.
	got := map[string]string{}
	for deadline := time.Now().Add(10 * time.Second); len(got) < len(bad)+1 && time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		dls, err := consumer.ReadDeadLetters(ctx, js, "SEQS", w.model, 0)
		if err != nil {
			t.Fatal(err)
		}
		for _, d := range dls {
			got[d.ID] = d.Reason
			if d.Error == "" || (d.ID != "" && d.StreamSeq == 0) {
				t.Errorf("dead letter %+v lacks its error or stream seq", d)
			}
		}
	}
	bad[""] = consumer.ReasonMissingID
	for id, reason := range bad {
		if got[id] != reason {
			t.Errorf("dead letter %q: reason %q, want %q", id, got[id], reason)
		}
	}

	if err := rw.wait(); err != nil {
		t.Fatal(err)
	}
	// The input subject is empty and nothing is pending on the durable consumer.
	waitQueueEmpty(t, js, w.model)
}

// TestRunJob is `seqembed run` on the golden FASTA plus a header with no id: the Parquet file
// holds one row per valid record with PyTorch-matching embeddings; the bad record is dead-lettered.
func TestRunJob(t *testing.T) {
	requireORT(t)
	dir := t.TempDir()
	in, err := os.ReadFile("../../testdata/golden-input.fasta")
	if err != nil {
		t.Fatal(err)
	}
	fastaPath := filepath.Join(dir, "in.fasta")
	os.WriteFile(fastaPath, append(in, []byte(">\nMKTAYIAK\n>dup-free-bad lowercase\nMKTaa\n")...), 0o644)
	out := filepath.Join(dir, "out.parquet")
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	sum, err := runJob(ctx, fastaPath, out, testConfig(t), nil, zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	if sum.Published.Records != 22 || sum.Embedded != 20 || sum.DeadLettered != 2 {
		t.Fatalf("summary %+v", sum)
	}
	if sum.Reasons[consumer.ReasonMissingID] != 1 || sum.Reasons[consumer.ReasonInvalid] != 1 {
		t.Errorf("reasons %v", sum.Reasons)
	}
	meta, rows, err := arrowout.ReadParquet(out)
	if err != nil {
		t.Fatal(err)
	}
	if meta.Model != "esm2-tiny" || len(rows) != 20 {
		t.Fatalf("meta %+v, %d rows", meta, len(rows))
	}
	golden := loadGolden(t)
	for _, r := range rows {
		checkEmbedding(t, r.ID, r.Embedding, golden[r.ID].Embedding)
	}
}

// TestPoisonRecordIsolated: a record that makes the model fail is found by splitting its batch,
// dead-lettered with reason model_error; its batch-mates are embedded once each.
func TestPoisonRecordIsolated(t *testing.T) {
	ctx, _, nc, js := ortServer(t, 60*time.Second)
	cfg := testConfig(t)
	cfg.MaxWait = 200 * time.Millisecond // one batch for all records
	var runs atomic.Int64
	w, stop := startWorker(t, ctx, cfg, nc, beforeEmbed(func(in gpurun.Input) error {
		runs.Add(1)
		if slices.Contains(in.IDs[:in.Rows*in.Cols], 28) { // 'O' (pyrrolysine) poisons this test's model
			return errors.New("injected model failure")
		}
		return nil
	}))
	recs := map[string]string{"poison": "MKTAYOAK"}
	for i := range 10 {
		recs[fmt.Sprint("ok", i)] = "MKTAYIAKQRQISFVKSHFSRQ"[:10+i]
	}
	publishRecords(t, js, w.model, recs)
	seen := outputIDs(t, js, 10)
	for id, n := range seen {
		if n != 1 || id == "poison" {
			t.Errorf("output %s ×%d", id, n)
		}
	}
	var dls []consumer.DeadLetter
	for deadline := time.Now().Add(10 * time.Second); len(dls) == 0 && time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		var err error
		if dls, err = consumer.ReadDeadLetters(ctx, js, "SEQS", w.model, 0); err != nil {
			t.Fatal(err)
		}
	}
	if len(dls) != 1 || dls[0].ID != "poison" || dls[0].Reason != consumer.ReasonModelError || !strings.Contains(dls[0].Error, "injected") {
		t.Fatalf("dead letters %+v", dls)
	}
	if runs.Load() < 3 {
		t.Errorf("only %d runs: the batch was not split", runs.Load())
	}
	stop()
	waitQueueEmpty(t, js, w.model)
}

// TestLongBatchNotRedelivered: a batch that takes longer than AckWait is kept alive with
// InProgress and never redelivered.
func TestLongBatchNotRedelivered(t *testing.T) {
	ctx, _, nc, js := ortServer(t, 60*time.Second)
	cfg := testConfig(t)
	cfg.AckWait = time.Second
	w, stop := startWorker(t, ctx, cfg, nc, beforeEmbed(func(gpurun.Input) error {
		time.Sleep(2500 * time.Millisecond) // 2.5 × AckWait
		return nil
	}))
	publishRecords(t, js, w.model, map[string]string{"a": "MKTAYIAK", "b": "MKTAYIAKQ"})
	seen := outputIDs(t, js, 2)
	info := durableInfo(t, ctx, js, w.model)
	if info.NumRedelivered != 0 || seen["a"] != 1 || seen["b"] != 1 {
		t.Fatalf("redelivered %d, outputs %v", info.NumRedelivered, seen)
	}
	stop()
	waitQueueEmpty(t, js, w.model)
}

// TestMultiDevice: with two devices (two CPU sessions here; cuda:0,cuda:1 on a GPU host) one
// batcher feeds both runners, every record is embedded once and both runners take batches.
func TestMultiDevice(t *testing.T) {
	ctx, _, nc, js := ortServer(t, 60*time.Second)
	cfg := testConfig(t)
	cfg.Device, cfg.Threads, cfg.MaxBatchRows = "cpu,cpu", 1, 4
	w, stop := startWorker(t, ctx, cfg, nc, nil)
	if len(w.runners) != 2 {
		t.Fatalf("%d runners", len(w.runners))
	}
	recs := map[string]string{}
	for i := range 200 {
		recs[fmt.Sprint("m", i)] = strings.Repeat("MKTAYIAKQRQISFVKSHFSRQ", 1+i%10)
	}
	publishRecords(t, js, w.model, recs)
	seen := outputIDs(t, js, len(recs))
	stop()
	checkEachOnce(t, seen)
	if w.runs[0].Load() == 0 || w.runs[1].Load() == 0 {
		t.Errorf("batches per device %d, %d: one device idle", w.runs[0].Load(), w.runs[1].Load())
	}
	waitQueueEmpty(t, js, w.model)
}

// TestOOMHalvesBatch: a device that runs out of memory above 2 rows gets halved batches; every
// record is embedded, none dead-lettered.
func TestOOMHalvesBatch(t *testing.T) {
	ctx, _, nc, js := ortServer(t, 60*time.Second)
	cfg := testConfig(t)
	cfg.MaxWait = 200 * time.Millisecond
	w, stop := startWorker(t, ctx, cfg, nc, beforeEmbed(func(in gpurun.Input) error {
		if in.Rows > 2 {
			return errors.New("CUDA failure 2: out of memory (injected)")
		}
		return nil
	}))
	recs := map[string]string{}
	for i := range 12 {
		recs[fmt.Sprint("o", i)] = "MKTAYIAKQRQISFVKSHFSRQ"[:8+i]
	}
	publishRecords(t, js, w.model, recs)
	seen := outputIDs(t, js, len(recs))
	stop()
	checkEachOnce(t, seen)
	if dls, _ := consumer.ReadDeadLetters(ctx, js, "SEQS", w.model, 0); len(dls) != 0 {
		t.Errorf("dead letters %+v", dls)
	}
	waitQueueEmpty(t, js, w.model)
}
