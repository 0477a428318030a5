package main

import (
	"context"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/seqembed/seqembed/consumer"
	"github.com/seqembed/seqembed/internal/retry"
)

// JetStream helpers of the soak and the cluster test.

// queueState is what is left of model's work: input messages on its subject, and the durable
// consumer's pending and unacked counts.
func queueState(ctx context.Context, js jetstream.JetStream, stream, model string) (left, pending, unacked uint64, err error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	s, err := js.Stream(ctx, stream)
	if err != nil {
		return 0, 0, 0, err
	}
	info, err := s.Info(ctx, jetstream.WithSubjectFilter(consumer.Subject(model)))
	if err != nil {
		return 0, 0, 0, err
	}
	c, err := s.Consumer(ctx, consumer.Durable(model))
	if err != nil {
		return 0, 0, 0, err
	}
	ci, err := c.Info(ctx)
	if err != nil {
		return 0, 0, 0, err
	}
	return info.State.Subjects[consumer.Subject(model)], ci.NumPending, uint64(ci.NumAckPending), nil
}

// streamInfoPolicy rides out a cluster that is still electing leaders after a fault: 30 tries a
// second apart, 5 s each.
var streamInfoPolicy = retry.Policy{Initial: time.Second, Max: time.Second, Tries: 30, PerTry: 5 * time.Second}

// streamInfo is the named stream's info, retried under streamInfoPolicy.
func streamInfo(ctx context.Context, js jetstream.JetStream, name string) (*jetstream.StreamInfo, error) {
	var info *jetstream.StreamInfo
	err := retry.Do(ctx, streamInfoPolicy, func(ctx context.Context) error {
		s, err := js.Stream(ctx, name)
		if err != nil {
			return err
		}
		info, err = s.Info(ctx)
		return err
	})
	return info, err
}
