package consumer_test

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/seqembed/seqembed/consumer"
	"github.com/seqembed/seqembed/internal/natstest"
	"github.com/seqembed/seqembed/internal/retry"
	"github.com/seqembed/seqembed/internal/testutil"
)

// TestConsumerReplicasFollowStream: Setup gives the durable consumer the stream's replica count
// explicitly (a consumer left at 0, "inherit", is treated as R1 by nats-server's shutdown path,
// which then ends its pulls with "409 Server Shutdown" while still sending them records: lost to
// the client until AckWait, docs/reliability.md). The stream's replicas are read, not the
// option's (which only creates the stream): after the stream is scaled from 1 to 3 replicas, a
// worker's Setup with the default WithReplicas(1) brings the consumer to 3.
func TestConsumerReplicasFollowStream(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	c := natstest.Cluster(t, 3)
	_, js := c.Connect(nats.ReconnectWait(100 * time.Millisecond))
	pol := retry.Policy{Tries: 5, PerTry: 10 * time.Second, Retryable: retry.Timeouts}
	setup := func(opts ...consumer.Option) {
		t.Helper()
		cons, err := consumer.New(js, "esm2-tiny", func([]byte) error { return nil }, opts...)
		if err != nil {
			t.Fatal(err)
		}
		if err := retry.Do(ctx, pol, cons.Setup); err != nil {
			t.Fatal(err)
		}
	}
	replicas := func() int {
		t.Helper()
		ci, err := js.Consumer(ctx, "SEQS", consumer.Durable("esm2-tiny"))
		if err != nil {
			t.Fatal(err)
		}
		return ci.CachedInfo().Config.Replicas
	}
	setup(consumer.WithReplicas(1))
	if r := replicas(); r != 1 {
		t.Fatalf("R1 stream: consumer replicas %d, want 1", r)
	}
	// Scale the stream as `seqembed streams --replicas 3` does.
	s, err := js.Stream(ctx, "SEQS")
	if err != nil {
		t.Fatal(err)
	}
	cfg := s.CachedInfo().Config
	cfg.Replicas = 3
	if err := retry.Do(ctx, pol, func(ctx context.Context) error { _, err := js.UpdateStream(ctx, cfg); return err }); err != nil {
		t.Fatalf("scaling the stream to R3 with an R1 consumer: %v", err)
	}
	// Straight after the scale-up the server still refuses an R3 consumer: Setup keeps R1 and
	// succeeds (a worker starting then is not failed); once the scaling is applied, a Setup
	// follows the stream.
	setup()
	testutil.Eventually(t, 60*time.Second, func() (bool, string) {
		setup()
		r := replicas()
		return r == 3, fmt.Sprintf("consumer replicas %d after Setup on the scaled stream, want 3", r)
	})
}

// TestLeaderShutdownKeepsPulls: the consumer leader's node shutting down gracefully does not end
// the pulls of an R3 durable made by Setup with "409 Server Shutdown" (nats-server sends that to
// consumers whose config says Replicas <= 1, a 0 "the stream's" included, and then keeps
// delivering for 50 ms: records the ended pull drops). The durable made with Replicas 0 shows
// the server's behaviour (logged only: a server that stops doing it is no failure).
func TestLeaderShutdownKeepsPulls(t *testing.T) {
	for _, explicit := range []bool{true, false} {
		t.Run(fmt.Sprintf("explicit=%v", explicit), func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
			defer cancel()
			c := natstest.Cluster(t, 3)
			_, js := c.Connect()
			cons, err := consumer.New(js, "esm2-tiny", func([]byte) error { return nil }, consumer.WithReplicas(3))
			if err != nil {
				t.Fatal(err)
			}
			pol := retry.Policy{Tries: 5, PerTry: 10 * time.Second, Retryable: retry.Timeouts}
			if err := retry.Do(ctx, pol, cons.Setup); err != nil {
				t.Fatal(err)
			}
			durable := consumer.Durable("esm2-tiny")
			if !explicit { // as Setup made it before 2026-12-04
				cc := cons.ConsumerConfig()
				if err := retry.Do(ctx, pol, func(ctx context.Context) error {
					_ = js.DeleteConsumer(ctx, "SEQS", durable)
					_, err := js.CreateConsumer(ctx, "SEQS", cc)
					return err
				}); err != nil {
					t.Fatal(err)
				}
			}
			leader := c.ConsumerLeader("$G", "SEQS", durable)
			if leader < 0 {
				t.Fatal("no consumer leader")
			}
			// The puller connects to another node, so that its own connection survives.
			_, pjs := natstest.Connect(t, c.Server((leader+1)%3))
			pc, err := pjs.Consumer(ctx, "SEQS", durable)
			if err != nil {
				t.Fatal(err)
			}
			batch, err := pc.Fetch(1, jetstream.FetchMaxWait(20*time.Second))
			if err != nil {
				t.Fatal(err)
			}
			testutil.Eventually(t, 30*time.Second, func() (bool, string) {
				info, err := pc.Info(ctx)
				return err == nil && info.NumWaiting > 0, fmt.Sprintf("pull not registered at the leader (%v)", err)
			})
			c.Shutdown(leader)
			for range batch.Messages() {
			}
			err = batch.Error()
			t.Logf("replicas %s: the pull ended with %v", map[bool]string{true: "3 (explicit)", false: "0"}[explicit], err)
			if explicit && errors.Is(err, jetstream.ErrServerShutdown) {
				t.Errorf("an R3 durable's pull was ended by the leader's shutdown: %v", err)
			}
		})
	}
}
