package pipeline_test

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/seqembed/seqembed/arrowout"
	"github.com/seqembed/seqembed/batcher"
	"github.com/seqembed/seqembed/consumer"
	"github.com/seqembed/seqembed/esm2graph"
	"github.com/seqembed/seqembed/gpurun"
	"github.com/seqembed/seqembed/internal/e2etest"
	"github.com/seqembed/seqembed/internal/natstest"
	"github.com/seqembed/seqembed/internal/testutil"
	"github.com/seqembed/seqembed/pipeline"
)

// chunkServer is a server whose max_payload (8 MiB) takes the 5000-residue record's row: three
// layers of per-residue float32 states are 3.8 MB.
func chunkServer(t *testing.T, timeout time.Duration) (context.Context, *server.Server, *nats.Conn, jetstream.JetStream) {
	t.Helper()
	e2etest.RequireORT(t)
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	t.Cleanup(cancel)
	srv := natstest.Server(t, func(o *server.Options) { o.MaxPayload = 8 << 20 })
	nc, js := natstest.Connect(t, srv)
	return ctx, srv, nc, js
}

// chunkConfig is the tiny checkpoint built in Go with every layer 0..2 × mean, bos and
// per-residue, --overlength chunk with the reference's window and stride.
func chunkConfig(t *testing.T, ref *e2etest.RefOutputs) pipeline.Config {
	return chunkConfigFP16(t, ref, false)
}

// chunkConfigFP16 is chunkConfig, with float16 per-residue outputs when fp16.
func chunkConfigFP16(t *testing.T, ref *e2etest.RefOutputs, fp16 bool) pipeline.Config {
	cfg := e2etest.Config()
	cfg.ModelDir = e2etest.OutputsModel(t, e2etest.AllOutputs(ref.NumLayers), fp16)
	cfg.Overlength, cfg.ChunkWindow, cfg.ChunkStride = "chunk", ref.Window, ref.Stride
	cfg.MaxWait = 100 * time.Millisecond
	return cfg
}

// storedRows reads every message the output stream holds now and returns its rows.
func storedRows(t *testing.T, ctx context.Context, js jetstream.JetStream) []arrowout.Row {
	t.Helper()
	s := e2etest.MustStream(t, ctx, js, arrowout.DefaultStreamName)
	info, err := s.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	oc := e2etest.OutputConsumer(t, ctx, js)
	var rows []arrowout.Row
	for range info.State.Msgs {
		m, err := oc.Next(jetstream.FetchMaxWait(10 * time.Second))
		if err != nil {
			t.Fatal(err)
		}
		_, rs, err := arrowout.Decode(m.Data())
		if err != nil {
			t.Fatal(err)
		}
		rows = append(rows, rs...)
	}
	return rows
}

// checkLongRow compares the row of a chunked reference record with PyTorch's chunked outputs
// (every layer's mean and bos, the last layer's merged states at the seams and ends) within 1e-4,
// and its length, truncated flag and chunk count. With float16 per-residue outputs (meta) the
// merged states are within float16 rounding (2e-3) and the means, made from them, within 1e-3.
func checkLongRow(t *testing.T, ref *e2etest.RefOutputs, meta arrowout.Meta, li int, row arrowout.Row) {
	t.Helper()
	rec := ref.Long[li]
	n := len(rec.Sequence)
	if int(row.Length) != n || int(row.InputLength) != n || row.Truncated || int(row.Chunks) != rec.Windows {
		t.Errorf("%s: length %d input_length %d truncated %v chunks %d, want %d, %d, false, %d",
			rec.ID, row.Length, row.InputLength, row.Truncated, row.Chunks, n, n, rec.Windows)
	}
	cols, err := meta.OutputColumns()
	if err != nil {
		t.Fatal(err)
	}
	meanTol, perTol := 1e-4, 1e-4
	if meta.ResiduesFP16 {
		meanTol, perTol = 1e-3, 2e-3
	}
	worst := map[string]float64{}
	checkTol := func(what string, got []float32, want []float64, tol float64) {
		t.Helper()
		d := e2etest.MaxAbsDiff(got, want)
		worst[strings.SplitN(what, "_", 2)[0]] = max(worst[strings.SplitN(what, "_", 2)[0]], d)
		if d > tol {
			t.Errorf("%s %s: max abs %.3g vs PyTorch, limit %g (%d values, want %d)", rec.ID, what, d, tol, len(got), len(want))
		}
	}
	check := func(what string, got []float32, want []float64) { t.Helper(); checkTol(what, got, want, meanTol) }
	defer func() {
		t.Logf("%s (%d windows, residues fp16 %v): max abs vs PyTorch %v", rec.ID, rec.Windows, meta.ResiduesFP16, worst)
	}()
	check("embedding", row.Embedding, rec.Mean[ref.NumLayers])
	checked := 0
	for k, c := range cols {
		switch c.Pooling {
		case arrowout.PoolMean:
			check(c.Name, row.Outputs[k], rec.Mean[c.Layer])
		case arrowout.PoolBOS:
			checkTol(c.Name, row.Outputs[k], rec.BOS[c.Layer], 1e-4)
		default:
			if len(row.Outputs[k]) != n*ref.Dim {
				t.Errorf("%s %s: %d values for %d residues", rec.ID, c.Name, len(row.Outputs[k]), n)
				continue
			}
			if c.Layer != ref.NumLayers {
				continue
			}
			for p, want := range rec.LastRows {
				i, _ := strconv.Atoi(p)
				checkTol(c.Name+" residue "+p, row.Outputs[k][i*ref.Dim:(i+1)*ref.Dim], want, perTol)
				checked++
			}
		}
	}
	if checked == 0 {
		t.Errorf("%s: no per-residue state checked", rec.ID)
	}
}

// TestChunkedRecordsMatchReference: with --overlength chunk (window 1022, stride 511) the
// reference's long records (1500 and 5000 residues) are each published as one row whose every
// output matches PyTorch's chunked reference within 1e-4 (tools/reference_outputs.py: windows
// embedded alone, per-residue states averaged over the windows covering them, mean over the
// merged states, bos the mean of the windows' <cls> rows), full length, not truncated, chunks 2
// and 9; the golden records (1022 residues at most) are embedded whole, chunks 1, and match the
// unchunked reference; every record is acked. With float16 per-residue outputs too (the merge
// widens them; checkLongRow's tolerances).
func TestChunkedRecordsMatchReference(t *testing.T) {
	ref := e2etest.LoadRefOutputs(t)
	for _, fp16 := range []bool{false, true} {
		t.Run(fmt.Sprintf("residues_fp16=%v", fp16), func(t *testing.T) { testChunkedRecords(t, ref, fp16) })
	}
}

func testChunkedRecords(t *testing.T, ref *e2etest.RefOutputs, fp16 bool) {
	ctx, _, nc, js := chunkServer(t, 120*time.Second)
	w, stop := start(t, ctx, nc, chunkConfigFP16(t, ref, fp16))
	recs, index := map[string]string{}, map[string]int{}
	for i, r := range ref.Records {
		recs[r.ID], index[r.ID] = r.Sequence, i
	}
	long := map[string]int{}
	for i, r := range ref.Long {
		recs[r.ID], long[r.ID] = r.Sequence, i
	}
	e2etest.PublishRecords(t, js, w.Model(), recs)
	meta, rows := readOutputRows(t, ctx, js, len(recs))
	e2etest.WaitQueueEmpty(t, js, w.Model())
	stop()
	cols, err := meta.OutputColumns()
	if err != nil {
		t.Fatal(err)
	}
	for id, row := range rows {
		if li, ok := long[id]; ok {
			checkLongRow(t, ref, meta, li, row)
			continue
		}
		i, ok := index[id]
		if !ok {
			t.Fatalf("output id %q never published", id)
		}
		if row.Chunks != 1 || row.Truncated || int(row.Length) != len(ref.Records[i].Sequence) {
			t.Errorf("%s: chunks %d truncated %v length %d, want 1, false, %d", id, row.Chunks, row.Truncated, row.Length, len(ref.Records[i].Sequence))
		}
		if d := e2etest.MaxAbsDiff(row.Embedding, ref.Records[i].Mean[ref.NumLayers]); d > 1e-4 {
			t.Errorf("%s embedding: max abs %.3g vs PyTorch", id, d)
		}
		for k, c := range cols {
			tol := 1e-4
			if fp16 && c.Pooling == arrowout.PoolPerResidue {
				tol = 2e-3
			}
			if want := ref.RefValues(i, c); want != nil {
				if d := e2etest.MaxAbsDiff(row.Outputs[k], want); d > tol {
					t.Errorf("%s %s: max abs %.3g vs PyTorch", id, c.Name, d)
				}
			}
		}
	}
	if st := w.P.Stats(); st.Acked != len(recs) {
		t.Errorf("%d acked, want %d", st.Acked, len(recs))
	}
}

// windowMatcher reports whether row r of in is the window of tokens want (its first tokens).
func windowMatcher(want []int64) func(in gpurun.Input, r int) bool {
	return func(in gpurun.Input, r int) bool {
		return in.Cols == len(want) && slices.Equal(in.IDs[r*in.Cols:(r+1)*in.Cols], want)
	}
}

// TestChunkedRecordWindowFails: one window of a chunked record fails on its first delivery (every
// run holding it, down to the window alone): the record is nak'd, nothing of it is published, it
// comes back and is published once, matching the reference; the short records beside it are
// published as usual.
func TestChunkedRecordWindowFails(t *testing.T) {
	ref := e2etest.LoadRefOutputs(t)
	ctx, _, nc, js := chunkServer(t, 120*time.Second)
	cfg := chunkConfig(t, ref)
	rec := ref.Long[0] // 1500 residues: windows at 0 and 478
	if len(rec.Sequence) != 1500 || rec.Windows != 2 {
		t.Fatalf("reference long record %s: %d residues, %d windows", rec.ID, len(rec.Sequence), rec.Windows)
	}
	tok, err := batcher.NewTokenizer(esm2Alphabet(t, cfg.ModelDir))
	if err != nil {
		t.Fatal(err)
	}
	starts := batcher.Windows(len(rec.Sequence), ref.Window, ref.Stride)
	lo, hi := batcher.Window(starts[1], len(rec.Sequence), ref.Window)
	target := make([]int64, hi-lo+2)
	tok.Encode(target, []byte(rec.Sequence[lo:hi]))
	isTarget := windowMatcher(target)
	var mu sync.Mutex
	failedAlone, runsAfter := false, 0
	cfg.Hooks.WrapEmbed = e2etest.BeforeEmbed(func(in gpurun.Input) error {
		mu.Lock()
		defer mu.Unlock()
		for r := range in.Rows {
			if !isTarget(in, r) {
				continue
			}
			if failedAlone {
				runsAfter++
				return nil
			}
			failedAlone = in.Rows == 1
			return errors.New("CUDA failure 700: an illegal memory access (injected)")
		}
		return nil
	})
	w, stop := start(t, ctx, nc, cfg)
	recs := map[string]string{rec.ID: rec.Sequence}
	for _, r := range ref.Records[:3] {
		recs[r.ID] = r.Sequence
	}
	e2etest.PublishRecords(t, js, w.Model(), recs)
	meta, rows := readOutputRows(t, ctx, js, len(recs))
	e2etest.WaitQueueEmpty(t, js, w.Model())
	stop()
	mu.Lock()
	if !failedAlone || runsAfter == 0 {
		t.Errorf("the window failed alone %v, ran again %d times: want a failure, then a redelivery", failedAlone, runsAfter)
	}
	mu.Unlock()
	checkLongRow(t, ref, meta, 0, rows[rec.ID])
	n := 0
	for _, r := range storedRows(t, ctx, js) {
		if r.ID == rec.ID {
			n++
		}
	}
	if n != 1 {
		t.Errorf("%s stored %d times, want once", rec.ID, n)
	}
	if dls := e2etest.DurableInfo(t, ctx, js, w.Model()); dls.NumAckPending != 0 {
		t.Errorf("%d unacked", dls.NumAckPending)
	}
}

// TestChunkedRecordHeartbeated: a chunked record whose windows take 2.4 × AckWait to run (one
// window a run, 600 ms each) is heartbeated throughout: never redelivered, published once.
func TestChunkedRecordHeartbeated(t *testing.T) {
	ref := e2etest.LoadRefOutputs(t)
	ctx, _, nc, js := chunkServer(t, 60*time.Second)
	cfg := chunkConfig(t, ref)
	cfg.AckWait, cfg.MaxBatchTokens = time.Second, 1024 // one window of 1022 residues a run
	var mu sync.Mutex
	windows := 0
	cfg.Hooks.WrapEmbed = e2etest.BeforeEmbed(func(in gpurun.Input) error {
		if in.Cols == ref.Window+2 {
			mu.Lock()
			windows += in.Rows
			mu.Unlock()
			time.Sleep(600 * time.Millisecond) // the scenario: windows that outlast AckWait
		}
		return nil
	})
	w, stop := start(t, ctx, nc, cfg)
	seq := string(e2etest.RandomProtein(rand.New(rand.NewPCG(3, 4)), 2100, 2100)) // windows 0, 511, 1022, 1078
	e2etest.PublishRecords(t, js, w.Model(), map[string]string{"long": seq})
	_, rows := readOutputRows(t, ctx, js, 1)
	info := e2etest.DurableInfo(t, ctx, js, w.Model())
	e2etest.WaitQueueEmpty(t, js, w.Model())
	stop()
	mu.Lock()
	defer mu.Unlock()
	if info.NumRedelivered != 0 || windows != 4 || rows["long"].Chunks != 4 || rows["long"].Length != 2100 {
		t.Errorf("redelivered %d, %d windows run, row chunks %d length %d: want 0, 4, 4, 2100",
			info.NumRedelivered, windows, rows["long"].Chunks, rows["long"].Length)
	}
}

// TestChunkNeedsPerResidueOutputs: --overlength chunk refuses a model without the per-residue
// output of a layer it mean-pools (the embedding's, the last, included), naming the outputs
// missing and the rebuild; a window over the model's max length is refused.
func TestChunkNeedsPerResidueOutputs(t *testing.T) {
	e2etest.RequireORT(t)
	for _, c := range []struct {
		name    string
		outs    []esm2graph.Output
		window  int
		missing string
	}{
		{"embedding only", nil, 0, "residues_l2"},
		{"mean of layer 0 without its states", []esm2graph.Output{{Layer: 2, Pooling: esm2graph.PoolPerResidue},
			{Layer: 0, Pooling: esm2graph.PoolMean}, {Layer: 2, Pooling: esm2graph.PoolMean}}, 0, "residues_l0"},
		{"window over max length", []esm2graph.Output{{Layer: 2, Pooling: esm2graph.PoolPerResidue},
			{Layer: 2, Pooling: esm2graph.PoolMean}}, 5000, ""},
	} {
		t.Run(c.name, func(t *testing.T) {
			cfg := e2etest.Config()
			if c.outs != nil {
				cfg.ModelDir = e2etest.OutputsModel(t, c.outs, false)
			}
			cfg.Overlength, cfg.ChunkWindow = "chunk", c.window
			eng, err := pipeline.NewEngine(cfg, nil)
			if err == nil {
				eng.Close()
				t.Fatal("engine built")
			}
			if !errors.Is(err, pipeline.ErrConfig) {
				t.Fatalf("err = %v, want ErrConfig", err)
			}
			msg := err.Error()
			if c.missing == "" {
				if !strings.Contains(msg, "--chunk-window 5000") {
					t.Errorf("err = %v, want it to name --chunk-window", err)
				}
				return
			}
			if !strings.Contains(msg, c.missing) || !strings.Contains(msg, "seqembed model build --outputs per-residue:") {
				t.Errorf("err = %v, want it to name %s and the rebuild", err, c.missing)
			}
		})
	}
}

// esm2Alphabet is the residue alphabet of the model in dir.
func esm2Alphabet(t *testing.T, dir string) string {
	t.Helper()
	man, err := gpurun.LoadManifest(dir)
	if err != nil {
		t.Fatal(fmt.Errorf("manifest: %w", err))
	}
	return man.Residues
}

// TestChunkedShutdownNaksQueued: at a graceful shutdown the chunked record in a chunk loop
// finishes (published, acked) while those still queued for one are nak'd at once, so a second
// worker embeds them inside the (60 s) AckWait: each record stored once, none lost.
func TestChunkedShutdownNaksQueued(t *testing.T) {
	ref := e2etest.LoadRefOutputs(t)
	ctx, srv, nc, js := chunkServer(t, 90*time.Second)
	cfg := chunkConfig(t, ref)
	cfg.Inflight = 1 // one chunk loop
	entered, release := make(chan struct{}), make(chan struct{})
	var once sync.Once
	var mu sync.Mutex
	runs := 0
	cfg1 := cfg
	cfg1.Hooks.WrapEmbed = e2etest.BeforeEmbed(func(in gpurun.Input) error {
		if in.Cols != ref.Window+2 {
			return nil
		}
		mu.Lock()
		runs++
		mu.Unlock()
		once.Do(func() { close(entered); <-release })
		return nil
	})
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	w1 := e2etest.NewWorkerConn(t, wctx, nc, cfg1).Start(t, wctx)
	rng := rand.New(rand.NewPCG(5, 6))
	recs := map[string]string{}
	for i := range 3 {
		recs[fmt.Sprint("long", i)] = string(e2etest.RandomProtein(rng, 1100, 1400)) // 2 windows each
	}
	e2etest.PublishRecords(t, js, w1.Model(), recs)
	<-entered
	testutil.Eventually(t, 20*time.Second, func() (bool, string) {
		n := e2etest.DurableInfo(t, ctx, js, w1.Model()).NumAckPending
		return n == len(recs), fmt.Sprintf("worker holds %d of %d records", n, len(recs))
	})
	cancel() // graceful: the queued two are nak'd while the first's windows are still running
	nc2, _ := natstest.Connect(t, srv)
	w2, stop2 := start(t, ctx, nc2, cfg)
	readOutputRows(t, ctx, js, len(recs)-1) // the two queued, from the second worker

	close(release)
	if err := w1.Wait(); err != nil {
		t.Fatal(err)
	}
	e2etest.WaitQueueEmpty(t, js, w2.Model())
	stop2()
	mu.Lock()
	if runs != 1 || w1.P.Stats().Acked != 1 || w2.P.Stats().Acked != len(recs)-1 {
		t.Errorf("first worker: %d window runs, %d acked; second worker %d acked: want 1, 1, %d", runs, w1.P.Stats().Acked, w2.P.Stats().Acked, len(recs)-1)
	}
	mu.Unlock()
	seen := map[string]int{}
	for _, r := range storedRows(t, ctx, js) {
		seen[r.ID]++
		if r.Chunks != 2 {
			t.Errorf("%s: %d chunks, want 2", r.ID, r.Chunks)
		}
	}
	for id := range recs {
		if seen[id] != 1 {
			t.Errorf("%s stored %d times, want once", id, seen[id])
		}
	}
}

// TestChunkedRowSlicesAndLimit: a chunked record whose row cannot fit in a message (here
// max_payload 512 KiB; 1500 residues × 64 × 3 layers of float32 states are 1.15 MB) is published
// as row slices and joined by the sink into its one row (2 windows, 1500 residues per
// per-residue column). A record whose row would be over pipeline.MaxChunkedRowBytes (350,000
// residues: 269 MB) is dead-lettered output_too_large before any of its windows runs.
func TestChunkedRowSlicesAndLimit(t *testing.T) {
	ref := e2etest.LoadRefOutputs(t)
	e2etest.RequireORT(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	srv := natstest.Server(t, func(o *server.Options) { o.MaxPayload = 512 << 10 })
	nc, js := natstest.Connect(t, srv)
	cfg := chunkConfig(t, ref)
	const huge = 350_000
	var mu sync.Mutex
	longest := 0
	cfg.Hooks.WrapEmbed = e2etest.BeforeEmbed(func(in gpurun.Input) error {
		mu.Lock()
		longest = max(longest, in.Cols)
		mu.Unlock()
		return nil
	})
	w, stop := start(t, ctx, nc, cfg)
	recs := map[string]string{ref.Long[0].ID: ref.Long[0].Sequence, "small": "MKTAYIAKQR",
		"huge": strings.Repeat("MKTAYIAKQR", huge/10)}
	e2etest.PublishRecords(t, js, w.Model(), recs)
	_, rows := readOutputRows(t, ctx, js, 2)
	dls := e2etest.DeadLetters(t, ctx, js, w.Model(), 1)
	e2etest.WaitQueueEmpty(t, js, w.Model())
	stop()
	long := rows[ref.Long[0].ID]
	if n := len(ref.Long[0].Sequence); long.Chunks != 2 || int(long.Length) != n || len(long.Outputs) == 0 {
		t.Fatalf("chunked row: %d windows, length %d, %d outputs; want 2, %d", long.Chunks, long.Length, len(long.Outputs), n)
	}
	perResidue := 0
	for _, o := range long.Outputs {
		if len(o) == int(long.Length)*ref.Dim {
			perResidue++
		}
	}
	if perResidue != ref.NumLayers+1 {
		t.Errorf("%d per-residue columns of %d × %d values, want %d", perResidue, long.Length, ref.Dim, ref.NumLayers+1)
	}
	sliced := 0
	for _, m := range natstest.StoredMsgs(t, ctx, e2etest.MustStream(t, ctx, js, arrowout.DefaultStreamName)) {
		if m.Header.Get(arrowout.HeaderResidues) != "" {
			sliced++
		}
	}
	if sliced < 3 {
		t.Errorf("%d row slices stored, want >= 3 (1.15 MB under 512 KiB)", sliced)
	}
	if len(dls) != 1 || dls[0].ID != "huge" || dls[0].Reason != consumer.ReasonOutputTooLarge ||
		!strings.Contains(dls[0].Error, "row too large") || !strings.Contains(dls[0].Error, "350000 residues") {
		t.Fatalf("dead letters %+v", dls)
	}
	mu.Lock()
	defer mu.Unlock()
	if longest > ref.Window+2 {
		t.Errorf("a run of %d columns: the huge record's windows ran", longest)
	}
}
