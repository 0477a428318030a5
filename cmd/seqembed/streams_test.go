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
	if err := ensureStreams(ctx, js, "m", cfg, nil, &first); err != nil {
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
	if err := ensureStreams(ctx, js, "m", cfg, map[string]bool{"max-deliver": true}, &second); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"stream SEQS: 2 messages", "seqs.in.m: 2 waiting", "consumer seqembed-m: 2 pending", "max deliver 7", "stream EMBEDDINGS: 0 messages"} {
		if !strings.Contains(second.String(), want) {
			t.Errorf("state lacks %q:\n%s", want, second.String())
		}
	}
}

// TestStreamsKeepOtherClientsLimits: limits another client set on existing streams and the
// consumer (max bytes, max age, max ack pending) survive `seqembed streams`; only what its flags
// name changes.
func TestStreamsKeepOtherClientsLimits(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	_, js := natstest.Connect(t, natstest.Server(t, nil))
	cfg := pipeline.Default()
	var sb strings.Builder
	if err := ensureStreams(ctx, js, "m", cfg, nil, &sb); err != nil {
		t.Fatal(err)
	}
	// Another client (the nats CLI, say) tightens the limits.
	s, err := js.Stream(ctx, "SEQS")
	if err != nil {
		t.Fatal(err)
	}
	sc := s.CachedInfo().Config
	sc.MaxBytes, sc.MaxAge = 123<<20, 48*time.Hour
	if _, err := js.UpdateStream(ctx, sc); err != nil {
		t.Fatal(err)
	}
	c, err := js.Consumer(ctx, "SEQS", consumer.Durable("m"))
	if err != nil {
		t.Fatal(err)
	}
	cc := c.CachedInfo().Config
	cc.MaxAckPending = 100
	if _, err := js.UpdateConsumer(ctx, "SEQS", cc); err != nil {
		t.Fatal(err)
	}
	cfg.MaxDeliver = 9
	sb.Reset()
	if err := ensureStreams(ctx, js, "m", cfg, map[string]bool{"max-deliver": true}, &sb); err != nil {
		t.Fatal(err)
	}
	s, _ = js.Stream(ctx, "SEQS")
	if got := s.CachedInfo().Config; got.MaxBytes != 123<<20 || got.MaxAge != 48*time.Hour {
		t.Errorf("SEQS limits after streams: max bytes %d, max age %s; want the other client's", got.MaxBytes, got.MaxAge)
	}
	c, _ = js.Consumer(ctx, "SEQS", consumer.Durable("m"))
	if got := c.CachedInfo().Config; got.MaxAckPending != 100 || got.MaxDeliver != 9 {
		t.Errorf("consumer after streams --max-deliver 9: max ack pending %d, max deliver %d; want 100 and 9", got.MaxAckPending, got.MaxDeliver)
	}
	if !strings.Contains(sb.String(), "updated consumer seqembed-m: max deliver") {
		t.Errorf("streams did not say what it changed:\n%s", sb.String())
	}
}
