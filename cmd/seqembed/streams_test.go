package main

import (
	"context"
	"flag"
	"strings"
	"testing"
	"time"

	"github.com/seqembed/seqembed/consumer"
	"github.com/seqembed/seqembed/internal/natstest"
)

func TestEnsureStreamsIdempotent(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	_, js := natstest.Connect(t, natstest.Server(t, nil))
	var cfg workerConfig
	cfg.register(flag.NewFlagSet("t", flag.ContinueOnError))
	var first, second strings.Builder
	if err := ensureStreams(ctx, js, "m", cfg, &first); err != nil {
		t.Fatal(err)
	}
	publishRecords(t, js, "m", map[string]string{"a": "MKT", "b": "MKTAY"})
	// The server counts a consumer's pending messages a moment after the PubAck (a clean-clone CI
	// run once read 1 of 2): wait until it has, so the state printed below is settled.
	for {
		c, err := js.Consumer(ctx, cfg.InStream, consumer.Durable("m"))
		if err != nil {
			t.Fatal(err)
		}
		if c.CachedInfo().NumPending == 2 {
			break
		}
		if ctx.Err() != nil {
			t.Fatalf("consumer pending %d, want 2", c.CachedInfo().NumPending)
		}
		time.Sleep(10 * time.Millisecond)
	}
	cfg.MaxDeliver = 7 // an update, not a conflict
	if err := ensureStreams(ctx, js, "m", cfg, &second); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"stream SEQS: 2 messages", "seqs.in.m: 2 waiting", "consumer seqembed-m: 2 pending", "max deliver 7", "stream EMBEDDINGS: 0 messages"} {
		if !strings.Contains(second.String(), want) {
			t.Errorf("state lacks %q:\n%s", want, second.String())
		}
	}
}
