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

// embedInHalves is the retry-in-halves rule. It embeds rows [lo, hi) of b with embed, appending
// their embeddings to emb in row order; a failed run is split in halves and each half retried,
// down to single rows. So a CUDA out-of-memory shrinks the batch until it fits, and a record
// that breaks the model is isolated: it fails alone. Rows that failed are returned in row order
// (all of them when ctx ends: nothing is retried after that).
func embedInHalves(ctx context.Context, embed EmbedFunc, b *batcher.Batch, lo, hi int, emb []float32, failed []rowError, log *zap.Logger) ([]float32, []rowError) {
	c := b.Cols
	in := gpurun.Input{IDs: b.InputIDs[lo*c : hi*c], Mask: b.Mask[lo*c : hi*c], Rows: hi - lo, Cols: c}
	n0 := len(emb)
	emb, err := embed(ctx, in, emb)
	if err == nil {
		return emb, failed
	}
	emb = emb[:n0]
	if hi-lo == 1 || ctx.Err() != nil {
		for r := lo; r < hi; r++ {
			failed = append(failed, rowError{r, err})
		}
		return emb, failed
	}
	log.Warn("batch failed; retrying in halves", zap.Uint64("batch", b.Seq), zap.Int("rows", hi-lo),
		zap.Int("cols", c), zap.Uint64("first_stream_seq", b.Items[lo].StreamSeq), zap.Error(err))
	mid := (lo + hi) / 2
	emb, failed = embedInHalves(ctx, embed, b, lo, mid, emb, failed, log)
	return embedInHalves(ctx, embed, b, mid, hi, emb, failed, log)
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
