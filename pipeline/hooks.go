package pipeline

import (
	"context"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/seqembed/seqembed/gpurun"
)

// EmbedFunc runs one batch on the model, appending its [Rows × dim] embeddings to dst. For a
// model of several outputs it also returns every output of the batch (gpurun.Runner.EmbedAll;
// dst gets its "embedding" output); for a model of one output the Result is nil.
type EmbedFunc func(ctx context.Context, in gpurun.Input, dst []float32) ([]float32, *gpurun.Result, error)

// Point names a place in a batch's life where Hooks.At is called.
type Point string

// The fault points, in a batch's order.
const (
	PointBeforePublish Point = "before-publish" // embedded, nothing published
	PointAfterPublish  Point = "after-publish"  // every output stored, no input acked
	PointBeforeAck     Point = "before-ack"     // about to ack the batch's inputs
)

// Points lists every Point, for tests that take one by name.
var Points = []Point{PointBeforePublish, PointAfterPublish, PointBeforeAck}

// Hooks inject faults into a pipeline; tests only (crash, OOM and poison-record tests). Nil
// fields do nothing, so the zero value is the production pipeline.
type Hooks struct {
	// WrapEmbed wraps the model call of every run (after the device pool), e.g. to fail runs
	// over some size or those holding a poison record.
	WrapEmbed func(next EmbedFunc) EmbedFunc
	// At is called at each Point of each batch with the messages of the rows it carries; it may
	// ack some of them and kill the process (the crash tests).
	At func(ctx context.Context, p Point, msgs []jetstream.Msg)
}

func (h *Hooks) at(ctx context.Context, p Point, msgs []jetstream.Msg) {
	if h.At != nil {
		h.At(ctx, p, msgs)
	}
}
