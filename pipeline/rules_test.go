package pipeline

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"

	"github.com/seqembed/seqembed/batcher"
	"github.com/seqembed/seqembed/gpurun"
	"github.com/seqembed/seqembed/internal/natstest"
)

// Each rule of doc.go, tested on its own: no model, no worker.

// batchOf is a batch of rows rows of cols tokens; row r's tokens are all r+1, so an embed
// function can tell rows apart.
func batchOf(rows, cols int) *batcher.Batch {
	b := &batcher.Batch{Rows: rows, Cols: cols, InputIDs: make([]int64, rows*cols), Mask: make([]int64, rows*cols)}
	for r := range rows {
		for c := range cols {
			b.InputIDs[r*cols+c], b.Mask[r*cols+c] = int64(r+1), 1
		}
		b.Items = append(b.Items, batcher.Item{ID: string(rune('a' + r)), StreamSeq: uint64(r + 1)})
	}
	return b
}

// fakeEmbed embeds each row as one float (its token), failing runs for which fail says so.
func fakeEmbed(fail func(in gpurun.Input) error, runs *[]int) EmbedFunc {
	return func(_ context.Context, in gpurun.Input, dst []float32) ([]float32, *gpurun.Result, error) {
		*runs = append(*runs, in.Rows)
		if err := fail(in); err != nil {
			return dst, nil, err
		}
		for r := range in.Rows {
			dst = append(dst, float32(in.IDs[r*in.Cols]))
		}
		return dst, nil, nil
	}
}

// halves is embedInHalves on rows [lo, hi) of b from nothing: the embeddings and failed rows.
func halves(ctx context.Context, embed EmbedFunc, b *batcher.Batch, lo, hi int) ([]float32, []rowError) {
	var acc embedded
	embedInHalves(ctx, embed, b, lo, hi, &acc, zap.NewNop())
	return acc.emb, acc.failed
}

func TestEmbedInHalvesAllOK(t *testing.T) {
	var runs []int
	emb, failed := halves(context.Background(), fakeEmbed(func(gpurun.Input) error { return nil }, &runs), batchOf(8, 4), 0, 8)
	if len(failed) != 0 || !slices.Equal(runs, []int{8}) || !slices.Equal(emb, []float32{1, 2, 3, 4, 5, 6, 7, 8}) {
		t.Fatalf("runs %v, emb %v, failed %v", runs, emb, failed)
	}
}

// An out-of-memory over 2 rows: the batch is halved until it fits; every row embedded, in order.
func TestEmbedInHalvesShrinksOnOOM(t *testing.T) {
	var runs []int
	oom := errors.New("CUDA out of memory")
	emb, failed := halves(context.Background(), fakeEmbed(func(in gpurun.Input) error {
		if in.Rows > 2 {
			return oom
		}
		return nil
	}, &runs), batchOf(8, 4), 0, 8)
	if len(failed) != 0 || !slices.Equal(emb, []float32{1, 2, 3, 4, 5, 6, 7, 8}) {
		t.Fatalf("emb %v, failed %v", emb, failed)
	}
	if want := []int{8, 4, 2, 2, 4, 2, 2}; !slices.Equal(runs, want) {
		t.Errorf("runs %v, want %v", runs, want)
	}
	if judge(8, failed) != allOK {
		t.Errorf("judge = %v, want allOK", judge(8, failed))
	}
}

// A poison row fails every run holding it: it ends alone and failed; the others are embedded.
func TestEmbedInHalvesIsolatesPoison(t *testing.T) {
	var runs []int
	emb, failed := halves(context.Background(), fakeEmbed(func(in gpurun.Input) error {
		if slices.Contains(in.IDs, 6) {
			return errors.New("poison")
		}
		return nil
	}, &runs), batchOf(8, 4), 0, 8)
	if len(failed) != 1 || failed[0].row != 5 || !strings.Contains(failed[0].err.Error(), "poison") {
		t.Fatalf("failed %v, want row 5 alone", failed)
	}
	if !slices.Equal(emb, []float32{1, 2, 3, 4, 5, 7, 8}) {
		t.Errorf("emb %v", emb)
	}
	if judge(8, failed) != deadLetterBad {
		t.Errorf("judge = %v, want deadLetterBad", judge(8, failed))
	}
}

// A device that fails every run: every row fails, and judge naks them all (no dead letters).
func TestEmbedInHalvesBrokenDevice(t *testing.T) {
	var runs []int
	_, failed := halves(context.Background(), fakeEmbed(func(gpurun.Input) error { return errors.New("device lost") }, &runs),
		batchOf(4, 4), 0, 4)
	if len(failed) != 4 || judge(4, failed) != nakAll {
		t.Fatalf("failed %v, judge %v: want 4 rows and nakAll", failed, judge(4, failed))
	}
}

// Once ctx ends nothing is retried: one run, every row failed.
func TestEmbedInHalvesStopsAtShutdown(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	var runs []int
	_, failed := halves(ctx, fakeEmbed(func(gpurun.Input) error { return context.Canceled }, &runs), batchOf(8, 4), 0, 8)
	if len(runs) != 1 || len(failed) != 8 {
		t.Fatalf("runs %v, %d failed: want one run and 8 failed rows", runs, len(failed))
	}
}

// The keeper holds a message past 3 × AckWait without redelivery; once released, the server
// redelivers it (it was never acked).
func TestKeeperHoldsPastAckWait(t *testing.T) {
	srv := natstest.Server(t, nil)
	_, js := natstest.Connect(t, srv)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	s, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: "HB", Subjects: []string{"hb"}})
	if err != nil {
		t.Fatal(err)
	}
	const ackWait = 600 * time.Millisecond
	c, err := s.CreateConsumer(ctx, jetstream.ConsumerConfig{Durable: "hb", AckPolicy: jetstream.AckExplicitPolicy, AckWait: ackWait})
	if err != nil {
		t.Fatal(err)
	}
	for range 3 {
		if _, err := js.Publish(ctx, "hb", []byte("x")); err != nil {
			t.Fatal(err)
		}
	}
	b, err := c.Fetch(3, jetstream.FetchMaxWait(time.Minute))
	if err != nil {
		t.Fatal(err)
	}
	var msgs []jetstream.Msg
	for m := range b.Messages() {
		msgs = append(msgs, m)
	}
	k := newKeeper(ackWait/3, 0)
	defer k.Stop()
	for _, m := range msgs {
		k.Hold(m, 100)
	}
	k.Release(msgs[2]) // held, then released without an ack: the server takes it back
	if n := k.Held(); n != 2 {
		t.Fatalf("keeper holds %d, want 2", n)
	}
	// The scenario: the worker holds the records for three ack waits.
	time.Sleep(3 * ackWait)
	// Only the released record comes back (perhaps more than once: each fetch of it starts
	// another AckWait).
	b, err = c.Fetch(3, jetstream.FetchMaxWait(2*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	var again []uint64
	for m := range b.Messages() {
		md, _ := m.Metadata()
		again = append(again, md.Sequence.Stream)
	}
	if len(again) == 0 || slices.ContainsFunc(again, func(s uint64) bool { return s != 3 }) {
		t.Fatalf("redelivered stream seqs %v, want only 3 (the released one)", again)
	}
	if err := msgs[0].DoubleAck(ctx); err != nil {
		t.Fatal(err)
	}
	k.Release(msgs[0])
	if n := k.Held(); n != 1 {
		t.Fatalf("keeper holds %d after an ack and a release, want 1", n)
	}
}

// Room, the pull gate: with a budget it answers at once while the held tokens are under it (how
// many records of the mean size fit), waits while they are not, and answers once a release makes
// room; ctx ends a wait.
func TestKeeperRoomBudget(t *testing.T) {
	srv := natstest.Server(t, nil)
	_, js := natstest.Connect(t, srv)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	s, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: "RB", Subjects: []string{"rb"}})
	if err != nil {
		t.Fatal(err)
	}
	c, err := s.CreateConsumer(ctx, jetstream.ConsumerConfig{Durable: "rb", AckPolicy: jetstream.AckExplicitPolicy})
	if err != nil {
		t.Fatal(err)
	}
	for range 2 {
		if _, err := js.Publish(ctx, "rb", []byte("x")); err != nil {
			t.Fatal(err)
		}
	}
	b, err := c.Fetch(2, jetstream.FetchMaxWait(time.Minute))
	if err != nil {
		t.Fatal(err)
	}
	var msgs []jetstream.Msg
	for m := range b.Messages() {
		msgs = append(msgs, m)
	}
	k := newKeeper(time.Minute, 1000)
	defer k.Stop()
	if n, err := k.Room(ctx); err != nil || n < 1 {
		t.Fatalf("Room with nothing held = %d, %v; want at least 1", n, err)
	}
	k.Hold(msgs[0], 600)
	k.Hold(msgs[1], 600) // 1,200 of 1,000 tokens held: no room
	got := make(chan int, 1)
	go func() {
		n, err := k.Room(ctx)
		if err != nil {
			t.Error(err)
		}
		got <- n
	}()
	wctx, wcancel := context.WithTimeout(ctx, 50*time.Millisecond)
	if _, err := k.Room(wctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Room over budget = %v, want it to wait until ctx ends", err)
	}
	wcancel()
	select {
	case n := <-got:
		t.Fatalf("Room answered %d while over budget", n)
	default:
	}
	k.Release(msgs[0]) // 600 held: room for 400 tokens
	if n := <-got; n != 1 {
		t.Errorf("Room after a release = %d, want 1 (400 tokens of room, records of ~600)", n)
	}
	if unlimited, _ := newKeeper(time.Minute, 0).Room(ctx); unlimited < 1<<20 {
		t.Errorf("Room without a budget = %d, want no bound", unlimited)
	}
}

func TestConfigValidate(t *testing.T) {
	if c := Default(); c.Validate() != nil {
		t.Fatalf("Default() invalid: %v", c.Validate())
	}
	for flag, mod := range map[string]func(*Config){
		"--inflight":         func(c *Config) { c.Inflight = -1 },
		"--device":           func(c *Config) { c.Device = "tpu:0" },
		"--overlength":       func(c *Config) { c.Overlength = "chop" },
		"--cuda-graphs":      func(c *Config) { c.CUDAGraphs = "maybe" },
		"--ack-wait":         func(c *Config) { c.AckWait = 0 },
		"--model":            func(c *Config) { c.ModelDir = "" },
		"--max-held-tokens":  func(c *Config) { c.MaxHeldTokens = 100 },
		"--max-held-tokens ": func(c *Config) { c.MaxHeldTokens = -1 },
		"--replicas":         func(c *Config) { c.Replicas = 7 },
		"--chunk-window":     func(c *Config) { c.Overlength, c.ChunkWindow = "chunk", -1 },
		"--chunk-stride":     func(c *Config) { c.Overlength, c.ChunkWindow, c.ChunkStride = "chunk", 100, 101 },
		"--chunk-window ":    func(c *Config) { c.ChunkWindow = 500 }, // without --overlength chunk
		"--chunk-stride ":    func(c *Config) { c.Overlength, c.ChunkStride = "reject", 10 },
	} {
		c := Default()
		mod(&c)
		err := c.Validate()
		if !errors.Is(err, ErrConfig) || !strings.Contains(err.Error(), flag) {
			t.Errorf("%s: Validate() = %v, want ErrConfig naming the flag", flag, err)
		}
	}
}

// TestInflightPerDevice: --inflight 0 (the default) means 4 batches per CUDA device and 2 on the
// CPU; a value given is kept whatever the device; --graph-sessions is bounded by the resolved count.
func TestInflightPerDevice(t *testing.T) {
	for _, tc := range []struct {
		device   string
		inflight int
		want     int
	}{
		{"cpu", 0, InflightCPU}, {"cuda:0", 0, InflightCUDA}, {"cuda:0,cuda:1", 0, InflightCUDA},
		{"cuda:all", 0, InflightCUDA}, {"cpu", 3, 3}, {"cuda:1", 1, 1}, {" cuda:0", 0, InflightCUDA},
		{"cudax", 0, InflightCPU}, {"cpu,cpu", 0, InflightCPU},
	} {
		c := Default()
		c.Device, c.Inflight = tc.device, tc.inflight
		if got := c.InflightPerDevice(); got != tc.want {
			t.Errorf("device %s --inflight %d: %d batches per device, want %d", tc.device, tc.inflight, got, tc.want)
		}
	}
	if d := Default(); d.Inflight != 0 || d.InflightPerDevice() != InflightCPU {
		t.Errorf("Default(): Inflight %d, per device %d; want 0 (auto), %d on its cpu device", d.Inflight, d.InflightPerDevice(), InflightCPU)
	}
	c := Default()
	c.Device, c.GraphSessions = "cuda:0", InflightCUDA
	if err := c.Validate(); err != nil {
		t.Errorf("cuda:0, --graph-sessions %d with --inflight auto: %v", InflightCUDA, err)
	}
	c.Device = "cpu"
	if err := c.Validate(); !errors.Is(err, ErrConfig) || !strings.Contains(err.Error(), "--graph-sessions") {
		t.Errorf("cpu, --graph-sessions %d with --inflight auto (%d): %v, want a --graph-sessions error", InflightCUDA, InflightCPU, err)
	}
}

// TestPlanChunks: the chunk windows default to the model's max length and half of it, are
// checked against the model (0 < stride ≤ window ≤ max length), and a model is chunked only with
// the per-residue output of every layer it mean-pools; bos outputs need nothing more.
func TestPlanChunks(t *testing.T) {
	c := Default()
	c.Overlength = "chunk"
	for _, ok := range []struct{ window, stride int }{{0, 0}, {1022, 511}, {1, 1}, {1022, 1022}, {500, 0}} {
		c.ChunkWindow, c.ChunkStride = ok.window, ok.stride
		if err := c.Validate(); err != nil {
			t.Errorf("window %d stride %d: %v", ok.window, ok.stride, err)
		}
	}
	man := &gpurun.Manifest{Name: "m", NumLayers: 6, MaxLength: 1022, Output: "embedding", Outputs: []gpurun.OutputSpec{
		{Name: "embedding", Layer: 6, Pooling: gpurun.PoolMean}, {Name: "residues_l6", Layer: 6, Pooling: gpurun.PoolPerResidue},
		{Name: "bos_l6", Layer: 6, Pooling: gpurun.PoolBOS}, {Name: "bos_l2", Layer: 2, Pooling: gpurun.PoolBOS}}}
	for _, w := range []struct{ window, stride, wantW, wantS int }{{0, 0, 1022, 511}, {100, 0, 100, 50}, {1, 0, 1, 1}, {300, 300, 300, 300}} {
		c.ChunkWindow, c.ChunkStride = w.window, w.stride
		p, err := planChunks(c, man)
		if err != nil || p.window != w.wantW || p.stride != w.wantS || p.residues[6] != 1 {
			t.Errorf("window %d stride %d: plan %+v, %v; want window %d stride %d", w.window, w.stride, p, err, w.wantW, w.wantS)
		}
	}
	c.ChunkWindow, c.ChunkStride = 1023, 0
	if _, err := planChunks(c, man); !errors.Is(err, ErrConfig) || !strings.Contains(err.Error(), "--chunk-window 1023") {
		t.Errorf("window over the max length: %v", err)
	}
	c.ChunkWindow = 0
	man.Outputs = append(man.Outputs, gpurun.OutputSpec{Name: "mean_l3", Layer: 3, Pooling: gpurun.PoolMean})
	_, err := planChunks(c, man)
	want := "seqembed model build --outputs per-residue:3,per-residue:-1,bos:-1,bos:2,mean:3"
	if !errors.Is(err, ErrConfig) || !strings.Contains(err.Error(), "has no residues_l3:") || !strings.Contains(err.Error(), want) {
		t.Errorf("mean_l3 without residues_l3: %v, want the rebuild %q", err, want)
	}
	man.Outputs = man.Outputs[:1]
	_, err = planChunks(c, man)
	if !errors.Is(err, ErrConfig) || !strings.Contains(err.Error(), "has no residues_l6:") || !strings.Contains(err.Error(), "--outputs per-residue:-1`") {
		t.Errorf("embedding only: %v", err)
	}
}

// TestCUDAPreflight: --device cuda:N where there is no NVIDIA driver or ONNX Runtime has no CUDA
// provider fails before any session with one sentence naming what is missing; a CPU device needs
// neither; a provider that fails to load for want of a CUDA library is named too.
func TestCUDAPreflight(t *testing.T) {
	dir := t.TempDir()
	ortLib := filepath.Join(dir, "libonnxruntime.so")
	driver := filepath.Join(dir, "version")
	cuda := []gpurun.Device{{Kind: "cpu"}, {Kind: "cuda", Index: 1}}
	if err := cudaPreflight([]gpurun.Device{{Kind: "cpu"}}, cudaNeeds{driver: driver, ortLib: ortLib}); err != nil {
		t.Errorf("cpu: %v", err)
	}
	err := cudaPreflight(cuda, cudaNeeds{driver: driver, ortLib: ortLib})
	want := "pipeline: device unusable: --device cuda:1 cannot run here: missing the NVIDIA driver (no " + driver +
		": no GPU, or the container was started without one), and ONNX Runtime's CUDA provider (no libonnxruntime_providers_shared.so or " +
		"libonnxruntime_providers_cuda.so next to " + ortLib + ", a CPU-only build: point ONNXRUNTIME_SHARED_LIBRARY_PATH at a GPU build, " +
		"README \"GPU\"); --device cpu runs on the CPU"
	if !errors.Is(err, ErrDevice) || err.Error() != want || strings.Count(err.Error(), ". ") != 0 {
		t.Errorf("no driver, no provider:\n got %v\nwant %s", err, want)
	}
	for _, f := range []string{driver, filepath.Join(dir, "libonnxruntime_providers_shared.so")} {
		if err := os.WriteFile(f, nil, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := cudaPreflight(cuda, cudaNeeds{driver: driver, ortLib: ortLib}); err == nil ||
		!strings.Contains(err.Error(), "missing ONNX Runtime's CUDA provider (no libonnxruntime_providers_cuda.so next to") || strings.Contains(err.Error(), "driver") {
		t.Errorf("driver, no CUDA provider: %v", err)
	}
	if err := os.WriteFile(filepath.Join(dir, "libonnxruntime_providers_cuda.so"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := cudaPreflight(cuda, cudaNeeds{driver: driver, ortLib: ortLib}); err != nil {
		t.Errorf("all there: %v", err)
	}
	ortErr := errors.New("gpurun: session: CUDA provider options: [ONNXRuntimeError] : 1 : FAIL : Failed to load library libonnxruntime_providers_cuda.so with error: libcublasLt.so.13: cannot open shared object file")
	if err := sessionHint(gpurun.Device{Kind: "cuda"}, ortErr); !errors.Is(err, ErrDevice) ||
		!strings.HasPrefix(err.Error(), "pipeline: device unusable: --device cuda:0 cannot run here: cuBLAS is missing or does not load") {
		t.Errorf("cuBLAS missing: %v", err)
	}
	if err := sessionHint(gpurun.Device{Kind: "cpu"}, ortErr); err != ortErr {
		t.Errorf("cpu errors are left alone: %v", err)
	}
}

// A model of several outputs, halved by an out-of-memory over 2 rows: the runs' Results are put
// back together in row order (rows, lengths, offsets, pooled and per-residue values) and a
// poison row's outputs are left out with its embedding.
func TestEmbedInHalvesMergesOutputs(t *testing.T) {
	b := batchOf(6, 4)
	for r := range 6 { // row r has r%3 residues: mask ones r%3 + 2
		for c := range 4 {
			b.Mask[r*4+c] = int64(min(1, max(0, r%3+2-c)))
		}
	}
	specs := []gpurun.OutputSpec{{Name: "bos_l0", Pooling: gpurun.PoolBOS}, {Name: "residues_l1", Pooling: gpurun.PoolPerResidue}}
	var runs []int
	embed := func(_ context.Context, in gpurun.Input, dst []float32) ([]float32, *gpurun.Result, error) {
		runs = append(runs, in.Rows)
		if in.Rows > 2 {
			return dst, nil, errors.New("CUDA out of memory")
		}
		if slices.Contains(in.IDs, 5) {
			return dst, nil, errors.New("poison")
		}
		res := &gpurun.Result{Rows: in.Rows, Dim: 1, Offsets: []int{0}, Outputs: []gpurun.OutputValues{{OutputSpec: specs[0]}, {OutputSpec: specs[1]}}}
		for r := range in.Rows {
			tok := float32(in.IDs[r*in.Cols])
			n := int(in.Mask[r*in.Cols]+in.Mask[r*in.Cols+1]+in.Mask[r*in.Cols+2]+in.Mask[r*in.Cols+3]) - 2
			dst = append(dst, tok)
			res.Lengths = append(res.Lengths, n)
			res.Offsets = append(res.Offsets, res.Offsets[r]+n)
			res.Outputs[0].F32 = append(res.Outputs[0].F32, 10*tok)
			for j := range n {
				res.Outputs[1].F32 = append(res.Outputs[1].F32, 100*tok+float32(j))
			}
		}
		return dst, res, nil
	}
	var acc embedded
	embedInHalves(context.Background(), embed, b, 0, 6, &acc, zap.NewNop())
	if len(acc.failed) != 1 || acc.failed[0].row != 4 || !slices.Equal(acc.emb, []float32{1, 2, 3, 4, 6}) {
		t.Fatalf("emb %v, failed %v", acc.emb, acc.failed)
	}
	all := acc.all
	if all.Rows != 5 || !slices.Equal(all.Lengths, []int{0, 1, 2, 0, 2}) || !slices.Equal(all.Offsets, []int{0, 0, 1, 3, 3, 5}) {
		t.Fatalf("merged rows %d lengths %v offsets %v", all.Rows, all.Lengths, all.Offsets)
	}
	if !slices.Equal(all.Outputs[0].F32, []float32{10, 20, 30, 40, 60}) || !slices.Equal(all.Outputs[1].F32, []float32{200, 300, 301, 600, 601}) {
		t.Errorf("merged outputs %v %v", all.Outputs[0].F32, all.Outputs[1].F32)
	}
	if f32, _ := all.Row(&all.Outputs[1], 4); !slices.Equal(f32, []float32{600, 601}) {
		t.Errorf("row 4 residues %v", f32)
	}
}
