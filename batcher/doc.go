// Package batcher turns validated protein sequence records into padded,
// tokenised ESM-2 batches.
//
// The pieces:
//
//   - [Tokenizer] maps residue letters to ESM-2 token ids with a 256-entry
//     lookup table (the fair-esm / Hugging Face EsmTokenizer vocabulary of
//     facebook/esm2_*). Validate reports the first bad byte with a hint;
//     Encode is allocation-free.
//   - [Batcher] groups items by padded length (buckets that are multiples of
//     a step, 64 tokens by default), keeps every batch inside a token budget
//     (Rows*Cols ≤ 16384 by default) and a row cap (256), and emits a bucket
//     when it is full or when its oldest item has lingered for MaxWait (50ms).
//     One goroutine, started by [Batcher.Start], owns all batching state, as
//     in Hugging Face TEI's queue. Producers call [Batcher.Add], which blocks
//     on a bounded queue (backpressure, never a crash); one consumer reads
//     [Batcher.Out] and calls [Batch.Release] on every batch.
//   - [Windows], [Merger] and [MeanRows] are the rule for sequences longer than
//     the window (--overlength chunk, chunk.go): the windows a sequence is cut
//     into, and how their per-residue states and <cls> rows merge into one row.
//     The pipeline runs the windows; the batcher never sees such a sequence.
//   - [Allocator] supplies the InputIDs/Mask buffers, so a GPU runtime can
//     hand out pinned memory; [GoAllocator] is the Go-heap default.
//
// When the Allocator cannot supply a batch's buffers (Alloc returns an
// error), the batcher neither crashes nor keeps the items: the batch is
// emitted as usual, in its turn and with its Seq, but without buffers and
// with [Batch.Err] set (wrapping [ErrAlloc] and the Allocator's error). The
// consumer must check Err before running a batch; the Items of a failed
// batch are its to hand back (nak them, so that they are redelivered).
// Batching goes on: the next batch asks the Allocator again.
//
// Shutdown goes through the [Handle]: Drain flushes everything that was
// accepted, Stop (or cancelling the Start context) exits at once and leaves
// the unsent items in [Handle.Pending] for the caller to nak.
package batcher
