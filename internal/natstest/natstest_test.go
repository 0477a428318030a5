package natstest_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/seqembed/seqembed/internal/natstest"
	"github.com/seqembed/seqembed/internal/testutil"
)

// TestRestart: a restarted server has the same client URL and store (a stream and its message
// survive), takes the adjusted options, and a client made with ReconnectFast is back on it by
// itself.
func TestRestart(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	s := natstest.Server(t, func(o *server.Options) { o.MaxPayload = 1 << 20 })
	url := s.ClientURL()
	nc, js := natstest.Connect(t, s, natstest.ReconnectFast())
	if _, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: "T", Subjects: []string{"t.>"}, Storage: jetstream.FileStorage}); err != nil {
		t.Fatal(err)
	}
	if _, err := js.Publish(ctx, "t.a", []byte("kept")); err != nil {
		t.Fatal(err)
	}
	s2 := natstest.Restart(t, s, func(o *server.Options) { o.MaxPayload = 256 << 10 })
	if s2.ClientURL() != url || s.Running() {
		t.Fatalf("restarted on %s (was %s), old one running: %v", s2.ClientURL(), url, s.Running())
	}
	testutil.Eventually(t, 20*time.Second, func() (bool, string) {
		return nc.IsConnected() && nc.MaxPayload() == 256<<10,
			fmt.Sprintf("client back with the new max_payload (connected %v, max_payload %d)", nc.IsConnected(), nc.MaxPayload())
	})
	st, err := js.Stream(ctx, "T")
	if err != nil {
		t.Fatal(err)
	}
	m, err := st.GetMsg(ctx, 1)
	if err != nil || string(m.Data) != "kept" {
		t.Fatalf("message after the restart: %v, %v", m, err)
	}
	// A second restart with no change keeps the last options.
	natstest.Restart(t, s2, nil)
	testutil.Eventually(t, 20*time.Second, func() (bool, string) {
		return nc.IsConnected() && nc.MaxPayload() == 256<<10, "client back after the second restart"
	})
}
