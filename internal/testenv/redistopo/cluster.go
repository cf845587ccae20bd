package redistopo

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/idemproxy/idemproxy/internal/testenv"
)

// Cluster timing: failovers within seconds, not the production defaults.
const (
	// ClusterReadyTimeout bounds creating the cluster and each wait on it.
	ClusterReadyTimeout = 30 * time.Second
	// ReshardTimeout bounds Cluster.Reshard (slower on Valkey).
	ReshardTimeout = 90 * time.Second
	// clusterBusOffset is where each node's cluster bus listens: port+10000.
	clusterBusOffset = 10000
	// maxClusterPort keeps the bus port a valid port.
	maxClusterPort = 65535 - clusterBusOffset
)

// ClusterOptions configure StartCluster.
type ClusterOptions struct {
	// Bin and CLI are redis-server and redis-cli; "" finds them.
	Bin, CLI string
	// Dir holds the nodes' cluster config files (nodes-NAME-PORT.conf).
	Dir string
	// TLS, if set, gives every node a TLS port too; the nodes replicate
	// and talk on the cluster bus over TLS.
	TLS *TLS
	// Args are added to every node's command line (an ACL user, say).
	Args []string
	// Places, if set, are six test hosts, one node on each (port 7000,
	// bus 17000), so a partition between hosts cuts single nodes off;
	// redis-cli runs on the first. Their Dial must be one.
	Places []Place
}

// placedClusterPort is every placed node's port: each host has its own.
const placedClusterPort = 7000

// Cluster is a Redis Cluster of 3 primaries with one replica each, on
// loopback. Nodes keep their ports (and node ids) across Kill and Restart.
type Cluster struct {
	// Nodes are all six servers; which are primaries changes on failover.
	Nodes []*Server

	cli  string
	view []clusterNode // the last CLUSTER NODES seen before a Kill
	dial Dialer        // how the helpers reach the nodes (Place.Dial)
	wrap Place         // where redis-cli runs
}

// clusterArgs are every node's settings: failure detection in a second
// (node timeout 1 s, a replica always eligible, pings every second), and
// replication without a disk and without waiting. The bus port is set,
// as with TLS on the bus Redis would derive it from the TLS port.
func clusterArgs(o ClusterOptions, name string, port int) []string {
	args := []string{
		"--cluster-enabled", "yes",
		"--cluster-config-file", filepath.Join(o.Dir, fmt.Sprintf("nodes-%s-%d.conf", name, port)),
		"--cluster-port", strconv.Itoa(port + clusterBusOffset),
		"--cluster-node-timeout", "1000", "--cluster-replica-validity-factor", "0",
	}
	if o.TLS != nil {
		args = append(args, "--tls-cluster", "yes")
	}
	args = append(args, replicationArgs...)
	return append(args, o.Args...)
}

// StartCluster starts six nodes, joins them with `redis-cli --cluster
// create`, and waits until every node reports cluster_state:ok, all 16384
// slots are covered and every replica is synced.
func StartCluster(ctx context.Context, o ClusterOptions) (*Cluster, error) {
	if o.CLI == "" {
		var err error
		if o.CLI, err = testenv.FindRedisCLI(); err != nil {
			return nil, err
		}
	}
	if len(o.Places) != 0 && len(o.Places) != 6 {
		return nil, fmt.Errorf("a Cluster is placed on 6 hosts, not %d", len(o.Places))
	}
	c := &Cluster{cli: o.CLI}
	if len(o.Places) > 0 {
		c.dial, c.wrap = o.Places[0].Dial, o.Places[0]
	}
	for i := range 6 {
		s, err := startClusterNode(o, i)
		if s != nil {
			c.Nodes = append(c.Nodes, s)
		}
		if err != nil {
			c.Stop()
			return nil, err
		}
	}
	if err := c.create(ctx); err != nil {
		c.Stop()
		return nil, err
	}
	return c, nil
}

// startClusterNode starts node i on a free port below maxClusterPort whose
// bus port is free too, trying three ports.
func startClusterNode(o ClusterOptions, i int) (*Server, error) {
	name := fmt.Sprintf("cluster-%d", i)
	if len(o.Places) > 0 {
		return StartServer(Options{Bin: o.Bin, Port: placedClusterPort, Args: clusterArgs(o, name, placedClusterPort), Name: name,
			Dir: subdir(o.Dir, name), Place: o.Places[i], TLS: o.TLS})
	}
	var err error
	for range 3 {
		var port int
		if port, err = clusterPort(); err != nil {
			continue
		}
		var s *Server
		s, err = StartServer(Options{Bin: o.Bin, Port: port, Args: clusterArgs(o, name, port), Name: name, Dir: subdir(o.Dir, name), TLS: o.TLS})
		if err == nil {
			return s, nil
		}
	}
	return nil, err
}

// clusterPort finds a free port p < 55535 with p+10000 free as well.
func clusterPort() (int, error) {
	for range 100 {
		p, err := testenv.FreePort()
		if err != nil {
			return 0, err
		}
		if p >= maxClusterPort {
			continue
		}
		l, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(p+clusterBusOffset)))
		if err != nil {
			continue
		}
		l.Close()
		return p, nil
	}
	return 0, errors.New("no free port pair for a cluster node")
}

// create runs redis-cli --cluster create and waits for the cluster.
func (c *Cluster) create(ctx context.Context) error {
	args := []string{"--cluster", "create"}
	for _, s := range c.Nodes {
		args = append(args, s.Addr)
	}
	args = append(args, "--cluster-replicas", "1", "--cluster-yes")
	cctx, cancel := context.WithTimeout(ctx, ClusterReadyTimeout)
	defer cancel()
	if out, err := c.cliCommand(cctx, args...).CombinedOutput(); err != nil {
		return fmt.Errorf("redis-cli --cluster create: %w\n%s\n%s", err, out, c.logTails())
	}
	return c.WaitHealthy(ctx)
}

// cliCommand is redis-cli with args, run where the first node runs.
func (c *Cluster) cliCommand(ctx context.Context, args ...string) *exec.Cmd {
	bin, args := c.wrap.command(c.cli, args)
	return exec.CommandContext(ctx, bin, args...)
}

// logTails are the last lines each node wrote, for an error message.
func (c *Cluster) logTails() string {
	var b strings.Builder
	for _, s := range c.Nodes {
		lines := strings.Split(strings.TrimSpace(s.Output()), "\n")
		fmt.Fprintf(&b, "--- last lines of %s ---\n%s\n", s.Addr, strings.Join(lines[max(0, len(lines)-5):], "\n"))
	}
	return b.String()
}

// Running are the nodes whose process is up.
func (c *Cluster) Running() []*Server {
	var up []*Server
	for _, s := range c.Nodes {
		if s.Running() {
			up = append(up, s)
		}
	}
	return up
}

// Addrs are every node's address, for redis.ClusterOptions.Addrs.
func (c *Cluster) Addrs() []string {
	addrs := make([]string, len(c.Nodes))
	for i, s := range c.Nodes {
		addrs[i] = s.Addr
	}
	return addrs
}

// TLSAddrs are every node's TLS address (ClusterOptions.TLS).
func (c *Cluster) TLSAddrs() []string {
	addrs := make([]string, len(c.Nodes))
	for i, s := range c.Nodes {
		addrs[i] = s.TLSAddr
	}
	return addrs
}

// WaitHealthy waits until every running node says cluster_state:ok with
// all slots covered and every running replica is synced.
func (c *Cluster) WaitHealthy(ctx context.Context) error {
	return testenv.Poll(ctx, ClusterReadyTimeout, func(ctx context.Context) error {
		for _, s := range c.Running() {
			info, err := text(ctx, c.dial, s.Addr, "CLUSTER", "INFO")
			if err != nil {
				return err
			}
			if field(info, "cluster_state") != "ok" || field(info, "cluster_slots_ok") != "16384" {
				return fmt.Errorf("%s: cluster_state %s, slots ok %s", s.Addr, field(info, "cluster_state"), field(info, "cluster_slots_ok"))
			}
			if r, up, err := role(ctx, c.dial, s.Addr); err != nil || (r == "slave" && !up) {
				return fmt.Errorf("%s: replica not synced (%v)", s.Addr, err)
			}
			// The primary's side too: a replica it still streams the
			// first sync to cannot acknowledge a WAIT yet.
			if err := replicasOnline(ctx, c.dial, s.Addr); err != nil {
				return err
			}
		}
		return nil
	})
}

// NewClient returns a cluster client over every node; the caller closes it.
func (c *Cluster) NewClient() *redis.ClusterClient {
	return redis.NewClusterClient(&redis.ClusterOptions{Addrs: c.Addrs(), Dialer: c.dial})
}

// Stop kills every node.
func (c *Cluster) Stop() {
	for _, s := range c.Nodes {
		s.Stop()
	}
}

// node returns the Server at addr.
func (c *Cluster) node(addr string) (*Server, error) {
	for _, s := range c.Nodes {
		if s.Addr == addr {
			return s, nil
		}
	}
	return nil, fmt.Errorf("no cluster node at %s", addr)
}

// NewCluster is StartCluster for a test (skipped under -short): every node
// is stopped in t.Cleanup, its output printed if the test failed.
func NewCluster(t testenv.TB) *Cluster {
	t.Helper()
	return NewClusterWith(t, ClusterOptions{})
}

// NewClusterWith is NewCluster with options; Bin and Dir are the test's.
func NewClusterWith(t testenv.TB, o ClusterOptions) *Cluster {
	t.Helper()
	if o.TLS != nil {
		testenv.NeedsRedisTLS(t)
	}
	o.Bin, o.Dir = testenv.RedisServerBin(t), t.TempDir()
	c, err := StartCluster(t.Context(), o)
	if err != nil {
		t.Fatalf("redistopo: %v", err)
	}
	for _, s := range c.Nodes {
		cleanup(t, s)
	}
	return c
}

// Client returns a cluster client, closed in t.Cleanup.
func (c *Cluster) Client(t testenv.TB) *redis.ClusterClient {
	cc := c.NewClient()
	t.Cleanup(func() { _ = cc.Close() })
	return cc
}
