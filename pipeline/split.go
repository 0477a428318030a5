package pipeline

import (
	"context"

	"go.uber.org/zap"

	"github.com/seqembed/seqembed/batcher"
	"github.com/seqembed/seqembed/gpurun"
)

// rowError is one batch row that failed on its own.
type rowError struct {
	row int
	err error
}

// embedded is what the runs of one batch made: the embeddings of the rows that worked, in row
// order; for a model of several outputs all their outputs (one Result, the runs' appended in
// row order; nil for a model of one output); and the rows that failed, in row order.
type embedded struct {
	emb    []float32
	all    *gpurun.Result
	failed []rowError
}

// embedInHalves is the retry-in-halves rule. It embeds rows [lo, hi) of b with embed, appending
// their embeddings (and outputs) to acc; a failed run is split in halves and each half retried,
// down to single rows. So a CUDA out-of-memory shrinks the batch until it fits, and a record
// that breaks the model is isolated: it fails alone. Rows that failed go to acc.failed in row
// order (all of them when ctx ends: nothing is retried after that).
func embedInHalves(ctx context.Context, embed EmbedFunc, b *batcher.Batch, lo, hi int, acc *embedded, log *zap.Logger) {
	c := b.Cols
	in := gpurun.Input{IDs: b.InputIDs[lo*c : hi*c], Mask: b.Mask[lo*c : hi*c], Rows: hi - lo, Cols: c}
	n0 := len(acc.emb)
	emb, res, err := embed(ctx, in, acc.emb)
	if err == nil {
		acc.emb = emb
		switch {
		case res == nil:
		case acc.all == nil:
			acc.all = res // each run's Result is its own: the first is the accumulator
		default:
			acc.all.Append(res)
		}
		return
	}
	acc.emb = emb[:n0]
	if hi-lo == 1 || ctx.Err() != nil {
		for r := lo; r < hi; r++ {
			acc.failed = append(acc.failed, rowError{r, err})
		}
		return
	}
	log.Warn("batch failed; retrying in halves", zap.Uint64("batch", b.Seq), zap.Int("rows", hi-lo),
		zap.Int("cols", c), zap.Uint64("first_stream_seq", b.Items[lo].StreamSeq), zap.Error(err))
	mid := (lo + hi) / 2
	embedInHalves(ctx, embed, b, lo, mid, acc, log)
	embedInHalves(ctx, embed, b, mid, hi, acc, log)
}

// verdict is what the rules make of a batch's failed rows.
type verdict int

const (
	allOK         verdict = iota // every row embedded
	deadLetterBad                // some rows failed alone while others worked: those rows are the records' fault
	nakAll                       // no row worked: a broken device is not the records' fault, nak every input
)

// judge applies the dead-letter rule to a batch of rows rows of which failed failed alone.
func judge(rows int, failed []rowError) verdict {
	switch {
	case len(failed) == 0:
		return allOK
	case len(failed) == rows:
		return nakAll
	}
	return deadLetterBad
}
