package natstest

import (
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/seqembed/seqembed/internal/jscluster"
)

// TestCluster is n in-process JetStream servers routed into one cluster on loopback. Nodes can
// be stopped and restarted with the same ports and store directory, as a real node would be.
// It is a jscluster.Cluster whose Restart fails the test instead of returning an error; its
// methods are safe for concurrent use.
type TestCluster struct {
	*jscluster.Cluster
	t testing.TB
}

// Cluster starts an n-node JetStream cluster (server names n1..nN, cluster "seqembed-test"),
// each node with its own store in a test temp dir, and waits until JetStream has a meta leader
// (each node gets 20s to accept connections, the meta leader 30s). Every node shuts down when
// the test ends.
func Cluster(t testing.TB, n int) *TestCluster {
	t.Helper()
	if n < 1 {
		t.Fatalf("natstest.Cluster: n = %d", n)
	}
	cfg := jscluster.Config{
		Name:         "seqembed-test",
		ReadyTimeout: 20 * time.Second, LeaderTimeout: 30 * time.Second, RestartTimeout: 20 * time.Second,
	}
	c, err := cfg.Start(t.TempDir(), n)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	return &TestCluster{Cluster: c, t: t}
}

// Restart starts node i again with its original options: same name, ports and store directory
// (20s to accept connections). The test fails if the node is running or does not come up.
func (c *TestCluster) Restart(i int) {
	c.t.Helper()
	if err := c.Cluster.Restart(i); err != nil {
		c.t.Fatal(err)
	}
}

// Connect connects to every node of the cluster, reconnecting forever (before opts), and returns
// the connection (closed when the test ends) and its JetStream context.
func (c *TestCluster) Connect(opts ...nats.Option) (*nats.Conn, jetstream.JetStream) {
	c.t.Helper()
	return connectURL(c.t, c.URLs(), append([]nats.Option{nats.MaxReconnects(-1)}, opts...)...)
}

// ConsumerStepDown asks the consumer's leader to step down through the JetStream API
// ($JS.API.CONSUMER.LEADER.STEPDOWN.<stream>.<consumer>); another replica takes over.
func ConsumerStepDown(nc *nats.Conn, stream, consumer string) error {
	return jscluster.ConsumerStepDown(nc, stream, consumer)
}
