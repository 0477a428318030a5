package jspub_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/seqembed/seqembed/internal/jspub"
	"github.com/seqembed/seqembed/internal/natstest"
	"github.com/seqembed/seqembed/internal/retry"
	"github.com/seqembed/seqembed/internal/testutil"
)

// testCtx bounds a whole test: its waits are on a local server (milliseconds each) or a
// restart (about a second), so a minute is ample on a loaded 2-core machine.
func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	t.Cleanup(cancel)
	return ctx
}

// connect connects to url, reconnecting every 20 ms without limit.
func connect(t *testing.T, url string) *nats.Conn {
	t.Helper()
	nc, err := nats.Connect(url, nats.MaxReconnects(-1), nats.ReconnectWait(20*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	return nc
}

// stream creates stream S on in.> (file storage, 10 min duplicate window).
func stream(t *testing.T, ctx context.Context, nc *nats.Conn) jetstream.Stream {
	t.Helper()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	s, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: "S", Subjects: []string{"in.>"}, Duplicates: 10 * time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func msgs(t *testing.T, ctx context.Context, s jetstream.Stream) uint64 {
	t.Helper()
	info, err := s.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return info.State.Msgs
}

// msg is message i on subject, with Nats-Msg-Id "id-<i>".
func msg(subject string, i int) *nats.Msg {
	m := nats.NewMsg(subject)
	m.Header.Set(jetstream.MsgIDHeader, fmt.Sprintf("id-%05d", i))
	m.Data = fmt.Appendf(nil, "record %d", i)
	return m
}

// acks collects what OnAck reports, checking that acks come in Publish order.
type acks struct {
	mu   sync.Mutex
	all  []jspub.Ack
	dups int
}

func (a *acks) add(x jspub.Ack) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.all = append(a.all, x)
	if x.PubAck.Duplicate {
		a.dups++
	}
}

func (a *acks) len() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return len(a.all)
}

// inOrder checks that the acks are for ids id-00000.. in that order.
func (a *acks) inOrder(t *testing.T, n int) {
	t.Helper()
	a.mu.Lock()
	defer a.mu.Unlock()
	if len(a.all) != n {
		t.Fatalf("%d acks, want %d", len(a.all), n)
	}
	for i, x := range a.all {
		if id, want := x.Msg.Header.Get(jetstream.MsgIDHeader), fmt.Sprintf("id-%05d", i); id != want {
			t.Fatalf("ack %d is for %s, want %s", i, id, want)
		}
	}
}

// relay stands between the publisher and the stream, as a slow or lossy link would: messages
// published on relay.<x> are handed to handle, which may forward them to the stream's subject
// in.<x> (forward) and pass the stream's own PubAck back to the publisher, or not.
type relay struct {
	nc *nats.Conn
}

func newRelay(t *testing.T, url string, handle func(r *relay, m *nats.Msg)) *relay {
	t.Helper()
	r := &relay{nc: connect(t, url)}
	if _, err := r.nc.Subscribe("relay.>", func(m *nats.Msg) { handle(r, m) }); err != nil {
		t.Fatal(err)
	}
	if err := r.nc.Flush(); err != nil {
		t.Fatal(err)
	}
	return r
}

// forward stores m in the stream (headers and data as published) and, if ack, answers m with the
// stream's PubAck; otherwise the PubAck is lost.
func (r *relay) forward(m *nats.Msg, ack bool) error {
	out := &nats.Msg{Subject: "in." + strings.TrimPrefix(m.Subject, "relay."), Header: m.Header, Data: m.Data}
	resp, err := r.nc.RequestMsg(out, 5*time.Second)
	if err != nil {
		return err
	}
	if ack {
		return m.Respond(resp.Data)
	}
	return nil
}

func TestPublishStoresAllInOrder(t *testing.T) {
	ctx := testCtx(t)
	nc := connect(t, natstest.Server(t, nil).ClientURL())
	s := stream(t, ctx, nc)
	var got acks
	p, err := jspub.New(nc, jspub.WithWindow(64), jspub.WithOnAck(got.add))
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	const n = 3000
	for i := range n {
		if err := p.Publish(ctx, msg("in.x", i)); err != nil {
			t.Fatal(err)
		}
		if p.Pending() > 64 {
			t.Fatalf("%d pending, window 64", p.Pending())
		}
	}
	if err := p.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	got.inOrder(t, n)
	if got.dups != 0 || p.Retries() != 0 || p.Pending() != 0 {
		t.Fatalf("%d duplicates, %d retries, %d pending; want none", got.dups, p.Retries(), p.Pending())
	}
	if stored := msgs(t, ctx, s); stored != n {
		t.Fatalf("stream holds %d messages, want %d", stored, n)
	}
}

// TestDuplicateID: a message whose Nats-Msg-Id the stream already holds is acked as a duplicate
// on its first send, and not stored again.
func TestDuplicateID(t *testing.T) {
	ctx := testCtx(t)
	nc := connect(t, natstest.Server(t, nil).ClientURL())
	s := stream(t, ctx, nc)
	var got acks
	p, err := jspub.New(nc, jspub.WithOnAck(got.add))
	if err != nil {
		t.Fatal(err)
	}
	for _, i := range []int{0, 0} {
		if err := p.Publish(ctx, msg("in.x", i)); err != nil {
			t.Fatal(err)
		}
	}
	if err := p.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	if len(got.all) != 2 || got.all[0].PubAck.Duplicate || !got.all[1].PubAck.Duplicate || got.all[1].Tries != 1 {
		t.Fatalf("acks %+v, want the second a duplicate on its first try", got.all)
	}
	if stored := msgs(t, ctx, s); stored != 1 {
		t.Fatalf("stream holds %d messages, want 1", stored)
	}
}

// TestRepublishIsDeduplicated: a message stored by the stream whose PubAck is lost times out, is
// republished with the same Nats-Msg-Id, and is acked as a duplicate: stored once.
func TestRepublishIsDeduplicated(t *testing.T) {
	ctx := testCtx(t)
	srv := natstest.Server(t, nil)
	nc := connect(t, srv.ClientURL())
	s := stream(t, ctx, nc)
	var sends atomic.Int32
	newRelay(t, srv.ClientURL(), func(r *relay, m *nats.Msg) {
		// The first send's PubAck is lost; the republish's is passed back.
		if err := r.forward(m, sends.Add(1) > 1); err != nil {
			t.Errorf("relay: %v", err)
		}
	})
	var got acks
	var retried []error
	p, err := jspub.New(nc, jspub.WithAckTimeout(300*time.Millisecond), jspub.WithOnAck(got.add),
		jspub.WithOnRetry(func(_ *nats.Msg, err error) { retried = append(retried, err) }))
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Publish(ctx, msg("relay.x", 0)); err != nil {
		t.Fatal(err)
	}
	if err := p.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	if len(got.all) != 1 || !got.all[0].PubAck.Duplicate || got.all[0].Tries != 2 {
		t.Fatalf("acks %+v, want one duplicate after 2 tries", got.all)
	}
	if p.Retries() != 1 || len(retried) != 1 || !errors.Is(retried[0], jetstream.ErrAsyncPublishTimeout) {
		t.Fatalf("%d retries, OnRetry errors %v; want 1 after an async publish timeout", p.Retries(), retried)
	}
	if stored := msgs(t, ctx, s); stored != 1 {
		t.Fatalf("stream holds %d messages, want 1", stored)
	}
}

// TestWindowAndCancel: with the PubAcks held back, Publish accepts a window of messages and then
// blocks; cancelling its ctx ends it (the message is not accepted), as it ends a Flush; once the
// PubAcks are passed on, Flush settles every accepted message.
func TestWindowAndCancel(t *testing.T) {
	ctx := testCtx(t)
	srv := natstest.Server(t, nil)
	nc := connect(t, srv.ClientURL())
	s := stream(t, ctx, nc)
	held := make(chan *nats.Msg, 100)
	r := newRelay(t, srv.ClientURL(), func(_ *relay, m *nats.Msg) { held <- m })
	const window = 4
	var got acks
	p, err := jspub.New(nc, jspub.WithWindow(window), jspub.WithAckTimeout(time.Minute), jspub.WithOnAck(got.add))
	if err != nil {
		t.Fatal(err)
	}
	for i := range window {
		if err := p.Publish(ctx, msg("relay.x", i)); err != nil {
			t.Fatal(err)
		}
	}
	var first []*nats.Msg
	for range window {
		select {
		case m := <-held:
			first = append(first, m)
		case <-ctx.Done():
			t.Fatalf("%d of %d messages reached the relay", len(first), window)
		}
	}

	// The window is full: the next Publish waits, until its ctx is cancelled.
	pctx, cancel := context.WithCancel(ctx)
	returned := make(chan error, 1)
	go func() { returned <- p.Publish(pctx, msg("relay.x", 99)) }()
	select {
	case err := <-returned:
		t.Fatalf("Publish returned %v with the window full", err)
	case m := <-held:
		t.Fatalf("%s sent with the window full", m.Header.Get(jetstream.MsgIDHeader))
	default:
	}
	if p.Pending() != window {
		t.Fatalf("%d pending, want %d", p.Pending(), window)
	}
	cancel()
	select {
	case err := <-returned:
		if !errors.Is(err, jspub.ErrPublish) || !errors.Is(err, context.Canceled) {
			t.Fatalf("cancelled Publish: %v, want ErrPublish wrapping context.Canceled", err)
		}
	case <-ctx.Done():
		t.Fatal("cancelling ctx did not end Publish")
	}
	if err := p.Flush(pctx); !errors.Is(err, jspub.ErrPublish) || !errors.Is(err, context.Canceled) {
		t.Fatalf("Flush with a cancelled ctx: %v", err)
	}
	if p.Pending() != window || got.len() != 0 {
		t.Fatalf("%d pending, %d acked after the cancels; want %d pending, none acked", p.Pending(), got.len(), window)
	}

	// Pass the PubAcks on: Flush settles all four (and the cancelled message was never sent).
	flushed := make(chan error, 1)
	go func() { flushed <- p.Flush(ctx) }()
	for _, m := range first {
		if err := r.forward(m, true); err != nil {
			t.Fatal(err)
		}
	}
	select {
	case err := <-flushed:
		if err != nil {
			t.Fatal(err)
		}
	case <-ctx.Done():
		t.Fatal("Flush did not return after the PubAcks")
	}
	got.inOrder(t, window)
	if stored := msgs(t, ctx, s); stored != window || len(held) != 0 {
		t.Fatalf("stream holds %d messages, %d more reached the relay; want %d and none", stored, len(held), window)
	}
}

// TestRetriesExhaustedKeepsMessage: a message no stream takes fails after the policy's tries and
// stays pending; once a stream exists, Flush stores it.
func TestRetriesExhaustedKeepsMessage(t *testing.T) {
	ctx := testCtx(t)
	nc := connect(t, natstest.Server(t, nil).ClientURL())
	var got acks
	p, err := jspub.New(nc, jspub.WithAckTimeout(2*time.Second), jspub.WithOnAck(got.add),
		jspub.WithRetry(retry.Policy{Initial: 10 * time.Millisecond, Tries: 2}))
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Publish(ctx, msg("in.x", 0)); err != nil {
		t.Fatal(err)
	}
	err = p.Flush(ctx)
	if !errors.Is(err, jspub.ErrPublish) || !errors.Is(err, retry.ErrExhausted) || !strings.Contains(err.Error(), `"id-00000" on in.x`) {
		t.Fatalf("Flush without a stream: %v, want ErrPublish wrapping ErrExhausted naming the message", err)
	}
	if p.Pending() != 1 || p.Retries() != 2 {
		t.Fatalf("%d pending, %d retries; want 1 and 2", p.Pending(), p.Retries())
	}
	s := stream(t, ctx, nc)
	if err := p.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	got.inOrder(t, 1)
	if got.all[0].Tries != 4 || got.all[0].PubAck.Duplicate || msgs(t, ctx, s) != 1 {
		t.Fatalf("ack %+v, want stored on the 4th send", got.all[0])
	}
}

// TestServerRestartLosesNothing: the server is shut down while messages are being published and
// started again on the same port and store; every message ends up stored exactly once and acked
// exactly once, in order.
func TestServerRestartLosesNothing(t *testing.T) {
	ctx := testCtx(t)
	store := t.TempDir()
	srv := natstest.Server(t, func(o *server.Options) { o.StoreDir = store })
	port := srv.Addr().(*net.TCPAddr).Port
	nc := connect(t, srv.ClientURL())
	stream(t, ctx, nc)
	const n, window = 20000, 256 // the shutdown comes after n/10 acks
	var got acks
	halfway := make(chan struct{})
	p, err := jspub.New(nc, jspub.WithWindow(window), jspub.WithAckTimeout(2*time.Second),
		jspub.WithRetry(retry.Policy{Initial: 50 * time.Millisecond, Max: 500 * time.Millisecond}), // until ctx
		jspub.WithOnAck(func(a jspub.Ack) {
			got.add(a)
			if got.len() == n/10 {
				close(halfway)
			}
		}))
	if err != nil {
		t.Fatal(err)
	}
	published := make(chan error, 1)
	go func() {
		for i := range n {
			if err := p.Publish(ctx, msg("in.x", i)); err != nil {
				published <- err
				return
			}
		}
		published <- p.Flush(ctx)
	}()

	select {
	case <-halfway:
	case err := <-published:
		t.Fatalf("publisher ended before the restart: %v", err)
	case <-ctx.Done():
		t.Fatal("no acks")
	}
	srv.Shutdown()
	srv.WaitForShutdown()
	// The PubAcks outstanding at the disconnect fail at once (later ones after the 2 s ack
	// timeout) and the oldest is republished, waiting for the server.
	testutil.EventuallyTrue(t, 20*time.Second, "a republish while the server is down",
		func() bool { return p.Retries() > 0 })
	natstest.Server(t, func(o *server.Options) { o.StoreDir = store; o.Port = port }) // same port and store

	select {
	case err := <-published:
		if err != nil {
			t.Fatal(err)
		}
	case <-ctx.Done():
		t.Fatalf("publisher did not finish after the restart: %d acks", got.len())
	}
	got.inOrder(t, n)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	s, err := js.Stream(ctx, "S")
	if err != nil {
		t.Fatal(err)
	}
	if stored := msgs(t, ctx, s); stored != n {
		t.Fatalf("stream holds %d messages after the restart, want %d", stored, n)
	}
	t.Logf("%d messages, %d republishes, %d acked as duplicates", n, p.Retries(), got.dups)
}

func TestOptionsAndMessages(t *testing.T) {
	nc := connect(t, natstest.Server(t, nil).ClientURL())
	if _, err := jspub.New(nil); !errors.Is(err, jspub.ErrOption) {
		t.Errorf("nil connection: %v", err)
	}
	for name, opt := range map[string]jspub.Option{
		"window 0":         jspub.WithWindow(0),
		"ack timeout 0":    jspub.WithAckTimeout(0),
		"negative tries":   jspub.WithRetry(retry.Policy{Tries: -1}),
		"negative per-try": jspub.WithRetry(retry.Policy{PerTry: -time.Second}),
		"nil OnAck":        jspub.WithOnAck(nil),
		"nil OnRetry":      jspub.WithOnRetry(nil),
	} {
		if _, err := jspub.New(nc, opt); !errors.Is(err, jspub.ErrOption) {
			t.Errorf("%s: %v, want ErrOption", name, err)
		}
	}
	p, err := jspub.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	noID := nats.NewMsg("in.x")
	withReply := msg("in.x", 1)
	withReply.Reply = "r"
	for name, m := range map[string]*nats.Msg{"nil": nil, "no Nats-Msg-Id": noID, "reply set": withReply} {
		if err := p.Publish(context.Background(), m); !errors.Is(err, jspub.ErrMessage) {
			t.Errorf("%s message: %v, want ErrMessage", name, err)
		}
	}
	if p.Pending() != 0 {
		t.Fatalf("%d pending after refused messages", p.Pending())
	}
}
