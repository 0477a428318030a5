package natstest_test

import (
	"context"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/seqembed/seqembed/internal/natstest"
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
	retry := func(what string, call func(context.Context) error) {
		for try := 1; ; try++ {
			tctx, tcancel := context.WithTimeout(ctx, 10*time.Second)
			err := call(tctx)
			tcancel()
			if err == nil {
				return
			}
			if ctx.Err() != nil || try == 5 {
				t.Fatalf("%s, try %d: %v", what, try, err)
			}
			t.Logf("%s, try %d: %v", what, try, err)
		}
	}
	var s jetstream.Stream
	retry("creating the R3 stream", func(ctx context.Context) (err error) {
		s, err = js.CreateStream(ctx, jetstream.StreamConfig{Name: "T", Subjects: []string{"t.>"}, Replicas: 3})
		return err
	})
	retry("creating the consumer", func(ctx context.Context) error {
		_, err := s.CreateOrUpdateConsumer(ctx, jetstream.ConsumerConfig{Durable: "d", AckPolicy: jetstream.AckExplicitPolicy})
		return err
	})
	if _, err := js.Publish(ctx, "t.a", []byte("1")); err != nil {
		t.Fatal(err)
	}
	leader := c.StreamLeader("$G", "T")
	if leader < 0 {
		t.Fatal("no stream leader")
	}
	c.Shutdown(leader)
	start := time.Now()
	for {
		pctx, pcancel := context.WithTimeout(ctx, 2*time.Second)
		_, err := js.Publish(pctx, "t.a", []byte("2"))
		pcancel()
		if err == nil {
			break
		}
		if ctx.Err() != nil {
			t.Fatalf("no publish after the leader's node went down: %v", err)
		}
		time.Sleep(100 * time.Millisecond)
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
	// The consumer may need a moment to have a leader after the restart.
	deadline := time.Now().Add(20 * time.Second)
	var before int
	for before = c.ConsumerLeader("$G", "T", "d"); before < 0; before = c.ConsumerLeader("$G", "T", "d") {
		if time.Now().After(deadline) {
			t.Fatal("no consumer leader")
		}
		time.Sleep(50 * time.Millisecond)
	}
	// A stepdown can re-elect the same node (the restarted peer may not be caught up yet): step
	// down again until another node leads, within the deadline.
	for moved := false; !moved; {
		if err := natstest.ConsumerStepDown(nc, "T", "d"); err != nil && time.Now().After(deadline) {
			t.Fatal(err)
		}
		for wait := time.Now().Add(3 * time.Second); time.Now().Before(wait); time.Sleep(50 * time.Millisecond) {
			if after := c.ConsumerLeader("$G", "T", "d"); after >= 0 && after != before {
				moved = true
				break
			}
		}
		if !moved && time.Now().After(deadline) {
			t.Fatalf("consumer leader still n%d after stepdowns", before+1)
		}
	}
	info, err := s.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if info.State.Msgs != 2 {
		t.Fatalf("stream holds %d messages, want 2", info.State.Msgs)
	}
}
