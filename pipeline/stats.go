package pipeline

import (
	"slices"
	"sync"
	"time"

	"github.com/seqembed/seqembed/batcher"
)

// BatchPoint is one batch as Stats keeps it (Config.CollectLatency only).
type BatchPoint struct {
	At     time.Time // when a runner took the batch off the batcher (before its run)
	Rows   int
	Tokens int // real tokens, CLS and EOS included (batcher.Batch.Tokens)
	Padded int // rows × bucket length
}

// Stats is a snapshot of what a pipeline has done.
type Stats struct {
	Batches      int
	Rows         int   // rows run (a row that was retried in halves counts once)
	RealTokens   int64 // tokens of those rows, CLS and EOS included
	PaddedTokens int64 // rows × bucket length
	Acked        int   // inputs acked after their outputs were stored
	// Latencies is, per acked record, arrival at the worker → inputs acked; Timeline one point
	// per batch. Both only with Config.CollectLatency (a long-running worker keeps nothing).
	Latencies []time.Duration
	Timeline  []BatchPoint
}

// Residues is the residues embedded: real tokens less CLS and EOS per row.
func (s Stats) Residues() int64 { return s.RealTokens - 2*int64(s.Rows) }

// statsBook is Stats, guarded: batch loops write it, Stats reads a copy.
type statsBook struct {
	collect bool
	mu      sync.Mutex
	s       Stats
}

func (b *statsBook) batch(bt *batcher.Batch) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.s.Batches++
	b.s.Rows += bt.Rows
	b.s.RealTokens += int64(bt.Tokens)
	b.s.PaddedTokens += int64(bt.Rows * bt.Cols)
	if b.collect {
		b.s.Timeline = append(b.s.Timeline, BatchPoint{At: time.Now(), Rows: bt.Rows, Tokens: bt.Tokens, Padded: bt.Rows * bt.Cols})
	}
}

func (b *statsBook) acked(items []batcher.Item, at time.Time) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.s.Acked += len(items)
	if b.collect {
		for _, it := range items {
			b.s.Latencies = append(b.s.Latencies, at.Sub(it.Arrived))
		}
	}
}

func (b *statsBook) snapshot() Stats {
	b.mu.Lock()
	defer b.mu.Unlock()
	s := b.s
	s.Latencies, s.Timeline = slices.Clone(s.Latencies), slices.Clone(s.Timeline)
	return s
}
