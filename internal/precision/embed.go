package precision

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/seqembed/seqembed/batcher"
	"github.com/seqembed/seqembed/gpurun"
	"github.com/seqembed/seqembed/internal/benchrun"
	"github.com/seqembed/seqembed/pipeline"
)

// Embeddings is one set of vectors: IDs[i]'s vector is Vecs[i], in input order. Model and DType
// say where they came from (the manifest's name and dtype, "float16, fp8 projections" for an FP8
// export, or a golden file's name and "float32").
type Embeddings struct {
	Model string
	DType string
	IDs   []string
	Vecs  [][]float32
}

// Dim is the vectors' dimension (0 for an empty set).
func (e *Embeddings) Dim() int {
	if len(e.Vecs) == 0 {
		return 0
	}
	return len(e.Vecs[0])
}

// records calls fn with each record to embed, its residues valid for tok and at most maxLen
// long; seq may alias a buffer that is valid only during the call.
type records func(tok *batcher.Tokenizer, maxLen int, fn func(id string, seq []byte) error) error

// Embed embeds every record of the FASTA file at path that a worker embeds (benchrun.EachEmbeddable:
// records with residues the model lacks are skipped, longer ones truncated at the model's max
// length) with cfg's model on cfg's devices, and returns their main pooled output ("embedding",
// the last layer's mean) in file order. Records with the same id are all kept (Compare refuses
// them).
func Embed(ctx context.Context, cfg pipeline.Config, path string) (*Embeddings, error) {
	return embed(ctx, cfg, path, func(tok *batcher.Tokenizer, maxLen int, fn func(string, []byte) error) error {
		return benchrun.EachEmbeddable(path, tok, maxLen, fn)
	})
}

// EmbedGolden embeds the golden file's sequences with cfg's model, in the file's order (the
// vectors' counterpart is g.Embeddings). A sequence the model cannot embed is an error naming
// it; one longer than the model's max length is truncated, as a worker does.
func EmbedGolden(ctx context.Context, cfg pipeline.Config, g *Golden) (*Embeddings, error) {
	return embed(ctx, cfg, g.Path, func(tok *batcher.Tokenizer, maxLen int, fn func(string, []byte) error) error {
		for i, r := range g.Records {
			seq := []byte(r.Sequence)
			if err := tok.Validate(seq); err != nil {
				return fmt.Errorf("%w: %s: record %d (%q): %w", ErrGolden, g.Path, i+1, r.ID, err)
			}
			if err := fn(r.ID, seq[:min(len(seq), maxLen)]); err != nil {
				return err
			}
		}
		return nil
	})
}

// row is one record's vector as a batch returned it.
type row struct {
	id  string
	vec []float32
}

// embed loads cfg's model, batches what each yields with the engine's batcher (lingering an hour,
// as the raw benchmark does, so that the batches depend on the input alone), runs Engine.Slots()
// batches at once and puts each row back at its record's position: every record comes back
// exactly once, under its own id, or embed fails. input names what is embedded, for messages.
func embed(ctx context.Context, cfg pipeline.Config, input string, each records) (*Embeddings, error) {
	eng, err := pipeline.NewEngine(cfg, nil)
	if err != nil {
		return nil, fmt.Errorf("%w: model %s: %w", ErrEmbed, cfg.ModelDir, err)
	}
	defer eng.Close()
	man := eng.Manifest()
	fail := func(err error) error {
		return fmt.Errorf("%w: %s with model %s (%s): %w", ErrEmbed, input, man.Name, cfg.ModelDir, err)
	}
	bat, err := eng.NewBatcher(batcher.WithMaxWait(time.Hour))
	if err != nil {
		return nil, fail(err)
	}
	if err := eng.Warmup(ctx, bat, zap.NewNop()); err != nil {
		return nil, fail(err)
	}

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	h := bat.Start(ctx)
	var (
		mu     sync.Mutex
		rows   = map[int64]row{} // by input index
		runErr error
		wg     sync.WaitGroup
	)
	dim := man.EmbeddingDim
	for range eng.Slots() {
		wg.Go(func() {
			var out []float32
			for b := range bat.Out() {
				mu.Lock()
				failed := runErr != nil
				mu.Unlock()
				if failed { // drain and release what is left
					b.Release()
					continue
				}
				var err error
				out, err = runBatch(ctx, eng, b, dim, out[:0])
				mu.Lock()
				if err == nil {
					for i, it := range b.Items {
						if _, dup := rows[it.InputIndex]; dup {
							err = fmt.Errorf("record %d (%q) came back twice", it.InputIndex+1, it.ID)
							break
						}
						rows[it.InputIndex] = row{id: it.ID, vec: slices.Clone(out[i*dim : (i+1)*dim])}
					}
				}
				if err != nil && runErr == nil {
					runErr = err
					cancel()
				}
				mu.Unlock()
				b.Release()
			}
		})
	}
	var ids []string
	addErr := each(eng.Tokenizer(), man.MaxLength, func(id string, seq []byte) error {
		it := batcher.Item{ID: id, Residues: slices.Clone(seq), InputIndex: int64(len(ids))}
		ids = append(ids, id)
		return bat.Add(ctx, it)
	})
	if addErr != nil {
		h.Stop()
	} else {
		h.Drain()
	}
	wg.Wait() // Out is closed once the loop has ended
	<-h.Done()
	switch {
	case runErr != nil:
		return nil, fail(runErr)
	case addErr != nil:
		return nil, fail(addErr)
	case ctx.Err() != nil: // cancelled while the batcher drained: records are missing
		return nil, fail(ctx.Err())
	case len(ids) == 0:
		return nil, fail(errors.New("no record to embed (every record empty or with residues the model lacks)"))
	}
	dtype := man.DType
	if man.Precision == gpurun.PrecisionFP8 {
		dtype += ", fp8 projections"
	}
	out := &Embeddings{Model: man.Name, DType: dtype, IDs: ids, Vecs: make([][]float32, len(ids))}
	for i, id := range ids {
		r, ok := rows[int64(i)]
		if !ok || r.id != id {
			return nil, fail(fmt.Errorf("record %d (%q) did not come back (got %q)", i+1, id, r.id))
		}
		out.Vecs[i] = r.vec
	}
	if len(rows) != len(ids) {
		return nil, fail(fmt.Errorf("%d rows came back for %d records", len(rows), len(ids)))
	}
	return out, nil
}

// runBatch runs b on the engine, appending its Rows×dim embeddings (row i: b.Items[i]) to dst.
func runBatch(ctx context.Context, eng *pipeline.Engine, b *batcher.Batch, dim int, dst []float32) ([]float32, error) {
	if b.Err != nil {
		return dst, fmt.Errorf("batch %d: %w", b.Seq, b.Err)
	}
	if b.Rows != len(b.Items) {
		return dst, fmt.Errorf("batch %d: %d rows for %d records", b.Seq, b.Rows, len(b.Items))
	}
	dst, err := eng.Embed(ctx, gpurun.Input{IDs: b.InputIDs, Mask: b.Mask, Rows: b.Rows, Cols: b.Cols}, dst)
	if err != nil {
		return dst, fmt.Errorf("batch %d (%d rows × %d tokens): %w", b.Seq, b.Rows, b.Cols, err)
	}
	if len(dst) != b.Rows*dim {
		return dst, fmt.Errorf("batch %d: %d values for %d rows of dimension %d", b.Seq, len(dst), b.Rows, dim)
	}
	return dst, nil
}
