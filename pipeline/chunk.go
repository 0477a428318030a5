package pipeline

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"

	"github.com/seqembed/seqembed/arrowout"
	"github.com/seqembed/seqembed/batcher"
	"github.com/seqembed/seqembed/consumer"
	"github.com/seqembed/seqembed/gpurun"
	"github.com/seqembed/seqembed/internal/half"
)

// Long records (--overlength chunk). The consumer flags a record longer than the window
// (consumer.Record.Chunk, all its residues kept); the feeder hands it to the chunk loops instead
// of the batcher. A chunk loop owns the record from then until it is acked or nak'd: it cuts it
// into windows (batcher.Windows), embeds them as rows of the record's own runs — each window
// alone as <cls> window <eos>, as many windows a run as the batch budget takes, through the
// device pool and the retry-in-halves rule like any batch — merges every output as the windows
// come back (batcher.Merger, MeanRows) and publishes one row for the record, acked once stored.
// The keeper heartbeats the record the whole time (held from the feeder on, as every record).
//
// A window that fails even alone fails the record: it is nak'd (after a second) for
// redelivery and nothing of it is published; a record that fails on every delivery is
// dead-lettered by the max-deliveries rule (consumer.WatchMaxDeliveries). The model-error rule
// (a row failing alone while its batch-mates work) does not apply: a chunked record's runs hold
// only its own windows, so no other record vouches for the device.

// chunkPlan is how a model's outputs are made for a chunked record: the windows, and for each
// layer the per-residue output its means are computed from.
type chunkPlan struct {
	window, stride int
	residues       map[int]int // layer → index in the manifest's outputs of its residues_lN
}

// planChunks resolves cfg's windows against man (0 = the defaults: the model's max length, half
// the window) and checks that man can be chunked exactly: a residues_lN output for every layer
// it mean-pools, the embedding's (the last layer) included, since the mean over residues of
// merged states needs the per-residue states (a window's own mean would count twice the
// residues two windows cover). A bos_lN output needs nothing more: it is the mean of the
// windows' bos_lN rows.
func planChunks(cfg Config, man *gpurun.Manifest) (*chunkPlan, error) {
	c := &chunkPlan{window: cfg.ChunkWindow, stride: cfg.ChunkStride, residues: map[int]int{}}
	if c.window == 0 {
		c.window = man.MaxLength
	}
	if c.stride == 0 {
		c.stride = max(1, c.window/2)
	}
	if c.window > man.MaxLength {
		return nil, fmt.Errorf("%w: --chunk-window %d > the max length of model %s (%d residues)", ErrConfig, c.window, man.Name, man.MaxLength)
	}
	if c.stride > c.window {
		return nil, fmt.Errorf("%w: --chunk-stride %d > the window (%d): windows would leave residues out", ErrConfig, c.stride, c.window)
	}
	for i, o := range man.Outputs {
		if o.PerResidue() {
			c.residues[o.Layer] = i
		}
	}
	var missing []int
	for _, o := range man.Outputs {
		if o.Pooling == gpurun.PoolMean && !slices.Contains(missing, o.Layer) {
			if _, ok := c.residues[o.Layer]; !ok {
				missing = append(missing, o.Layer)
			}
		}
	}
	if len(missing) == 0 {
		return c, nil
	}
	// The rebuild: the model's outputs plus the missing per-residue ones, in `model build
	// --outputs` terms (-1 = the last layer).
	layer := func(l int) string {
		if l == man.NumLayers {
			return "-1"
		}
		return fmt.Sprint(l)
	}
	var names, want []string
	for _, l := range missing {
		names = append(names, fmt.Sprintf("residues_l%d", l))
		want = append(want, "per-residue:"+layer(l))
	}
	for _, o := range man.Outputs {
		if o.Name != man.Output {
			want = append(want, o.Pooling+":"+layer(o.Layer))
		}
	}
	return nil, fmt.Errorf("%w: --overlength chunk: model %s has no %s: the mean of a chunked record (the embedding column is layer %d's) is the mean of its merged per-residue states, which need the per-residue output of every mean-pooled layer; rebuild the model with `seqembed model build --outputs %s` (or use --overlength truncate or reject)",
		ErrConfig, man.Name, strings.Join(names, ", "), man.NumLayers, strings.Join(want, ","))
}

// chunkRec is a chunked record on its way to a chunk loop.
type chunkRec struct {
	rec     consumer.Record
	arrived time.Time
}

// tokens are the tokens of a record of n residues embedded in the plan's windows (its hold in
// the keeper's budget).
func (c *chunkPlan) tokens(n int) int {
	return len(batcher.Windows(n, c.window, c.stride)) * (min(n, c.window) + 2)
}

// chunkLoop is one chunk loop: take a chunked record off the queue, embed its windows, publish
// its merged row, ack, until stop closes. A record taken after stop closed is nak'd for another
// worker (Run naks the rest of the queue).
func (p *Pipeline) chunkLoop(ctx context.Context, queue <-chan chunkRec, stop <-chan struct{}) {
	for {
		select {
		case <-stop:
			return
		case cr := <-queue:
			select {
			case <-stop:
				consumer.NakAll([]jetstream.Msg{cr.rec.Msg}, 0)
			default:
				p.metrics.InflightAdd(1)
				p.chunked(ctx, cr)
				p.metrics.InflightAdd(-1)
			}
			p.keep.Release(cr.rec.Msg) // acked, nak'd or termed
			p.queued.Add(-1)
		}
	}
}

// chunked embeds one chunked record's windows, merges them, publishes the record's one row and
// acks it, under the rules of batch (publish until stored, rows too large dead-lettered, ack
// after store, nak at the shutdown timeout), except that any window that fails fails the record
// (nak'd for redelivery, nothing published).
func (p *Pipeline) chunked(ctx context.Context, cr chunkRec) {
	rec, plan, man := cr.rec, p.eng.chunk, p.eng.Manifest()
	msgs := []jetstream.Msg{rec.Msg}
	n := len(rec.Residues)
	starts := batcher.Windows(n, plan.window, plan.stride)
	cols := min(n, plan.window) + 2 // every window is as long: none is padded
	// A row too large to hold is dead-lettered before any window runs: its merge holds (in
	// float64) several times the row, and a record of a million residues is gigabytes. Rows
	// larger than a message are published as row slices (arrowout.HeaderResidues).
	if size := residueBytes(man, n); size > MaxChunkedRowBytes {
		rej := &consumer.RejectError{Reason: consumer.ReasonOutputTooLarge, ID: rec.ID, StreamSeq: rec.StreamSeq,
			Err: fmt.Errorf("row too large: its per-residue outputs alone would be %d bytes (%d residues, %d windows), over the %d bytes one chunked row may have; write float16 per-residue outputs or fewer layers, or use --overlength truncate",
				size, n, len(starts), MaxChunkedRowBytes)}
		if err := consumer.DeadLetterMsg(ctx, p.js, p.model, rec.Msg, rej, p.metrics, p.log); err != nil {
			p.log.Error("dead-letter", zap.Error(err))
		}
		return
	}
	it := batcher.Item{ID: rec.ID, Residues: rec.Residues, StreamSeq: rec.StreamSeq, Description: rec.Description,
		InputLength: rec.Length, SeqSHA256: rec.SeqSHA256, StopStripped: rec.StopStripped, InputIndex: rec.InputIndex,
		Ref: rec.Msg, Arrived: cr.arrived}
	b := &batcher.Batch{Rows: len(starts), Cols: cols, Tokens: len(starts) * cols, Oldest: cr.arrived,
		InputIDs: make([]int64, len(starts)*cols), Mask: make([]int64, len(starts)*cols)}
	for i, st := range starts {
		lo, hi := batcher.Window(st, n, plan.window)
		p.eng.Tokenizer().Encode(b.InputIDs[i*cols:], rec.Residues[lo:hi])
		b.Items = append(b.Items, it)
	}
	for i := range b.Mask {
		b.Mask[i] = 1
	}
	p.stats.batch(b)
	// As many windows a run as the batch budget takes; each run's outputs are merged at once, so
	// only the merged states (and the bos rows) outlive it.
	per := max(1, min(p.cfg.MaxBatchRows, p.cfg.MaxBatchTokens/cols))
	m := newChunkMerge(plan, man, n)
	t0 := time.Now()
	for lo := 0; lo < len(starts); lo += per {
		hi := min(lo+per, len(starts))
		var acc embedded
		embedInHalves(ctx, p.eng.run, b, lo, hi, &acc, p.log)
		if ctx.Err() != nil {
			p.log.Warn("chunked record abandoned at shutdown; nak'd", zap.String("id", rec.ID), zap.Uint64("stream_seq", rec.StreamSeq))
			consumer.NakAll(msgs, 0)
			return
		}
		if len(acc.failed) > 0 {
			f := acc.failed[0]
			p.log.Error("a window of a chunked record failed; the record is nak'd for redelivery, nothing published",
				zap.String("id", rec.ID), zap.Uint64("stream_seq", rec.StreamSeq), zap.Int("residues", n),
				zap.Int("window", f.row), zap.Int("windows", len(starts)), zap.Int("window_start", starts[f.row]),
				zap.Uint64("delivered", rec.Delivered), zap.Error(f.err))
			consumer.NakAll(msgs, time.Second)
			return
		}
		if err := m.add(starts[lo:hi], acc.all); err != nil { // a bug, not the record's fault
			p.log.Error("chunked record: outputs do not match its windows; nak'd", zap.String("id", rec.ID), zap.Error(err))
			consumer.NakAll(msgs, time.Second)
			return
		}
	}
	p.metrics.ObserveInference(time.Since(t0))
	out := &arrowout.Batch{IDs: []string{rec.ID}, StreamSeqs: []uint64{rec.StreamSeq}, Lengths: []int32{int32(n)},
		Truncated: []bool{false}, SeqSHA256s: []string{rec.SeqSHA256}, Descriptions: []string{rec.Description},
		InputLengths: []int32{int32(rec.Length)}, StopStripped: []bool{rec.StopStripped}, InputIndexes: []int64{rec.InputIndex},
		Chunks: []int32{int32(len(starts))}}
	m.fill(out, p.eng.outputs)
	p.storeAndAck(ctx, out, msgs, []batcher.Item{it}, zap.String("id", rec.ID))
}

// MaxChunkedRowBytes bounds the per-residue outputs of one chunked record's row (256 MiB: 52k
// residues of ESM-2 3B in float16, 105k of 650M); a longer record is dead-lettered
// output_too_large before any of its windows runs.
const MaxChunkedRowBytes = 256 << 20

// residueBytes are the bytes of the per-residue values of man's outputs for a row of n residues.
func residueBytes(man *gpurun.Manifest, n int) int {
	size := 0
	for _, o := range man.Outputs {
		if o.PerResidue() {
			w := 4
			if o.DType == "float16" {
				w = 2
			}
			size += n * man.EmbeddingDim * w
		}
	}
	return size
}

// chunkMerge gathers one chunked record's outputs window by window: a Merger per per-residue
// output (by its index in the manifest's outputs), the windows' rows per bos output.
type chunkMerge struct {
	plan    *chunkPlan
	man     *gpurun.Manifest
	mergers map[int]*batcher.Merger
	bos     map[int][][]float32
	f32     []float32 // scratch: a float16 window widened
}

func newChunkMerge(plan *chunkPlan, man *gpurun.Manifest, n int) *chunkMerge {
	m := &chunkMerge{plan: plan, man: man, mergers: map[int]*batcher.Merger{}, bos: map[int][][]float32{}}
	for i, o := range man.Outputs {
		if o.PerResidue() {
			m.mergers[i] = batcher.NewMerger(n, man.EmbeddingDim)
		}
	}
	return m
}

// add merges the outputs of one run, whose row j is the window starting at residue starts[j].
func (m *chunkMerge) add(starts []int, res *gpurun.Result) error {
	if res == nil || res.Rows != len(starts) || len(res.Outputs) != len(m.man.Outputs) {
		return fmt.Errorf("pipeline: a run of %d windows came back without its outputs", len(starts))
	}
	for i := range res.Outputs {
		v := &res.Outputs[i]
		for j, st := range starts {
			f32, f16 := res.Row(v, j)
			switch {
			case v.PerResidue():
				if f16 != nil {
					m.f32 = m.f32[:0]
					for _, h := range f16 {
						m.f32 = append(m.f32, half.ToFloat32(h))
					}
					f32 = m.f32
				}
				m.mergers[i].Add(st, f32)
			case v.Pooling == gpurun.PoolBOS:
				m.bos[i] = append(m.bos[i], slices.Clone(f32))
			}
		}
	}
	return nil
}

// fill sets out's one row's embedding and extra outputs (in plan's column order) to the merged
// values: per-residue outputs the merged states (float16 again where the model's are), bos the
// mean of the windows' rows, means the mean over residues of the merged states of their layer.
func (m *chunkMerge) fill(out *arrowout.Batch, plan outputPlan) {
	mean := func(layer int) []float32 { return m.mergers[m.plan.residues[layer]].Mean(nil) }
	out.Embeddings = mean(m.man.Outputs[plan.embedding].Layer)
	out.Outputs = out.Outputs[:0]
	for _, i := range plan.extra {
		o := m.man.Outputs[i]
		switch {
		case o.PerResidue() && o.DType == "float16":
			d := arrowout.OutputData{PerResidue: true}
			for _, v := range m.mergers[i].Residues(nil) {
				d.F16 = append(d.F16, half.FromFloat64(float64(v)))
			}
			out.Outputs = append(out.Outputs, d)
		case o.PerResidue():
			out.Outputs = append(out.Outputs, arrowout.OutputData{PerResidue: true, F32: m.mergers[i].Residues(nil)})
		case o.Pooling == gpurun.PoolBOS:
			out.Outputs = append(out.Outputs, arrowout.OutputData{F32: batcher.MeanRows(nil, m.bos[i]...)})
		default:
			out.Outputs = append(out.Outputs, arrowout.OutputData{F32: mean(o.Layer)})
		}
	}
}
