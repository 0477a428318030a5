package natstest

import (
	"encoding/json"
	"fmt"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
)

// TestCluster is n in-process JetStream servers routed into one cluster on loopback. Nodes can
// be stopped and restarted with the same ports and store directory, as a real node would be.
type TestCluster struct {
	t    testing.TB
	mu   sync.Mutex
	opts []*server.Options // what each node was started with (cloned for every start)
	srvs []*server.Server  // nil while a node is down
}

// freePorts returns n distinct free TCP ports on loopback. They are found by listening on :0 and
// closing again, so another process could take one in between: fine for tests.
func freePorts(t testing.TB, n int) []int {
	t.Helper()
	ports := make([]int, 0, n)
	var ls []net.Listener
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		ls = append(ls, l)
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	for _, l := range ls {
		l.Close()
	}
	return ports
}

// Cluster starts an n-node JetStream cluster (server names n1..nN, cluster "seqembed-test"),
// each node with its own store in a test temp dir, and waits until JetStream has a meta leader.
// Every node shuts down when the test ends.
func Cluster(t testing.TB, n int) *TestCluster {
	t.Helper()
	if n < 1 {
		t.Fatalf("natstest.Cluster: n = %d", n)
	}
	ports := freePorts(t, 2*n) // client ports, then cluster ports
	c := &TestCluster{t: t, opts: make([]*server.Options, n), srvs: make([]*server.Server, n)}
	for i := range n {
		var routes []string
		for j := range n {
			if j != i {
				routes = append(routes, fmt.Sprintf("nats-route://127.0.0.1:%d", ports[n+j]))
			}
		}
		c.opts[i] = &server.Options{
			ServerName: fmt.Sprintf("n%d", i+1),
			Host:       "127.0.0.1", Port: ports[i],
			JetStream: true, StoreDir: t.TempDir(),
			NoSigs: true, NoLog: true,
			Cluster: server.ClusterOpts{Name: "seqembed-test", Host: "127.0.0.1", Port: ports[n+i]},
			Routes:  server.RoutesFromStr(strings.Join(routes, ",")),
		}
	}
	t.Cleanup(c.shutdownAll)
	// Start every node before waiting for any: a JetStream cluster needs a quorum of peers
	// before it is ready.
	for i := range n {
		s, err := server.NewServer(c.opts[i].Clone())
		if err != nil {
			t.Fatal(err)
		}
		c.srvs[i] = s
		go s.Start()
	}
	for i, s := range c.srvs {
		if !s.ReadyForConnections(20 * time.Second) {
			t.Fatalf("nats-server n%d not ready in 20s", i+1)
		}
	}
	c.WaitMetaLeader(30 * time.Second)
	return c
}

func (c *TestCluster) shutdownAll() {
	c.mu.Lock()
	defer c.mu.Unlock()
	for i, s := range c.srvs {
		if s != nil {
			s.Shutdown()
			s.WaitForShutdown()
			c.srvs[i] = nil
		}
	}
}

// N is the number of nodes.
func (c *TestCluster) N() int { return len(c.opts) }

// URLs returns every node's client URL, comma-separated (what nats.Connect takes).
func (c *TestCluster) URLs() string {
	urls := make([]string, len(c.opts))
	for i, o := range c.opts {
		urls[i] = fmt.Sprintf("nats://%s:%d", o.Host, o.Port)
	}
	return strings.Join(urls, ",")
}

// Server returns node i (0-based), or nil while it is shut down.
func (c *TestCluster) Server(i int) *server.Server {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.srvs[i]
}

// Shutdown stops node i and waits until it has stopped; its store directory is kept.
func (c *TestCluster) Shutdown(i int) {
	c.mu.Lock()
	s := c.srvs[i]
	c.srvs[i] = nil
	c.mu.Unlock()
	if s != nil {
		s.Shutdown()
		s.WaitForShutdown()
	}
}

// Restart starts node i again with its original options: same name, ports and store directory.
func (c *TestCluster) Restart(i int) {
	c.t.Helper()
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.srvs[i] != nil {
		c.t.Fatalf("natstest: Restart(%d): node is running", i)
	}
	s, err := server.NewServer(c.opts[i].Clone())
	if err != nil {
		c.t.Fatal(err)
	}
	go s.Start()
	if !s.ReadyForConnections(20 * time.Second) {
		c.t.Fatalf("nats-server n%d not ready in 20s after restart", i+1)
	}
	c.srvs[i] = s
}

// MetaLeader returns the index of the node that is the JetStream meta leader, or -1.
func (c *TestCluster) MetaLeader() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	for i, s := range c.srvs {
		if s != nil && s.JetStreamIsLeader() {
			return i
		}
	}
	return -1
}

// WaitMetaLeader waits until some running node is the JetStream meta leader.
func (c *TestCluster) WaitMetaLeader(timeout time.Duration) int {
	c.t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		if i := c.MetaLeader(); i >= 0 {
			return i
		}
		if time.Now().After(deadline) {
			c.t.Fatalf("natstest: no JetStream meta leader after %s", timeout)
		}
		time.Sleep(25 * time.Millisecond)
	}
}

// StreamLeader returns the index of the node leading stream of account ("$G" when the servers
// have no accounts configured), or -1 if no running node leads it.
func (c *TestCluster) StreamLeader(account, stream string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	for i, s := range c.srvs {
		if s != nil && s.JetStreamIsStreamLeader(account, stream) {
			return i
		}
	}
	return -1
}

// ConsumerLeader returns the index of the node leading the consumer, or -1.
func (c *TestCluster) ConsumerLeader(account, stream, consumer string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	for i, s := range c.srvs {
		if s != nil && s.JetStreamIsConsumerLeader(account, stream, consumer) {
			return i
		}
	}
	return -1
}

// apiResponse is the part of a JetStream API reply that says whether it worked.
type apiResponse struct {
	Success bool `json:"success"`
	Error   *struct {
		Code        int    `json:"code"`
		ErrCode     int    `json:"err_code"`
		Description string `json:"description"`
	} `json:"error"`
}

func stepDown(nc *nats.Conn, subject string) error {
	m, err := nc.Request(subject, nil, 5*time.Second)
	if err != nil {
		return fmt.Errorf("%s: %w", subject, err)
	}
	var r apiResponse
	if err := json.Unmarshal(m.Data, &r); err != nil {
		return fmt.Errorf("%s: reply %q: %w", subject, m.Data, err)
	}
	if r.Error != nil {
		return fmt.Errorf("%s: %s (code %d, err_code %d)", subject, r.Error.Description, r.Error.Code, r.Error.ErrCode)
	}
	if !r.Success {
		return fmt.Errorf("%s: not successful: %s", subject, m.Data)
	}
	return nil
}

// ConsumerStepDown asks the consumer's leader to step down through the JetStream API
// ($JS.API.CONSUMER.LEADER.STEPDOWN.<stream>.<consumer>); another replica takes over.
func ConsumerStepDown(nc *nats.Conn, stream, consumer string) error {
	return stepDown(nc, fmt.Sprintf("$JS.API.CONSUMER.LEADER.STEPDOWN.%s.%s", stream, consumer))
}

// StreamStepDown asks the stream's leader to step down ($JS.API.STREAM.LEADER.STEPDOWN.<stream>).
func StreamStepDown(nc *nats.Conn, stream string) error {
	return stepDown(nc, "$JS.API.STREAM.LEADER.STEPDOWN."+stream)
}
