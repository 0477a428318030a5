package benchrun

import (
	"context"
	"errors"
	"io"
	"slices"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/seqembed/seqembed/batcher"
	"github.com/seqembed/seqembed/fasta"
	"github.com/seqembed/seqembed/gpurun"
	"github.com/seqembed/seqembed/pipeline"
)

// Raw prices the pipeline: it loads the model as the worker does (pipeline.NewEngine), batches
// the whole file with the engine's batcher (lingering an hour, so every bucket fills and then
// drains), warms up, and times only the model runs, Engine.Slots() of them in flight
// (InflightPerDevice per device) calling Engine.Embed. No NATS, no Arrow. gpu may be nil.
func Raw(ctx context.Context, cfg pipeline.Config, path string, log *zap.Logger, gpu *GPUMeter) (Result, *Series, error) {
	if log == nil {
		log = zap.NewNop()
	}
	eng, err := pipeline.NewEngine(cfg, nil)
	if err != nil {
		return Result{}, nil, err
	}
	defer eng.Close()
	man := eng.Manifest()
	res := Result{Mode: "raw", Model: man.Name, DType: man.DType, CUDAGraphs: eng.CUDAGraphs()}
	bat, err := eng.NewBatcher(batcher.WithMaxWait(time.Hour), batcher.WithQueueSize(1<<16), batcher.WithOutputSize(1<<14))
	if err != nil {
		return res, nil, err
	}
	batches, err := batchFile(ctx, bat, path, eng.Tokenizer(), man.MaxLength, &res)
	defer func() {
		for _, b := range batches {
			b.Release()
		}
	}()
	if err != nil {
		return res, nil, err
	}
	if err := eng.Warmup(ctx, bat, log); err != nil {
		return res, nil, err
	}
	res.WarmupSeconds = eng.WarmupTook().Seconds()

	next := make(chan *batcher.Batch, len(batches))
	for _, b := range batches {
		next <- b
	}
	close(next)
	series := &Series{BatchTime: "when the batch's run returned"}
	var mu sync.Mutex
	var runErr error
	var wg sync.WaitGroup
	eng.Busy().Snapshot(true) // the meter's window is the timed part only
	graphs0 := eng.GraphStats()
	start := time.Now()
	for range eng.Slots() {
		wg.Go(func() {
			var out []float32
			for b := range next {
				var err error
				out, err = eng.Embed(ctx, gpurun.Input{IDs: b.InputIDs, Mask: b.Mask, Rows: b.Rows, Cols: b.Cols}, out[:0])
				mu.Lock()
				series.Batches = append(series.Batches, BatchPoint{At: time.Now(), Rows: b.Rows, Tokens: b.Tokens, Padded: b.Rows * b.Cols})
				runErr = errors.Join(runErr, err)
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	elapsed := time.Since(start)
	busy, _, gap := eng.Busy().Snapshot(false)
	if runErr != nil {
		return res, nil, runErr
	}
	series.Start, series.End = start, start.Add(elapsed)
	res.Seconds = elapsed.Seconds()
	res.RunnerBusy, res.MeanGapMs = busy, ms(gap)
	graphTimes(&res, cfg, graphs0, eng.GraphStats())
	res.GPUUtil, res.GPUUtilPerDevice = gpu.Mean(series.Start, series.End), gpu.PerDevice(series.Start, series.End)
	return finish(res, cfg), series, nil
}

// batchFile adds every embeddable record of path to bat and drains it, returning all its
// batches (the caller releases them) and counting sequences, residues, batches and padding
// efficiency into res.
func batchFile(ctx context.Context, bat *batcher.Batcher, path string, tok *batcher.Tokenizer, maxLen int, res *Result) ([]*batcher.Batch, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	h := bat.Start(ctx)
	collected := make(chan []*batcher.Batch, 1)
	go func() {
		var bs []*batcher.Batch
		for b := range bat.Out() {
			bs = append(bs, b)
		}
		collected <- bs
	}()
	err := EachEmbeddable(path, tok, maxLen, func(id string, seq []byte) error {
		res.Sequences++
		res.Residues += int64(len(seq))
		return bat.Add(ctx, batcher.Item{ID: id, Residues: slices.Clone(seq)})
	})
	if err != nil {
		h.Stop()
	} else {
		h.Drain()
	}
	batches := <-collected
	<-h.Done()
	tokens, padded := 0, 0
	for _, b := range batches {
		tokens += b.Tokens
		padded += b.Rows * b.Cols
	}
	res.Batches = len(batches)
	res.PaddingEfficiency = float64(tokens) / float64(max(1, padded))
	return batches, err
}

// EachEmbeddable calls fn with each record of path that a worker embeds (valid residues; the
// records a worker dead-letters are skipped), its residues cut at maxLen. seq aliases the
// reader's buffer: valid only during the call.
func EachEmbeddable(path string, tok *batcher.Tokenizer, maxLen int, fn func(id string, seq []byte) error) error {
	rd, closer, err := fasta.Open(path)
	if err != nil {
		return err
	}
	defer closer.Close()
	for {
		rec, err := rd.Next()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			if fasta.Recoverable(err) {
				continue
			}
			return err
		}
		if tok.Validate(rec.Seq) != nil {
			continue
		}
		if err := fn(rec.ID, rec.Seq[:min(len(rec.Seq), maxLen)]); err != nil {
			return err
		}
	}
}
