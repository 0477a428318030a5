// Package natstest starts real in-process NATS JetStream servers for tests.
package natstest

import (
	"context"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// readyTimeout is how long a server started here gets to accept connections.
const readyTimeout = 10 * time.Second

// started maps each *server.Server started by Server or Restart to the options it runs with
// (port and store directory fixed), so that Restart can start it again as it was.
var started sync.Map

// Server starts a JetStream-enabled nats-server on a random loopback port with its store in a
// test temp dir; mod may adjust the options. The server shuts down when the test ends.
func Server(t testing.TB, mod func(*server.Options)) *server.Server {
	t.Helper()
	opts := &server.Options{
		Host: "127.0.0.1", Port: -1, JetStream: true, StoreDir: t.TempDir(),
		NoSigs: true, NoLog: true,
	}
	if mod != nil {
		mod(opts)
	}
	return start(t, opts)
}

// Restart shuts s down (if it is still running) and starts a server in its place with the same
// options, the same client port and the same store directory, as an operator restarting a node
// would; mod, if not nil, then adjusts the options (e.g. a smaller MaxPayload). s must have been
// started by Server or Restart. Clients connected to s reconnect to the new server by
// themselves if their reconnect options allow it (see Connect). The new server shuts down when
// the test ends.
func Restart(t testing.TB, s *server.Server, mod func(*server.Options)) *server.Server {
	t.Helper()
	v, ok := started.Load(s)
	if !ok {
		t.Fatal("natstest.Restart: the server was not started by natstest.Server or natstest.Restart")
	}
	opts := v.(*server.Options).Clone()
	s.Shutdown()
	s.WaitForShutdown()
	started.Delete(s)
	if mod != nil {
		mod(opts)
	}
	return start(t, opts)
}

// start runs a server with opts; a random port (-1) is replaced by the one bound, so that a
// restart binds the same.
func start(t testing.TB, opts *server.Options) *server.Server {
	t.Helper()
	s, err := server.NewServer(opts.Clone())
	if err != nil {
		t.Fatal(err)
	}
	go s.Start()
	if !s.ReadyForConnections(readyTimeout) {
		s.Shutdown()
		t.Fatalf("nats-server not ready in %s", readyTimeout)
	}
	if addr, ok := s.Addr().(*net.TCPAddr); ok {
		opts.Port = addr.Port
	}
	started.Store(s, opts)
	t.Cleanup(func() { s.Shutdown(); s.WaitForShutdown(); started.Delete(s) })
	return s
}

// Connect connects to s with opts (nats.go defaults otherwise) and returns the connection and a
// JetStream context; both close at test end. For a test that restarts s, pass
// ReconnectFast() so the client is back within a fraction of a second.
func Connect(t testing.TB, s *server.Server, opts ...nats.Option) (*nats.Conn, jetstream.JetStream) {
	t.Helper()
	return connectURL(t, s.ClientURL(), opts...)
}

// connectURL is Connect for a URL list.
func connectURL(t testing.TB, url string, opts ...nats.Option) (*nats.Conn, jetstream.JetStream) {
	t.Helper()
	nc, err := nats.Connect(url, opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	return nc, js
}

// ReconnectFast makes a client reconnect forever, every 20 ms (nats.go's default is 60 tries
// 2 s apart), so a test that restarts its server waits on the server, not on the client.
func ReconnectFast() nats.Option {
	return func(o *nats.Options) error {
		o.MaxReconnect = -1
		o.ReconnectWait = 20 * time.Millisecond
		o.ReconnectJitter = 0
		return nil
	}
}

// StoredMsgs is every message stream s holds now, headers included, in stream order.
func StoredMsgs(t testing.TB, ctx context.Context, s jetstream.Stream) []*jetstream.RawStreamMsg {
	t.Helper()
	info, err := s.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var out []*jetstream.RawStreamMsg
	for seq := info.State.FirstSeq; seq <= info.State.LastSeq && info.State.Msgs > 0; seq++ {
		m, err := s.GetMsg(ctx, seq)
		if err != nil {
			t.Fatalf("get msg %d: %v", seq, err)
		}
		out = append(out, m)
	}
	return out
}
