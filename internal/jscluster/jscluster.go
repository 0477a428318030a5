// Package jscluster runs a small JetStream cluster in process: n nats-servers routed together
// on loopback, each node restartable with the same ports and store directory. It serves the
// cluster tests (through natstest.Cluster) and seqembed-lab soak.
package jscluster

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"

	"github.com/seqembed/seqembed/internal/retry"
)

// Config says what a cluster is called and how long it waits for its nodes. A zero field takes
// its default.
type Config struct {
	Name           string        // cluster name; default "seqembed"
	ReadyTimeout   time.Duration // for each node to accept connections at start; default 30s
	LeaderTimeout  time.Duration // for a JetStream meta leader at start; default 60s
	RestartTimeout time.Duration // for a restarted node to accept connections; default 60s
}

func (cfg Config) withDefaults() Config {
	if cfg.Name == "" {
		cfg.Name = "seqembed"
	}
	if cfg.ReadyTimeout <= 0 {
		cfg.ReadyTimeout = 30 * time.Second
	}
	if cfg.LeaderTimeout <= 0 {
		cfg.LeaderTimeout = 60 * time.Second
	}
	if cfg.RestartTimeout <= 0 {
		cfg.RestartTimeout = 60 * time.Second
	}
	return cfg
}

// Cluster is n in-process JetStream servers routed into one cluster on loopback. Nodes can be
// stopped and restarted with the same ports and store directory, as a real node would be. Its
// methods are safe for concurrent use.
type Cluster struct {
	cfg  Config
	mu   sync.Mutex
	opts []*server.Options // what each node was started with (cloned for every start)
	srvs []*server.Server  // nil while a node is down
}

// freePorts returns n distinct free TCP ports on loopback. They are found by listening on :0 and
// closing again, so another process could take one in between: fine for tests and the soak.
func freePorts(n int) ([]int, error) {
	ports := make([]int, 0, n)
	var ls []net.Listener
	defer func() {
		for _, l := range ls {
			l.Close()
		}
	}()
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		ls = append(ls, l)
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

// Start starts an n-node JetStream cluster (server names n1..nN) with node i's store in
// dir/n<i>, and waits until JetStream has a meta leader that sees every node. On an error every node started is shut
// down again; otherwise the caller must Close the cluster.
func (cfg Config) Start(dir string, n int) (*Cluster, error) {
	if n < 1 {
		return nil, fmt.Errorf("jscluster: n = %d", n)
	}
	cfg = cfg.withDefaults()
	ports, err := freePorts(2 * n) // client ports, then cluster ports
	if err != nil {
		return nil, err
	}
	c := &Cluster{cfg: cfg, opts: make([]*server.Options, n), srvs: make([]*server.Server, n)}
	for i := range n {
		var routes []string
		for j := range n {
			if j != i {
				routes = append(routes, fmt.Sprintf("nats-route://127.0.0.1:%d", ports[n+j]))
			}
		}
		store := filepath.Join(dir, fmt.Sprintf("n%d", i+1))
		if err := os.MkdirAll(store, 0o755); err != nil {
			return nil, err
		}
		c.opts[i] = &server.Options{
			ServerName: fmt.Sprintf("n%d", i+1),
			Host:       "127.0.0.1", Port: ports[i],
			JetStream: true, StoreDir: store,
			NoSigs: true, NoLog: true,
			Cluster: server.ClusterOpts{Name: cfg.Name, Host: "127.0.0.1", Port: ports[n+i]},
			Routes:  server.RoutesFromStr(strings.Join(routes, ",")),
		}
	}
	// Start every node before waiting for any: a JetStream cluster needs a quorum of peers
	// before it is ready.
	for i := range n {
		s, err := server.NewServer(c.opts[i].Clone())
		if err != nil {
			c.Close()
			return nil, err
		}
		c.srvs[i] = s
		go s.Start()
	}
	for i, s := range c.srvs {
		if !s.ReadyForConnections(cfg.ReadyTimeout) {
			c.Close()
			return nil, fmt.Errorf("nats-server n%d not ready in %s", i+1, cfg.ReadyTimeout)
		}
	}
	if err := c.waitPeers(cfg.LeaderTimeout); err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}

// errNotYet is what waitPeers' check returns while the cluster is not ready.
var errNotYet = errors.New("jscluster: not ready yet")

// waitPeers waits for a meta leader that sees every node online with JetStream: before that,
// creating an R3 stream can fail with "no suitable peers for placement". It checks every 25 ms
// through retry.Do, without backoff: the state changes within milliseconds once the servers
// agree, so a frequent check costs nothing and adds no latency.
func (c *Cluster) waitPeers(timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	leader, peers := -1, 0
	err := retry.Do(ctx, retry.Policy{Initial: 25 * time.Millisecond, Max: 25 * time.Millisecond}, func(context.Context) error {
		c.mu.Lock()
		defer c.mu.Unlock()
		leader, peers = c.metaLeader(), 0
		if leader >= 0 {
			peers = len(c.srvs[leader].JetStreamClusterPeers())
		}
		if peers < len(c.srvs) {
			return errNotYet
		}
		return nil
	})
	switch {
	case err == nil:
		return nil
	case leader < 0:
		return fmt.Errorf("jscluster: no JetStream meta leader after %s", timeout)
	default:
		return fmt.Errorf("jscluster: meta leader n%d sees %d of %d nodes after %s", leader+1, peers, len(c.srvs), timeout)
	}
}

// Close shuts every running node down and waits until they have stopped.
func (c *Cluster) Close() {
	for i := range c.srvs {
		c.Shutdown(i)
	}
}

// URLs returns every node's client URL, comma-separated (what nats.Connect takes).
func (c *Cluster) URLs() string {
	urls := make([]string, len(c.opts))
	for i, o := range c.opts {
		urls[i] = fmt.Sprintf("nats://%s:%d", o.Host, o.Port)
	}
	return strings.Join(urls, ",")
}

// Server returns node i (0-based), or nil while it is shut down.
func (c *Cluster) Server(i int) *server.Server {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.srvs[i]
}

// Shutdown stops node i and waits until it has stopped; its store directory is kept.
func (c *Cluster) Shutdown(i int) {
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
// It is an error if the node is running. The other methods wait while a restart is in progress.
func (c *Cluster) Restart(i int) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.srvs[i] != nil {
		return fmt.Errorf("jscluster: Restart(%d): node is running", i)
	}
	s, err := server.NewServer(c.opts[i].Clone())
	if err != nil {
		return err
	}
	go s.Start()
	if !s.ReadyForConnections(c.cfg.RestartTimeout) {
		return fmt.Errorf("nats-server n%d not ready in %s after restart", i+1, c.cfg.RestartTimeout)
	}
	c.srvs[i] = s
	return nil
}

// metaLeader is the index of the running node that is the JetStream meta leader, or -1. c.mu
// must be held.
func (c *Cluster) metaLeader() int {
	for i, s := range c.srvs {
		if s != nil && s.JetStreamIsLeader() {
			return i
		}
	}
	return -1
}

// StreamLeader returns the index of the node leading stream of account ("$G" when the servers
// have no accounts configured), or -1 if no running node leads it.
func (c *Cluster) StreamLeader(account, stream string) int {
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
func (c *Cluster) ConsumerLeader(account, stream, consumer string) int {
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
		return errors.New(subject + ": not successful: " + string(m.Data))
	}
	return nil
}

// ConsumerStepDown asks the consumer's leader to step down through the JetStream API
// ($JS.API.CONSUMER.LEADER.STEPDOWN.<stream>.<consumer>); another replica takes over.
func ConsumerStepDown(nc *nats.Conn, stream, consumer string) error {
	return stepDown(nc, fmt.Sprintf("$JS.API.CONSUMER.LEADER.STEPDOWN.%s.%s", stream, consumer))
}
