package arrowout

import (
	"context"
	"errors"
	"fmt"
	"net"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/seqembed/seqembed/internal/natstest"
	"github.com/seqembed/seqembed/internal/testutil"
)

const smallMaxPayload = 64 << 10

func smallPayload(o *server.Options) { o.MaxPayload = smallMaxPayload }

func TestPublishSplitsStoresAndDeduplicates(t *testing.T) {
	ctx := testCtx(t)
	_, nc, js := runJetStream(t, smallPayload)
	if nc.MaxPayload() != smallMaxPayload {
		t.Fatalf("server max payload %d", nc.MaxPayload())
	}
	stream, err := EnsureStream(ctx, js, StreamConfig{})
	if err != nil {
		t.Fatal(err)
	}
	meta := Meta{Model: "esm2 t33", ModelSHA256: "f00d", Pooling: "mean", Dim: 320}
	p, err := NewPublisher(js, "embeddings.esm2", meta)
	if err != nil {
		t.Fatal(err)
	}
	if p.MaxPayload() != smallMaxPayload-HeaderHeadroom {
		t.Fatalf("default max payload %d", p.MaxPayload())
	}

	b := makeBatch(4, 256, meta.Dim, 7_000)
	b.StreamSeqs[10], b.StreamSeqs[200] = 9_999, 6_000 // not sorted: min/max differ from first/last
	res, err := p.Publish(ctx, b)
	if err != nil {
		t.Fatal(err)
	}
	if res.Parts < 4 || res.Duplicates != 0 || res.Bytes < 256*320*4 {
		t.Fatalf("result %+v: want several parts, no duplicates", res)
	}

	msgs := natstest.StoredMsgs(t, ctx, stream)
	if len(msgs) != res.Parts {
		t.Fatalf("stream holds %d messages, published %d parts", len(msgs), res.Parts)
	}
	idRE := regexp.MustCompile(`^esm2_t33:7000-7255:([0-9a-f]{16}):(\d+)/(\d+)$`)
	var (
		rows  []Row
		bytes int
	)
	for i, m := range msgs {
		if m.Subject != "embeddings.esm2" {
			t.Errorf("msg %d subject %q", i, m.Subject)
		}
		id := m.Header.Get(jetstream.MsgIDHeader)
		sm := idRE.FindStringSubmatch(id)
		if sm == nil || sm[2] != strconv.Itoa(i+1) || sm[3] != strconv.Itoa(res.Parts) {
			t.Fatalf("msg %d Nats-Msg-Id %q", i, id)
		}
		if ct := m.Header.Get(HeaderContentType); ct != ContentType {
			t.Errorf("msg %d content type %q", i, ct)
		}
		if len(m.Data) > p.MaxPayload() {
			t.Errorf("msg %d has %d bytes, limit %d", i, len(m.Data), p.MaxPayload())
		}
		bytes += len(m.Data)
		got, part, err := Decode(m.Data)
		if err != nil {
			t.Fatal(err)
		}
		if got != meta {
			t.Fatalf("msg %d meta %+v", i, got)
		}
		if n, _ := strconv.Atoi(m.Header.Get(HeaderRows)); n != len(part) {
			t.Errorf("msg %d %s=%q for %d rows", i, HeaderRows, m.Header.Get(HeaderRows), len(part))
		}
		lo, hi := part[0].StreamSeq, part[0].StreamSeq
		for _, r := range part {
			lo, hi = min(lo, r.StreamSeq), max(hi, r.StreamSeq)
		}
		if want := fmt.Sprintf("%d-%d", lo, hi); m.Header.Get(HeaderStreamSeqs) != want {
			t.Errorf("msg %d %s=%q, want %q", i, HeaderStreamSeqs, m.Header.Get(HeaderStreamSeqs), want)
		}
		rows = append(rows, part...)
	}
	if bytes != res.Bytes {
		t.Errorf("stored %d bytes, result says %d", bytes, res.Bytes)
	}
	equalRows(t, rows, wantRows(b, meta.Dim, 0, b.Rows()))

	// A replay of the same records (a batch rebuilt from the redelivered inputs by another
	// worker: another batch number, the same rows, seq_sha256 and all) gets the same Msg-Ids and
	// is deduplicated by the stream.
	replay := makeBatch(77, 256, meta.Dim, 7_000)
	replay.StreamSeqs[10], replay.StreamSeqs[200] = 9_999, 6_000
	res2, err := p.Publish(ctx, replay)
	if err != nil {
		t.Fatal(err)
	}
	if res2.Parts != res.Parts || res2.Duplicates != res.Parts {
		t.Fatalf("replay result %+v, want %d duplicates", res2, res.Parts)
	}
	if after := natstest.StoredMsgs(t, ctx, stream); len(after) != len(msgs) {
		t.Fatalf("replay grew the stream to %d messages", len(after))
	}

	// Another batch gets other ids.
	other := makeBatch(5, 3, meta.Dim, 8_000)
	res3, err := p.Publish(ctx, other)
	if err != nil || res3.Parts != 1 || res3.Duplicates != 0 {
		t.Fatalf("other batch: %+v, %v", res3, err)
	}
	last := natstest.StoredMsgs(t, ctx, stream)
	if id := last[len(last)-1].Header.Get(jetstream.MsgIDHeader); !regexp.MustCompile(`^esm2_t33:8000-8002:[0-9a-f]{16}:1/1$`).MatchString(id) {
		t.Fatalf("other batch msg id %q", id)
	}

	// Empty batch: nothing to do.
	if res, err := p.Publish(ctx, &Batch{}); err != nil || res.Parts != 0 {
		t.Fatalf("empty batch: %+v, %v", res, err)
	}
}

func TestMsgIDDeterministic(t *testing.T) {
	b := makeBatch(1, 4, 2, 10)
	id := msgIDBase("p", b)
	if id != msgIDBase("p", makeBatch(99, 4, 2, 10)) {
		t.Fatal("msg id depends on more than prefix and stream seqs")
	}
	b.StreamSeqs[1], b.StreamSeqs[2] = b.StreamSeqs[2], b.StreamSeqs[1]
	if msgIDBase("p", b) == id {
		t.Fatal("msg id ignores row order")
	}
	if !regexp.MustCompile(`^p:10-13:[0-9a-f]{16}:$`).MatchString(id) {
		t.Fatalf("msg id base %q", id)
	}
}

func TestPublishFullStreamFails(t *testing.T) {
	ctx := testCtx(t)
	_, _, js := runJetStream(t, smallPayload)
	if _, err := EnsureStream(ctx, js, StreamConfig{Name: "FULL", Subjects: []string{"full.>"}, MaxBytes: 100 << 10}); err != nil {
		t.Fatal(err)
	}
	meta := testMeta
	meta.Dim = 320
	p, err := NewPublisher(js, "full.x", meta, WithAckTimeout(10*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	_, err = p.Publish(ctx, makeBatch(21, 256, meta.Dim, 1))
	if !errors.Is(err, ErrPublish) {
		t.Fatalf("got %v, want ErrPublish", err)
	}
	if el := time.Since(start); el > 5*time.Second {
		t.Fatalf("full stream took %s to fail", el)
	}
	var apiErr *jetstream.APIError
	if !errors.As(err, &apiErr) || !strings.Contains(err.Error(), "batch 21") || !strings.Contains(err.Error(), "stream seqs 1-256") {
		t.Fatalf("error %q: want the API error, batch and stream seqs", err)
	}
	t.Log(err)
}

func TestPublishCancelledContext(t *testing.T) {
	_, _, js := runJetStream(t, nil)
	if _, err := EnsureStream(testCtx(t), js, StreamConfig{}); err != nil {
		t.Fatal(err)
	}
	p, err := NewPublisher(js, "embeddings.x", testMeta)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := p.Publish(ctx, makeBatch(1, 3, testMeta.Dim, 1)); !errors.Is(err, ErrPublish) || !errors.Is(err, context.Canceled) {
		t.Fatalf("got %v, want ErrPublish wrapping context.Canceled", err)
	}
}

// TestPublishRetryAfterOutage publishes while the server is down (the
// publish fails), restarts the server on the same port and store, and checks
// that republishing the same batch leaves exactly one copy of each part.
func TestPublishRetryAfterOutage(t *testing.T) {
	ctx := testCtx(t)
	store := t.TempDir()
	withStore := func(o *server.Options) { o.StoreDir = store; o.MaxPayload = smallMaxPayload }
	srv, _, _ := runJetStream(t, withStore)
	port := srv.Addr().(*net.TCPAddr).Port
	nc, js := connect(t, srv.ClientURL(), nats.MaxReconnects(-1), nats.ReconnectWait(20*time.Millisecond))
	stream, err := EnsureStream(ctx, js, StreamConfig{})
	if err != nil {
		t.Fatal(err)
	}
	meta := testMeta
	meta.Dim = 320
	p, err := NewPublisher(js, "embeddings.x", meta, WithAckTimeout(time.Second))
	if err != nil {
		t.Fatal(err)
	}
	b := makeBatch(8, 200, meta.Dim, 300)

	srv.Shutdown()
	_, err = p.Publish(ctx, b)
	// Depending on when the client notices, the cause is a socket write
	// error, nats.ErrDisconnected or the ack timeout.
	if !errors.Is(err, ErrPublish) || !strings.Contains(err.Error(), "batch 8 (stream seqs 300-499)") {
		t.Fatalf("publish during outage: %v, want ErrPublish naming the batch", err)
	}
	t.Log(err)

	runJetStream(t, func(o *server.Options) { withStore(o); o.Port = port })
	// The client retries every 20 ms: it is back within a fraction of a second.
	testutil.EventuallyTrue(t, 20*time.Second, "the client to reconnect", nc.IsConnected)
	res, err := p.Publish(ctx, b)
	if err != nil {
		t.Fatalf("retry: %v", err)
	}
	t.Logf("retry: %+v", res)
	msgs := natstest.StoredMsgs(t, ctx, stream)
	if len(msgs) != res.Parts {
		t.Fatalf("stream holds %d messages for %d parts", len(msgs), res.Parts)
	}
	// Parts flushed from the reconnect buffer and parts of the retry can be
	// stored in any order; the Msg-Id's part number restores row order.
	part := func(m *jetstream.RawStreamMsg) int {
		id := m.Header.Get(jetstream.MsgIDHeader)
		n, _ := strconv.Atoi(id[strings.LastIndexByte(id, ':')+1 : strings.LastIndexByte(id, '/')])
		return n
	}
	slices.SortFunc(msgs, func(a, b *jetstream.RawStreamMsg) int { return part(a) - part(b) })
	var rows []Row
	for i, m := range msgs {
		if part(m) != i+1 {
			t.Fatalf("stored parts %d..: part %d missing or doubled", i+1, part(m))
		}
		_, r, err := Decode(m.Data)
		if err != nil {
			t.Fatal(err)
		}
		rows = append(rows, r...)
	}
	equalRows(t, rows, wantRows(b, meta.Dim, 0, b.Rows()))
}

func TestNewPublisherOptions(t *testing.T) {
	_, _, js := runJetStream(t, smallPayload)
	cases := []struct {
		name    string
		subject string
		meta    Meta
		opts    []PublisherOption
	}{
		{"payload over server max", "e.x", testMeta, []PublisherOption{WithMaxPayload(smallMaxPayload)}},
		{"zero payload", "e.x", testMeta, []PublisherOption{WithMaxPayload(0)}},
		{"zero ack timeout", "e.x", testMeta, []PublisherOption{WithAckTimeout(0)}},
		{"prefix with space", "e.x", testMeta, []PublisherOption{WithMsgIDPrefix("a b")}},
		{"empty prefix", "e.x", testMeta, []PublisherOption{WithMsgIDPrefix("")}},
		{"wildcard subject", "e.*", testMeta, nil},
		{"empty subject", "", testMeta, nil},
		{"bad meta", "e.x", Meta{Model: "m"}, nil},
	}
	for _, c := range cases {
		if _, err := NewPublisher(js, c.subject, c.meta, c.opts...); !errors.Is(err, ErrOption) {
			t.Errorf("%s: got %v, want ErrOption", c.name, err)
		}
	}
	p, err := NewPublisher(js, "e.x", testMeta, WithMaxPayload(1000), WithMsgIDPrefix("run-1"))
	if err != nil || p.MaxPayload() != 1000 || p.prefix != "run-1" {
		t.Fatalf("valid options: %v", err)
	}
}

func TestEnsureStreamIdempotent(t *testing.T) {
	ctx := testCtx(t)
	_, _, js := runJetStream(t, nil)
	s1, err := EnsureStream(ctx, js, StreamConfig{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := EnsureStream(ctx, js, StreamConfig{}); err != nil {
		t.Fatalf("second EnsureStream: %v", err)
	}
	info, err := s1.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	c := info.Config
	if c.Name != DefaultStreamName || len(c.Subjects) != 1 || c.Subjects[0] != DefaultSubjects ||
		c.Storage != jetstream.FileStorage || c.Retention != jetstream.LimitsPolicy ||
		c.Duplicates != DefaultDuplicates || c.Discard != jetstream.DiscardNew || c.MaxBytes != -1 {
		t.Fatalf("stream config %+v", c)
	}
	s2, err := EnsureStream(ctx, js, StreamConfig{MaxBytes: 1 << 30, Duplicates: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	if c := s2.CachedInfo().Config; c.MaxBytes != 1<<30 || c.Duplicates != time.Hour {
		t.Fatalf("update not applied: %+v", c)
	}
	if _, err := EnsureStream(ctx, js, StreamConfig{MaxBytes: -5}); !errors.Is(err, ErrOption) {
		t.Fatalf("negative MaxBytes: %v", err)
	}
}

func TestPublishConcurrent(t *testing.T) {
	ctx := testCtx(t)
	_, _, js := runJetStream(t, smallPayload)
	stream, err := EnsureStream(ctx, js, StreamConfig{})
	if err != nil {
		t.Fatal(err)
	}
	meta := testMeta
	meta.Dim = 256
	p, err := NewPublisher(js, "embeddings.c", meta)
	if err != nil {
		t.Fatal(err)
	}
	const workers, perWorker = 4, 5
	errs := make(chan error, workers)
	parts := make(chan int, workers*perWorker)
	for w := range workers {
		go func() {
			for i := range perWorker {
				n := uint64(w*perWorker + i)
				res, err := p.Publish(ctx, makeBatch(n, 80, meta.Dim, 1000*n))
				if err != nil {
					errs <- err
					return
				}
				parts <- res.Parts
			}
			errs <- nil
		}()
	}
	for range workers {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	close(parts)
	total := 0
	for n := range parts {
		total += n
	}
	msgs := natstest.StoredMsgs(t, ctx, stream)
	if len(msgs) != total {
		t.Fatalf("stream holds %d messages, published %d parts", len(msgs), total)
	}
	rows := 0
	for _, m := range msgs {
		_, r, err := Decode(m.Data)
		if err != nil {
			t.Fatal(err)
		}
		rows += len(r)
	}
	if rows != workers*perWorker*80 {
		t.Fatalf("%d rows stored", rows)
	}
}
