package natsconn_test

import (
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"go.uber.org/zap"

	"github.com/seqembed/seqembed/internal/natsconn"
	"github.com/seqembed/seqembed/internal/natstest"
	"github.com/seqembed/seqembed/internal/testutil"
)

// TestWatchedReportsEvents: a connection dialled with Watched reports a lost server (Down), its
// return (Up, after a reconnect to the restarted server) and a subscription that drops messages
// (SlowConsumer, with its subject); Events left nil are skipped.
func TestWatchedReportsEvents(t *testing.T) {
	srv := natstest.Server(t, nil)
	var down, up atomic.Int32
	var slow atomic.Value
	opts := append(natsconn.Watched("watch-test", zap.NewNop(), natsconn.Events{
		Down:         func() { down.Add(1) },
		Up:           func() { up.Add(1) },
		SlowConsumer: func(subject string) { slow.Store(subject) },
	}), natstest.ReconnectFast())
	nc, err := nats.Connect(srv.ClientURL(), opts...)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()

	// A subscription that holds at most one message and whose handler waits: the second message
	// overflows it.
	release := make(chan struct{})
	sub, err := nc.Subscribe("watch.slow", func(*nats.Msg) { <-release })
	if err != nil {
		t.Fatal(err)
	}
	if err := sub.SetPendingLimits(1, -1); err != nil {
		t.Fatal(err)
	}
	for range 5 {
		if err := nc.Publish("watch.slow", []byte("x")); err != nil {
			t.Fatal(err)
		}
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	testutil.EventuallyTrue(t, time.Minute, "a slow-consumer report", func() bool { return slow.Load() != nil })
	close(release)
	if got := slow.Load().(string); got != "watch.slow" {
		t.Errorf("slow consumer subject %q, want watch.slow", got)
	}

	srv = natstest.Restart(t, srv, nil)
	testutil.EventuallyTrue(t, time.Minute, "Down and then Up after the server's restart", func() bool {
		return down.Load() >= 1 && up.Load() >= 1 && nc.IsConnected()
	})

	// Nil events: nothing to call, nothing to fail.
	quiet, err := nats.Connect(srv.ClientURL(), natsconn.Watched("watch-quiet", zap.NewNop(), natsconn.Events{})...)
	if err != nil {
		t.Fatal(err)
	}
	quiet.Close()
}
