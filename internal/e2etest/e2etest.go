// Package e2etest holds the helpers of the end-to-end tests (pipeline, cmd/seqembed, localrun,
// ingest): a real in-process nats-server per test, the tiny model on the real ONNX Runtime,
// records in, output out. Only tests import it.
package e2etest

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"

	"github.com/seqembed/seqembed/arrowout"
	"github.com/seqembed/seqembed/consumer"
	"github.com/seqembed/seqembed/esm2graph"
	"github.com/seqembed/seqembed/gpurun"
	"github.com/seqembed/seqembed/internal/natstest"
	"github.com/seqembed/seqembed/internal/refout"
	"github.com/seqembed/seqembed/internal/testutil"
	"github.com/seqembed/seqembed/pipeline"
)

// Root is the repository's root directory: the nearest folder above the working directory (a
// test's package folder) that holds go.mod. (Not the source path of this file: binaries built
// with -trimpath for the GPU machine have none.)
var Root = func() string {
	dir, err := os.Getwd()
	if err != nil {
		return "."
	}
	for d := dir; ; d = filepath.Dir(d) {
		if _, err := os.Stat(filepath.Join(d, "go.mod")); err == nil {
			return d
		}
		if filepath.Dir(d) == d {
			return dir
		}
	}
}()

// TinyModel is testdata/esm2-tiny: 2 layers, random weights, golden PyTorch embeddings.
var TinyModel = filepath.Join(Root, "testdata", "esm2-tiny")

// aminoAcids are the 20 standard amino acids.
const aminoAcids = "ACDEFGHIKLMNPQRSTVWY"

// RequireORT skips the test without ONNX Runtime's library, or fails it when CI is set: in CI
// every test runs.
func RequireORT(t testing.TB) {
	t.Helper()
	if _, err := os.Stat(gpurun.LibraryPath()); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("ONNX Runtime library missing in CI: %v", err)
		}
		t.Skipf("ONNX Runtime library not found: %v", err)
	}
}

// Config is the worker's default configuration for the tiny model on the CPU, with 2 threads
// and a 10 ms linger.
func Config() pipeline.Config {
	cfg := pipeline.Default()
	cfg.ModelDir, cfg.Threads, cfg.MaxWait = TinyModel, 2, 10*time.Millisecond
	return cfg
}

// Server skips (or, in CI, fails) the test without ONNX Runtime, starts an in-process
// nats-server for it and connects to it; ctx ends after timeout or when the test ends.
func Server(t testing.TB, timeout time.Duration) (context.Context, *server.Server, *nats.Conn, jetstream.JetStream) {
	t.Helper()
	RequireORT(t)
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	t.Cleanup(cancel)
	srv := natstest.Server(t, nil)
	nc, js := natstest.Connect(t, srv)
	return ctx, srv, nc, js
}

// Worker is a pipeline under test; Start runs it in the background.
type Worker struct {
	P    *pipeline.Pipeline
	cfg  pipeline.Config
	stop context.CancelFunc
	done chan error
}

// NewWorker builds a pipeline on its own connection to srv (streams and durable consumer set up).
func NewWorker(t testing.TB, ctx context.Context, srv *server.Server, cfg pipeline.Config) *Worker {
	t.Helper()
	nc, _ := natstest.Connect(t, srv)
	return NewWorkerConn(t, ctx, nc, cfg)
}

// NewWorkerConn builds a pipeline on nc.
func NewWorkerConn(t testing.TB, ctx context.Context, nc *nats.Conn, cfg pipeline.Config) *Worker {
	t.Helper()
	p, err := pipeline.New(ctx, cfg, pipeline.Deps{Conn: nc, Log: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	return &Worker{P: p, cfg: cfg}
}

// StartWorker builds a pipeline on its own connection to srv and starts it.
func StartWorker(t testing.TB, ctx context.Context, srv *server.Server, cfg pipeline.Config) *Worker {
	t.Helper()
	w := NewWorker(t, ctx, srv, cfg)
	w.Start(t, ctx)
	return w
}

// Start runs the pipeline; a test that ends without stopping it stops it at cleanup, before the
// server goes.
func (w *Worker) Start(t testing.TB, ctx context.Context) *Worker {
	t.Helper()
	wctx, stop := context.WithCancel(ctx)
	w.stop, w.done = stop, make(chan error, 1)
	go func() { w.done <- w.P.Run(wctx) }()
	t.Cleanup(func() {
		w.stop()
		select {
		case <-w.done:
		case <-time.After(2 * w.cfg.ShutdownTimeout):
		}
	})
	return w
}

// Model is the pipeline's model name.
func (w *Worker) Model() string { return w.P.Model() }

// Wait cancels the pipeline and returns what Run returns, however long that takes.
func (w *Worker) Wait() error {
	w.stop()
	err := <-w.done
	w.done <- err // for the cleanup
	return err
}

// Shutdown cancels the pipeline; Run must return nil within within.
func (w *Worker) Shutdown(t testing.TB, within time.Duration) {
	t.Helper()
	w.stop()
	select {
	case err := <-w.done:
		w.done <- err
		if err != nil {
			t.Fatalf("worker run returned %v", err)
		}
	case <-time.After(within):
		t.Fatalf("worker run did not return within %s of its context being cancelled", within)
	}
}

// Rows is the rows the pipeline has run.
func (w *Worker) Rows() int { return w.P.Stats().Rows }

// BeforeEmbed is a Hooks.WrapEmbed that calls hook before each run: an error from hook is the
// run's error, otherwise the real run follows.
func BeforeEmbed(hook func(in gpurun.Input) error) func(next pipeline.EmbedFunc) pipeline.EmbedFunc {
	return func(next pipeline.EmbedFunc) pipeline.EmbedFunc {
		return func(ctx context.Context, in gpurun.Input, dst []float32) ([]float32, *gpurun.Result, error) {
			if err := hook(in); err != nil {
				return dst, nil, err
			}
			return next(ctx, in, dst)
		}
	}
}

// GoldenRec is one record of testdata/esm2-tiny/golden.json.
type GoldenRec struct {
	ID        string    `json:"id"`
	Sequence  string    `json:"sequence"`
	Embedding []float32 `json:"embedding"`
}

// LoadGolden returns the 20 golden records by id (sequences truncated at 1022 by the exporter).
func LoadGolden(t testing.TB) map[string]GoldenRec {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(TinyModel, "golden.json"))
	if err != nil {
		t.Fatal(err)
	}
	var g struct{ Records []GoldenRec }
	if err := json.Unmarshal(data, &g); err != nil {
		t.Fatal(err)
	}
	out := map[string]GoldenRec{}
	for _, r := range g.Records {
		out[r.ID] = r
	}
	return out
}

// CheckEmbedding fails the test if got differs from want by more than 1e-4 anywhere.
func CheckEmbedding(t testing.TB, id string, got, want []float32) {
	t.Helper()
	worst := 0.0
	for i := range min(len(got), len(want)) {
		worst = math.Max(worst, math.Abs(float64(got[i]-want[i])))
	}
	if len(got) != len(want) || worst > 1e-4 {
		t.Errorf("%s: embedding differs from PyTorch golden by %.3g (len %d vs %d)", id, worst, len(got), len(want))
	}
}

// DeadLetters waits until the model's dead-letter subject holds at least n records and returns them.
func DeadLetters(t testing.TB, ctx context.Context, js jetstream.JetStream, model string, n int) []consumer.DeadLetter {
	t.Helper()
	var dls []consumer.DeadLetter
	testutil.Eventually(t, 30*time.Second, func() (bool, string) {
		var err error
		if dls, err = consumer.ReadDeadLetters(ctx, js, "SEQS", model, "", 0); err != nil {
			t.Fatal(err)
		}
		return len(dls) >= n, fmt.Sprintf("%d of %d dead letters", len(dls), n)
	})
	return dls
}

// RandomProtein draws minLen..maxLen residues from the 20 standard amino acids.
func RandomProtein(rng *rand.Rand, minLen, maxLen int) []byte {
	b := make([]byte, minLen+rng.IntN(maxLen-minLen+1))
	for i := range b {
		b[i] = aminoAcids[rng.IntN(len(aminoAcids))]
	}
	return b
}

// RandomSeqs returns n sequences of 30..400 residues keyed by id "<prefix>0".."<prefix>n-1",
// from a fixed seed.
func RandomSeqs(prefix string, n int, seed uint64) (ids []string, seqs map[string]string) {
	rng := rand.New(rand.NewPCG(seed, seed^0x5eed))
	seqs = make(map[string]string, n)
	for i := range n {
		id := fmt.Sprintf("%s%d", prefix, i)
		ids = append(ids, id)
		seqs[id] = string(RandomProtein(rng, 30, 400))
	}
	return ids, seqs
}

// InputMsg is one record for the model's input subject (no id header when id is empty).
func InputMsg(model, id, seq string) *nats.Msg {
	m := nats.NewMsg(consumer.Subject(model))
	if id != "" {
		m.Header.Set(consumer.HeaderID, id)
	}
	m.Data = []byte(seq)
	return m
}

// PublishRecords publishes each record in turn, waiting for its PubAck.
func PublishRecords(t testing.TB, js jetstream.JetStream, model string, recs map[string]string) {
	t.Helper()
	for id, seq := range recs {
		if _, err := js.PublishMsg(context.Background(), InputMsg(model, id, seq)); err != nil {
			t.Fatal(err)
		}
	}
}

// PublishAsync publishes one record per id to the model's input subject and waits for every PubAck.
func PublishAsync(t testing.TB, ctx context.Context, js jetstream.JetStream, model string, ids []string, seqs map[string]string) {
	t.Helper()
	futs := make([]jetstream.PubAckFuture, 0, len(ids))
	for _, id := range ids {
		f, err := js.PublishMsgAsync(InputMsg(model, id, seqs[id]))
		if err != nil {
			t.Fatal(err)
		}
		futs = append(futs, f)
	}
	for i, f := range futs {
		select {
		case <-f.Ok():
		case err := <-f.Err():
			t.Fatalf("publishing %s: %v", ids[i], err)
		case <-ctx.Done():
			t.Fatalf("publishing %s: %v", ids[i], ctx.Err())
		}
	}
}

// PublishFresh publishes n random records with ids "<prefix>0".. and returns them.
func PublishFresh(t testing.TB, ctx context.Context, js jetstream.JetStream, model, prefix string, n int) ([]string, map[string]string) {
	t.Helper()
	ids, seqs := RandomSeqs(prefix, n, 9)
	PublishAsync(t, ctx, js, model, ids, seqs)
	return ids, seqs
}

// WaitForStreams waits until the child worker has created the input and output streams. If the
// child exits first it returns what Wait returned and gone true.
func WaitForStreams(t testing.TB, ctx context.Context, js jetstream.JetStream, exited <-chan error) (err error, gone bool) {
	t.Helper()
	for {
		if _, err := js.Stream(ctx, "SEQS"); err == nil {
			if _, err := js.Stream(ctx, arrowout.DefaultStreamName); err == nil {
				return nil, false
			}
		}
		select {
		case err := <-exited:
			return err, true
		case <-ctx.Done():
			t.Fatal("streams never appeared")
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// MustStream is the named stream (SEQS: the input).
func MustStream(t testing.TB, ctx context.Context, js jetstream.JetStream, name string) jetstream.Stream {
	t.Helper()
	s, err := js.Stream(ctx, name)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// InputLeft is the number of messages on the model's input subject.
func InputLeft(t testing.TB, ctx context.Context, in jetstream.Stream, model string) uint64 {
	t.Helper()
	si, err := in.Info(ctx, jetstream.WithSubjectFilter(consumer.Subject(model)))
	if err != nil {
		t.Fatal(err)
	}
	return si.State.Subjects[consumer.Subject(model)]
}

// DurableInfo is the model's durable consumer's info.
func DurableInfo(t testing.TB, ctx context.Context, js jetstream.JetStream, model string) *jetstream.ConsumerInfo {
	t.Helper()
	ci, err := js.Consumer(ctx, "SEQS", consumer.Durable(model))
	if err != nil {
		t.Fatal(err)
	}
	info, err := ci.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return info
}

func WaitQueueEmpty(t testing.TB, js jetstream.JetStream, model string) {
	t.Helper()
	ctx := context.Background()
	in := MustStream(t, ctx, js, "SEQS")
	testutil.Eventually(t, 30*time.Second, func() (bool, string) {
		left := InputLeft(t, ctx, in, model)
		ci := DurableInfo(t, ctx, js, model)
		return left == 0 && ci.NumPending == 0 && ci.NumAckPending == 0,
			fmt.Sprintf("work queue: %d input messages left, %d pending, %d unacked", left, ci.NumPending, ci.NumAckPending)
	})
}

// SetMaxBytes sets the stream's MaxBytes limit.
func SetMaxBytes(t testing.TB, ctx context.Context, js jetstream.JetStream, s jetstream.Stream, n int64) {
	t.Helper()
	info, err := s.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	sc := info.Config
	sc.MaxBytes = n
	if _, err := js.UpdateStream(ctx, sc); err != nil {
		t.Fatal(err)
	}
}

// OutputConsumer reads the output stream from its start.
func OutputConsumer(t testing.TB, ctx context.Context, js jetstream.JetStream) jetstream.Consumer {
	t.Helper()
	oc, err := js.OrderedConsumer(ctx, arrowout.DefaultStreamName, jetstream.OrderedConsumerConfig{})
	if err != nil {
		t.Fatal(err)
	}
	return oc
}

// OutputIDs reads the output stream until want distinct ids have arrived and returns the count
// of each id seen.
func OutputIDs(t testing.TB, js jetstream.JetStream, want int) map[string]int {
	t.Helper()
	oc := OutputConsumer(t, context.Background(), js)
	seen := map[string]int{}
	for len(seen) < want {
		m, err := oc.Next(jetstream.FetchMaxWait(30 * time.Second))
		if err != nil {
			t.Fatalf("waiting for output (%d of %d ids): %v", len(seen), want, err)
		}
		_, rows, err := arrowout.Decode(m.Data())
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range rows {
			seen[r.ID]++
		}
	}
	return seen
}

// CheckEachOnce reports every id seen other than once.
func CheckEachOnce(t testing.TB, seen map[string]int) {
	t.Helper()
	for id, n := range seen {
		if n != 1 {
			t.Errorf("%s ×%d", id, n)
		}
	}
}

// ReadAllOutput reads the whole output stream until no message arrives for idle: the count of
// each id, the rows and the messages. An id that was never published is an error.
func ReadAllOutput(t testing.TB, ctx context.Context, js jetstream.JetStream, recs map[string]string, idle time.Duration) (seen map[string]int, rows, msgs int) {
	t.Helper()
	oc := OutputConsumer(t, ctx, js)
	seen = map[string]int{}
	for {
		m, err := oc.Next(jetstream.FetchMaxWait(idle))
		if errors.Is(err, nats.ErrTimeout) || errors.Is(err, jetstream.ErrNoMessages) || errors.Is(err, context.DeadlineExceeded) {
			return seen, rows, msgs
		}
		if err != nil {
			t.Fatal(err)
		}
		msgs++
		_, rs, err := arrowout.Decode(m.Data())
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range rs {
			if _, ok := recs[r.ID]; !ok {
				t.Errorf("output has id %q that was never published", r.ID)
			}
			seen[r.ID]++
			rows++
		}
	}
}

// OutputReader reads the output stream from its start through an ordered consumer.
type OutputReader struct {
	t     testing.TB
	oc    jetstream.Consumer
	Seen  map[string]int // id → rows with that id
	Rows  map[string]arrowout.Row
	Msgs  int
	known map[string]string // id → published sequence; nil = any id accepted
}

func NewOutputReader(t testing.TB, ctx context.Context, js jetstream.JetStream, known map[string]string) *OutputReader {
	t.Helper()
	return &OutputReader{t: t, oc: OutputConsumer(t, ctx, js), Seen: map[string]int{}, Rows: map[string]arrowout.Row{}, known: known}
}

// next reads one output message (waiting up to wait) and records its rows; false on timeout.
func (r *OutputReader) Next(wait time.Duration) bool {
	r.t.Helper()
	m, err := r.oc.Next(jetstream.FetchMaxWait(wait))
	if err != nil {
		return false
	}
	meta, rows, err := arrowout.Decode(m.Data())
	if err != nil {
		r.t.Fatalf("decoding output message: %v", err)
	}
	if meta.Model != "esm2-tiny" || meta.Dim != 64 {
		r.t.Fatalf("output meta %+v", meta)
	}
	r.Msgs++
	for _, row := range rows {
		if r.known != nil {
			seq, ok := r.known[row.ID]
			if !ok {
				r.t.Fatalf("output has id %q that was never published", row.ID)
			}
			if int(row.Length) != len(seq) || row.Truncated {
				r.t.Errorf("%s: length %d truncated %v, want %d false", row.ID, row.Length, row.Truncated, len(seq))
			}
		}
		if len(row.Embedding) != 64 {
			r.t.Errorf("%s: embedding of %d values", row.ID, len(row.Embedding))
		}
		r.Seen[row.ID]++
		r.Rows[row.ID] = row
	}
	return true
}

// until reads output until want distinct ids were seen, failing after timeout.
func (r *OutputReader) Until(want int, timeout time.Duration) {
	r.t.Helper()
	deadline := time.Now().Add(timeout)
	for len(r.Seen) < want {
		left := time.Until(deadline)
		if left <= 0 {
			r.t.Fatalf("output has %d of %d ids after %s", len(r.Seen), want, timeout)
		}
		r.Next(min(left, time.Second))
	}
}

// drainFor keeps reading output for d (to catch late duplicates).
func (r *OutputReader) DrainFor(d time.Duration) {
	r.t.Helper()
	for deadline := time.Now().Add(d); time.Now().Before(deadline); {
		r.Next(min(time.Until(deadline), 200*time.Millisecond) + time.Millisecond)
	}
}

// checkOnce reports each of ids that was not output exactly once.
func (r *OutputReader) CheckOnce(ids []string) {
	r.t.Helper()
	for _, id := range ids {
		if n := r.Seen[id]; n != 1 {
			r.t.Errorf("%s appears %d times in the output, want 1", id, n)
		}
	}
}

// TinyHF is the tiny model's Hugging Face checkpoint (config.json + model.safetensors), the weights
// of RefOutputsFile.
var TinyHF = filepath.Join(Root, "esm2graph", "testdata", "esm2-tiny-hf")

// RefOutputsFile is tools/reference_outputs.py's output for TinyHF (PyTorch, fair-esm semantics).
var RefOutputsFile = filepath.Join(Root, "testdata", "esm2-tiny", "reference-outputs.json.gz")

// RefOutputs is RefOutputsFile (refout.Outputs), with lookups by output column.
type RefOutputs struct{ *refout.Outputs }

// LoadRefOutputs reads RefOutputsFile; without it the test is skipped (failed when CI is set),
// as esm2graph's reference tests are: it is made by tools/reference_outputs.py on a torch machine.
func LoadRefOutputs(t testing.TB) *RefOutputs {
	t.Helper()
	ref, err := refout.Load(RefOutputsFile)
	if errors.Is(err, os.ErrNotExist) && os.Getenv("CI") == "" {
		t.Skipf("reference outputs %s not present (tools/reference_outputs.py on a torch machine): %v", RefOutputsFile, err)
	}
	if err != nil {
		t.Fatal(err)
	}
	return &RefOutputs{ref}
}

// RefValues is the reference's values of the output column c of golden record rec (nil: the
// reference has no per-residue states of that record).
func (ref *RefOutputs) RefValues(rec int, c arrowout.OutputColumn) []float64 {
	r := ref.Records[rec]
	switch c.Pooling {
	case arrowout.PoolMean:
		return r.Mean[c.Layer]
	case arrowout.PoolBOS:
		return r.BOS[c.Layer]
	}
	if r.PerTok == nil {
		return nil
	}
	return r.PerTok[c.Layer]
}

// AllOutputs are every layer (0 to layers) of the tiny model × every pooling, mean of the last
// layer included (the embedding).
func AllOutputs(layers int) []esm2graph.Output {
	var outs []esm2graph.Output
	for l := range layers + 1 {
		for _, p := range []string{esm2graph.PoolMean, esm2graph.PoolBOS, esm2graph.PoolPerResidue} {
			outs = append(outs, esm2graph.Output{Layer: l, Pooling: p})
		}
	}
	return outs
}

// OutputsModel builds the tiny model's graph (TinyHF; mha, CPU) with outs (and float16
// per-residue outputs when fp16) into a folder of the test's and returns it.
func OutputsModel(t testing.TB, outs []esm2graph.Output, fp16 bool) string {
	t.Helper()
	return buildTiny(t, nil, esm2graph.Options{Name: "esm2-tiny-out", Outputs: outs, ResiduesFP16: fp16})
}

// FP16TinyModel builds the tiny model's graph (TinyHF; mha, CPU) in float16 weights and
// activations, named esm2-tiny-fp16, into a folder of the test's: a reduced-precision copy of
// testdata/esm2-tiny.
func FP16TinyModel(t testing.TB) string {
	t.Helper()
	return buildTiny(t, nil, esm2graph.Options{Name: "esm2-tiny-fp16", FP16: true})
}

// RandomTinyModel builds a graph of the tiny model's architecture (TinyHF's config; mha, CPU) with
// random weights of seed (esm2graph.RandomCheckpoint), named esm2-tiny-seedN, into a folder of the
// test's: another model, whose embeddings have nothing to do with testdata/esm2-tiny's.
func RandomTinyModel(t testing.TB, seed uint64) string {
	t.Helper()
	tiny, err := esm2graph.Load(TinyHF)
	if err != nil {
		t.Fatal(err)
	}
	cfg := tiny.Config
	tiny.Close()
	ck, err := esm2graph.RandomCheckpoint(cfg, seed)
	if err != nil {
		t.Fatal(err)
	}
	return buildTiny(t, ck, esm2graph.Options{Name: fmt.Sprintf("esm2-tiny-seed%d", seed)})
}

// buildTiny builds ck's graph (nil: TinyHF's) for the CPU with mha attention and the rest of
// opts into a folder of the test's and returns it.
func buildTiny(t testing.TB, ck *esm2graph.Checkpoint, opts esm2graph.Options) string {
	t.Helper()
	if ck == nil {
		var err error
		if ck, err = esm2graph.Load(TinyHF); err != nil {
			t.Fatal(err)
		}
	}
	defer ck.Close()
	dir := filepath.Join(t.TempDir(), "model")
	opts.Attention, opts.Device = esm2graph.AttentionMHA, esm2graph.DeviceCPU
	if _, err := esm2graph.Build(context.Background(), ck, dir, opts); err != nil {
		t.Fatal(err)
	}
	return dir
}

// MaxAbsDiff is the largest |got[i] - want[i]|, or +Inf when the lengths differ.
func MaxAbsDiff(got []float32, want []float64) float64 {
	if len(got) != len(want) {
		return math.Inf(1)
	}
	d := 0.0
	for i, g := range got {
		d = max(d, math.Abs(float64(g)-want[i]))
	}
	return d
}
