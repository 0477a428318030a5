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
	"github.com/seqembed/seqembed/internal/retry"
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

// TestStreamsSizeAndAgeFlags: --in-max-bytes, --out-max-bytes and --max-age set the limits of
// streams they create, change those of existing ones only when given, and byte counts take units.
func TestStreamsSizeAndAgeFlags(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	_, js := natstest.Connect(t, natstest.Server(t, nil))
	cfg := pipeline.Default()
	cfg.InMaxBytes, cfg.OutMaxBytes, cfg.OutMaxAge = 64<<20, 5<<30, 72*time.Hour
	var sb strings.Builder
	if err := ensureStreams(ctx, js, "m", cfg, nil, &sb); err != nil {
		t.Fatal(err)
	}
	limits := func(name string) (int64, time.Duration) {
		s, err := js.Stream(ctx, name)
		if err != nil {
			t.Fatal(err)
		}
		return s.CachedInfo().Config.MaxBytes, s.CachedInfo().Config.MaxAge
	}
	if b, a := limits("SEQS"); b != 64<<20 || a != 0 {
		t.Errorf("SEQS created with max bytes %d, max age %s; want 64 MiB, none", b, a)
	}
	if b, a := limits("EMBEDDINGS"); b != 5<<30 || a != 72*time.Hour {
		t.Errorf("EMBEDDINGS created with max bytes %d, max age %s; want 5 GiB, 72h", b, a)
	}
	if !strings.Contains(sb.String(), "stream EMBEDDINGS: 0 messages, 0 B of 5.0 GiB, kept 72h0m0s") {
		t.Errorf("state:\n%s", sb.String())
	}
	// Other values, but only --max-age named: only the output stream's age changes.
	cfg.InMaxBytes, cfg.OutMaxBytes, cfg.OutMaxAge = 1<<30, 0, time.Hour
	sb.Reset()
	if err := ensureStreams(ctx, js, "m", cfg, map[string]bool{"max-age": true}, &sb); err != nil {
		t.Fatal(err)
	}
	if b, _ := limits("SEQS"); b != 64<<20 {
		t.Errorf("SEQS max bytes %d after --max-age alone", b)
	}
	if b, a := limits("EMBEDDINGS"); b != 5<<30 || a != time.Hour {
		t.Errorf("EMBEDDINGS after --max-age 1h: max bytes %d, max age %s", b, a)
	}
	if !strings.Contains(sb.String(), "updated stream EMBEDDINGS: max age 1h0m0s") || strings.Contains(sb.String(), "updated stream SEQS") {
		t.Errorf("streams did not say what it changed:\n%s", sb.String())
	}
	sb.Reset()
	if err := ensureStreams(ctx, js, "m", cfg, map[string]bool{"in-max-bytes": true}, &sb); err != nil {
		t.Fatal(err)
	}
	if b, _ := limits("SEQS"); b != 1<<30 || !strings.Contains(sb.String(), "updated stream SEQS: max bytes 1.0 GiB") {
		t.Errorf("SEQS after --in-max-bytes 1GiB: %d\n%s", b, sb.String())
	}
	for in, want := range map[string]int64{"1073741824": 1 << 30, "10GiB": 10 << 30, "500MB": 500e6, "2 mib": 2 << 20, "1.5KiB": 1536} {
		if got, err := parseByteSize(in); err != nil || got != want {
			t.Errorf("parseByteSize(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, bad := range []string{"", "GiB", "-1", "10 parsecs", "1e3"} {
		if _, err := parseByteSize(bad); err == nil {
			t.Errorf("parseByteSize(%q) accepted", bad)
		}
	}
}

// TestStreamsScaleReplicas: on a 3-node cluster, `streams --replicas 3` scales SEQS (created R1)
// and its durable consumer with it: the consumer's count is set explicitly (consumer.Setup says
// why), and the server refuses it for a while after the stream's change, which streams waits out.
func TestStreamsScaleReplicas(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	_, js := natstest.Cluster(t, 3).Connect()
	cfg := pipeline.Default()
	cfg.Replicas = 1
	var sb strings.Builder
	run := func(set map[string]bool) {
		t.Helper()
		// The new cluster may not answer its first API requests: retried as the worker's are.
		if err := retry.Do(ctx, retry.Policy{Tries: 5, PerTry: 20 * time.Second, Retryable: retry.Timeouts}, func(ctx context.Context) error {
			sb.Reset()
			return ensureStreams(ctx, js, "m", cfg, set, &sb)
		}); err != nil {
			t.Fatalf("streams: %v\n%s", err, sb.String())
		}
	}
	replicas := func() (stream, cons int) {
		t.Helper()
		s, err := js.Stream(ctx, "SEQS")
		if err != nil {
			t.Fatal(err)
		}
		c, err := js.Consumer(ctx, "SEQS", consumer.Durable("m"))
		if err != nil {
			t.Fatal(err)
		}
		return s.CachedInfo().Config.Replicas, c.CachedInfo().Config.Replicas
	}
	run(nil)
	if s, c := replicas(); s != 1 || c != 1 {
		t.Fatalf("created: SEQS %d replicas, consumer %d; want 1 and 1", s, c)
	}
	cfg.Replicas = 3
	run(map[string]bool{"replicas": true})
	if s, c := replicas(); s != 3 || c != 3 {
		t.Errorf("after streams --replicas 3: SEQS %d replicas, consumer %d; want 3 and 3\n%s", s, c, sb.String())
	}
	if !strings.Contains(sb.String(), "updated consumer seqembed-m: 3 replicas") {
		t.Errorf("streams did not say it scaled the consumer:\n%s", sb.String())
	}
}
