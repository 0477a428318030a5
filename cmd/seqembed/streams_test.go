package main

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/seqembed/seqembed/consumer"
	"github.com/seqembed/seqembed/internal/e2etest"
	"github.com/seqembed/seqembed/internal/natstest"
	"github.com/seqembed/seqembed/internal/testutil"
	"github.com/seqembed/seqembed/pipeline"
)

func TestEnsureStreamsIdempotent(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	_, js := natstest.Connect(t, natstest.Server(t, nil))
	cfg := pipeline.Default()
	var first, second strings.Builder
	if err := ensureStreams(ctx, js, "m", cfg, &first); err != nil {
		t.Fatal(err)
	}
	e2etest.PublishRecords(t, js, "m", map[string]string{"a": "MKT", "b": "MKTAY"})
	// The server counts a consumer's pending messages a moment after the PubAck (a clean-clone CI
	// run once read 1 of 2): wait until it has, so the state printed below is settled.
	testutil.Eventually(t, time.Minute, func() (bool, string) {
		c, err := js.Consumer(ctx, cfg.InStream, consumer.Durable("m"))
		if err != nil {
			t.Fatal(err)
		}
		return c.CachedInfo().NumPending == 2, fmt.Sprintf("consumer pending %d, want 2", c.CachedInfo().NumPending)
	})
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
