package pipeline

import (
	"context"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/seqembed/seqembed/arrowout"
	"github.com/seqembed/seqembed/consumer"
)

// publishJobs stores a batch's outputs, each row on its record's job's subject
// (arrowout.Subject(model, consumer.JobOf(model, input subject))): a batch of one job's records
// (the usual case) is one Publish; a batch mixing jobs is one Publish per job, in the order of
// each job's first row. msgs are the rows' input messages, in row order. It returns once every
// row is stored, or the first error (when ctx ends).
func (p *Pipeline) publishJobs(ctx context.Context, out *arrowout.Batch, msgs []jetstream.Msg) error {
	if len(msgs) == 0 {
		return p.publish(ctx, arrowout.Subject(p.model, ""), out)
	}
	first := consumer.JobOf(p.model, msgs[0].Subject())
	mixed := false
	for _, m := range msgs[1:] {
		if consumer.JobOf(p.model, m.Subject()) != first {
			mixed = true
			break
		}
	}
	if !mixed {
		return p.publish(ctx, arrowout.Subject(p.model, first), out)
	}
	var order []string
	rows := map[string][]int{}
	for r, m := range msgs {
		j := consumer.JobOf(p.model, m.Subject())
		if _, ok := rows[j]; !ok {
			order = append(order, j)
		}
		rows[j] = append(rows[j], r)
	}
	dim := len(out.Embeddings) / max(out.Rows(), 1)
	part := &arrowout.Batch{Seq: out.Seq}
	for _, j := range order {
		part.Reset()
		for _, r := range rows[j] {
			part.AppendRow(out, r, dim)
		}
		if err := p.publish(ctx, arrowout.Subject(p.model, j), part); err != nil {
			return err
		}
	}
	return nil
}
