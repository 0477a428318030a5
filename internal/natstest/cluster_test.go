package natstest_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/seqembed/seqembed/internal/natstest"
	"github.com/seqembed/seqembed/internal/retry"
	"github.com/seqembed/seqembed/internal/testutil"
)

// TestClusterFailoverBasics: an R3 stream survives its leader's node going down (a new leader
// takes over, publishes work), the node comes back with its store, and a consumer leader
// stepdown through the JS API moves the consumer to another node.
func TestClusterFailoverBasics(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	c := natstest.Cluster(t, 3)
	nc, err := nats.Connect(c.URLs(), nats.MaxReconnects(-1), nats.ReconnectWait(100*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	// A JetStream API request sent while the new cluster settles can go unanswered (seen once in
	// CI-like runs: CreateStream waited out the test's whole minute), so each try gets 10 s, as
	// the worker's start-up calls do; both calls are idempotent.
	setup := retry.Policy{Tries: 5, PerTry: 10 * time.Second,
		OnRetry: func(try int, err error, _ time.Duration) { t.Logf("set-up try %d: %v", try, err) }}
	var s jetstream.Stream
	if err := retry.Do(ctx, setup, func(ctx context.Context) (err error) {
		s, err = js.CreateStream(ctx, jetstream.StreamConfig{Name: "T", Subjects: []string{"t.>"}, Replicas: 3})
		return err
	}); err != nil {
		t.Fatalf("creating the R3 stream: %v", err)
	}
	if err := retry.Do(ctx, setup, func(ctx context.Context) error {
		_, err := s.CreateOrUpdateConsumer(ctx, jetstream.ConsumerConfig{Durable: "d", AckPolicy: jetstream.AckExplicitPolicy})
		return err
	}); err != nil {
		t.Fatalf("creating the consumer: %v", err)
	}
	if _, err := js.Publish(ctx, "t.a", []byte("1")); err != nil {
		t.Fatal(err)
	}
	leader := c.StreamLeader("$G", "T")
	if leader < 0 {
		t.Fatal("no stream leader")
	}
	c.Shutdown(leader)
	start := time.Now()
	// Publishing fails until the remaining two nodes elect a new stream leader (seconds): retry
	// every 100 ms, each try bounded by 2 s, until the test's ctx ends.
	if err := retry.Do(ctx, retry.Policy{Initial: 100 * time.Millisecond, Max: 100 * time.Millisecond, PerTry: 2 * time.Second},
		func(ctx context.Context) error {
			_, err := js.Publish(ctx, "t.a", []byte("2"))
			return err
		}); err != nil {
		t.Fatalf("no publish after the leader's node went down: %v", err)
	}
	nl := c.StreamLeader("$G", "T")
	t.Logf("stream leader n%d down; publishing again after %s (new leader n%d)", leader+1, time.Since(start).Round(time.Millisecond), nl+1)
	if nl == leader || nl < 0 {
		t.Fatalf("stream leader is %d after %d went down", nl, leader)
	}
	c.Restart(leader)
	if c.Server(leader) == nil {
		t.Fatal("restarted node missing")
	}
	// The consumer may need a moment (an election, well under a second) to have a leader after
	// the restart.
	before := -1
	testutil.Eventually(t, 20*time.Second, func() (bool, string) {
		before = c.ConsumerLeader("$G", "T", "d")
		return before >= 0, "a consumer leader after the restart"
	})
	// A stepdown can re-elect the same node (the restarted peer may not be caught up yet): step
	// down again every 3 s until another node leads.
	var stepped time.Time
	testutil.Eventually(t, 30*time.Second, func() (bool, string) {
		if after := c.ConsumerLeader("$G", "T", "d"); after >= 0 && after != before {
			return true, ""
		}
		if time.Since(stepped) >= 3*time.Second {
			if err := natstest.ConsumerStepDown(nc, "T", "d"); err != nil {
				t.Logf("consumer stepdown: %v", err)
			}
			stepped = time.Now()
		}
		return false, fmt.Sprintf("another consumer leader than n%d after stepdowns", before+1)
	})
	info, err := s.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if info.State.Msgs != 2 {
		t.Fatalf("stream holds %d messages, want 2", info.State.Msgs)
	}
}
