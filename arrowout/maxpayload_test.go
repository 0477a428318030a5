package arrowout

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/seqembed/seqembed/internal/natsconn"
	"github.com/seqembed/seqembed/internal/natstest"
	"github.com/seqembed/seqembed/internal/testutil"
)

// rowsBySeq decodes every message of stream s and counts the rows by input stream sequence.
func rowsBySeq(t *testing.T, ctx context.Context, s jetstream.Stream) (map[uint64]int, []*jetstream.RawStreamMsg) {
	t.Helper()
	msgs := natstest.StoredMsgs(t, ctx, s)
	seen := map[uint64]int{}
	for _, m := range msgs {
		_, rows, err := Decode(m.Data)
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range rows {
			seen[r.StreamSeq]++
		}
	}
	return seen, msgs
}

// checkOnce fails unless every row of the batches appears exactly once in seen, and nothing else.
func checkOnce(t *testing.T, seen map[uint64]int, batches ...*Batch) {
	t.Helper()
	n := 0
	for _, b := range batches {
		for _, s := range b.StreamSeqs {
			if seen[s] != 1 {
				t.Errorf("row of stream seq %d (batch %d) stored %d times", s, b.Seq, seen[s])
			}
		}
		n += b.Rows()
	}
	if len(seen) != n {
		t.Errorf("%d distinct rows stored, want %d", len(seen), n)
	}
}

// TestPublishFollowsMaxPayload: a publisher made on a 1 MiB server, with the fixed limit the
// worker passes today, keeps publishing after the server restarts with max_payload 256 KiB: a
// batch is split into more parts, each under the new limit, a replay is deduplicated, and the
// reader gets every row once. A Publish issued while the server is down waits for the reconnect
// and splits under the new limit; the connection stays open (a part of the old size buffered for
// the reconnect would make the new server close it for good).
func TestPublishFollowsMaxPayload(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	const small = 256 << 10
	srv := natstest.Server(t, func(o *server.Options) { o.MaxPayload = 1 << 20 })
	nc, js := natstest.Connect(t, srv, natstest.ReconnectFast())
	stream, err := EnsureStream(ctx, js, StreamConfig{})
	if err != nil {
		t.Fatal(err)
	}
	meta := testMeta
	meta.Dim = 320 // 1280 bytes a row: 400 rows are about 520 KB
	p, err := NewPublisher(js, "embeddings.x", meta, WithMaxPayload(int(nc.MaxPayload())-HeaderHeadroom),
		WithAckTimeout(30*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	b1 := makeBatch(1, 400, meta.Dim, 1)
	res, err := p.Publish(ctx, b1)
	if err != nil || res.Parts != 1 {
		t.Fatalf("before the restart: %+v, %v; want 1 part", res, err)
	}

	srv = natstest.Restart(t, srv, func(o *server.Options) { o.MaxPayload = small })
	testutil.Eventually(t, 20*time.Second, func() (bool, string) {
		return nc.IsConnected() && nc.MaxPayload() == small,
			fmt.Sprintf("reconnected to the 256 KiB server (connected %v, max_payload %d)", nc.IsConnected(), nc.MaxPayload())
	})
	if got := p.MaxPayload(); got != small-HeaderHeadroom {
		t.Fatalf("MaxPayload() = %d after the restart, want %d", got, small-HeaderHeadroom)
	}
	b2 := makeBatch(2, 400, meta.Dim, 1000)
	res, err = p.Publish(ctx, b2)
	if err != nil || res.Parts < 3 || res.Duplicates != 0 {
		t.Fatalf("after the restart: %+v, %v; want 3 or more parts", res, err)
	}
	again, err := p.Publish(ctx, b2)
	if err != nil || again.Parts != res.Parts || again.Duplicates != res.Parts {
		t.Fatalf("replay: %+v, %v; want %d duplicates", again, err, res.Parts)
	}

	// Publish while the server is down; it comes back with the same limit.
	srv.Shutdown()
	testutil.EventuallyTrue(t, 20*time.Second, "the client to notice the shutdown", func() bool { return !nc.IsConnected() })
	b3 := makeBatch(3, 400, meta.Dim, 2000)
	done := make(chan error, 1)
	go func() {
		_, err := p.Publish(ctx, b3)
		done <- err
	}()
	natstest.Restart(t, srv, nil)
	if err := <-done; err != nil {
		t.Fatalf("publish across the outage: %v", err)
	}
	if nc.IsClosed() {
		t.Fatalf("connection closed: %v", nc.LastError())
	}

	seen, msgs := rowsBySeq(t, ctx, stream)
	for i, m := range msgs {
		if size := len(m.Data) + headerBytes(m.Header); i > 0 && size > small {
			t.Errorf("stored part %d is %d bytes with headers, over 256 KiB", i, size)
		}
	}
	checkOnce(t, seen, b1, b2, b3)
}

// headerBytes is the encoded size of h as nats.go counts it.
func headerBytes(h nats.Header) int {
	m := &nats.Msg{Header: h}
	return m.Size()
}

// TestPublishResplitsWhenRefused: when the limit read at the split is stale (the connection
// moved to a server with a smaller max_payload in between), the part is refused, before it is
// sent (the check against the connection) or by nats.go itself (nats.ErrMaxPayload), and the
// batch is split again under the current limit: nothing is stored under the stale split and the
// reader gets every row once.
func TestPublishResplitsWhenRefused(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	const small = 256 << 10
	srv := natstest.Server(t, func(o *server.Options) { o.MaxPayload = small })
	nc, js := natstest.Connect(t, srv)
	stream, err := EnsureStream(ctx, js, StreamConfig{})
	if err != nil {
		t.Fatal(err)
	}
	meta := testMeta
	meta.Dim = 320
	var batches []*Batch
	// stale reports 1 MiB for the first n reads of the server's limit: one read is the split's,
	// the next the check before sending.
	for i, n := range []int64{1, 2} {
		p, err := NewPublisher(js, "embeddings.x", meta)
		if err != nil {
			t.Fatal(err)
		}
		var reads atomic.Int64
		p.serverMax = func() int {
			if reads.Add(1) <= n {
				return 1 << 20
			}
			return int(nc.MaxPayload())
		}
		b := makeBatch(uint64(10+i), 400, meta.Dim, uint64(10_000*(i+1)))
		res, err := p.Publish(ctx, b)
		if err != nil || res.Parts < 3 {
			t.Fatalf("stale limit for %d reads: %+v, %v; want 3 or more parts", n, res, err)
		}
		batches = append(batches, b)
	}
	seen, _ := rowsBySeq(t, ctx, stream)
	checkOnce(t, seen, batches...)

	// A limit that stays wrong (the connection is said to allow 64 MiB) fails after the bounded
	// number of splits, every part refused by nats.go before anything is sent.
	p, err := NewPublisher(js, "embeddings.x", meta)
	if err != nil {
		t.Fatal(err)
	}
	p.serverMax = func() int { return 64 << 20 }
	res, err := p.Publish(ctx, makeBatch(20, 400, meta.Dim, 50_000))
	if !errors.Is(err, ErrPublish) || !errors.Is(err, nats.ErrMaxPayload) || res.Parts != 0 {
		t.Fatalf("limit that stays wrong: %+v, %v; want ErrPublish wrapping nats.ErrMaxPayload, nothing sent", res, err)
	}
	t.Log(err)
}

// TestPublishUnderFileStoreLimit: with a 64 MiB max_payload (what `seqembed run`'s embedded
// server allows) a 40 MB batch is split under JetStream's file-store record limit (32 MiB), not
// sent whole to be refused with "message too large" and retried for ever (found on the GPU
// machine: a 16,384-token batch of 650M per-residue float16 states is 42 MB).
func TestPublishUnderFileStoreLimit(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	srv := natstest.Server(t, func(o *server.Options) { o.MaxPayload = 64 << 20 })
	nc, js := natstest.Connect(t, srv)
	stream, err := EnsureStream(ctx, js, StreamConfig{})
	if err != nil {
		t.Fatal(err)
	}
	meta := testMeta
	meta.Dim = 5120 // 20 KiB a row: 2,000 rows are 41 MB
	p, err := NewPublisher(js, "embeddings.x", meta, WithAckTimeout(100*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	if got, want := p.MaxPayload(), natsconn.FileStoreMaxMsg-HeaderHeadroom; got != want || int(nc.MaxPayload()) != 64<<20 {
		t.Fatalf("MaxPayload %d under a %d max_payload, want %d", got, nc.MaxPayload(), want)
	}
	b := makeBatch(1, 2000, meta.Dim, 1)
	res, err := p.Publish(ctx, b)
	if err != nil || res.Parts != 2 {
		t.Fatalf("Publish: %+v, %v; want 2 parts", res, err)
	}
	seen, _ := rowsBySeq(t, ctx, stream)
	checkOnce(t, seen, b)
}

// TestTooLargeRefusals: every size refusal natsconn.TooLarge knows splits the batch again; other
// API errors do not.
func TestTooLargeRefusals(t *testing.T) {
	for _, c := range []struct {
		err  error
		want bool
	}{
		{nats.ErrMaxPayload, true},
		{fmt.Errorf("wrapped: %w", nats.ErrMaxPayload), true},
		{&jetstream.APIError{Code: 400, ErrorCode: jetstream.JSErrCodeStreamMessageExceedsMaximum, Description: "message size exceeds maximum allowed"}, true},
		{&jetstream.APIError{Code: 503, ErrorCode: 10077, Description: "message too large"}, true},
		{&jetstream.APIError{Code: 503, ErrorCode: 10077, Description: "disk full"}, false},
		{nats.ErrTimeout, false},
	} {
		if got := natsconn.TooLarge(c.err); got != c.want {
			t.Errorf("TooLarge(%v) = %v, want %v", c.err, got, c.want)
		}
	}
}

// TestSinkPullUnderServerPending: the sink reads messages near the file store's 32 MiB limit
// (a batch of 650M per-residue float16 states is two of them), from a server whose max_pending
// (the outbound bytes it queues for one connection before dropping it as a slow consumer; 64 MiB by
// default) is 48 MiB here, with the publisher on the sink's connection. Found on the GPU machine
// (2026-12-02): pulling by bytes (nats.go's PullMaxBytes, 64 MiB) had the server drop the
// connection, and with a 40 MiB byte budget the sink spun for ever on a refill smaller than the next
// message; it now pulls two messages at a time, each request bounded by the largest message the
// stream can hold.
func TestSinkPullUnderServerPending(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Second)
	defer cancel()
	srv := natstest.Server(t, func(o *server.Options) {
		o.MaxPending = 48 << 20
		o.MaxPayload = 48 << 20 // the server refuses a max_payload above max_pending
	})
	nc, js := natstest.Connect(t, srv)
	if _, err := EnsureStream(ctx, js, StreamConfig{}); err != nil {
		t.Fatal(err)
	}
	meta := testMeta
	meta.Dim = 5120 // 20 KiB a row: a batch of 3,200 rows is two 32.8 MB messages
	p, err := NewPublisher(js, "embeddings.x", meta, WithAckTimeout(100*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	const batches, rows = 4, 3200
	for i := range batches {
		b := makeBatch(uint64(1+i), rows, meta.Dim, uint64(1+i*rows))
		for j := range b.IDs {
			b.IDs[j] = fmt.Sprintf("b%d-%s", i, b.IDs[j]) // other records than the other batches'
		}
		if _, err := p.Publish(ctx, b); err != nil {
			t.Fatal(err)
		}
	}
	fs, err := NewFileSink(FormatArrow, filepath.Join(t.TempDir(), "out.arrow"))
	if err != nil {
		t.Fatal(err)
	}
	sink := StartSink(ctx, js, DefaultStreamName, "", fs, func(n int) bool { return n >= batches*rows })
	select {
	case <-sink.Done():
	case <-ctx.Done():
		t.Fatalf("sink: %d of %d rows (server slow consumers %d, client reconnects %d)", sink.Rows(), batches*rows, srv.NumSlowConsumers(), nc.Stats().Reconnects)
	}
	if err := sink.Finish(); err != nil {
		t.Fatal(err)
	}
	if n := srv.NumSlowConsumers(); n != 0 {
		t.Fatalf("the server dropped %d slow consumer(s) while the sink read", n)
	}
}
