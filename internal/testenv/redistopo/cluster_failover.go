package redistopo

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"

	"github.com/idemproxy/idemproxy/internal/testenv"
)

// clusterNode is one line of CLUSTER NODES.
type clusterNode struct {
	id, addr, master string // master: the primary's id, "-" for a primary
	flags            []string
	slots            []string // ranges such as "0-5460"
}

func (n clusterNode) primary() bool { return slices.Contains(n.flags, "master") }

// clusterNodes reads CLUSTER NODES from the node at addr.
func clusterNodes(ctx context.Context, dial Dialer, addr string) ([]clusterNode, error) {
	out, err := text(ctx, dial, addr, "CLUSTER", "NODES")
	if err != nil {
		return nil, err
	}
	var nodes []clusterNode
	for line := range strings.SplitSeq(strings.TrimSpace(out), "\n") {
		f := strings.Fields(line)
		if len(f) < 8 {
			return nil, fmt.Errorf("CLUSTER NODES line %q", line)
		}
		hostPort, _, _ := strings.Cut(f[1], "@")
		nodes = append(nodes, clusterNode{id: f[0], addr: hostPort, flags: strings.Split(f[2], ","), master: f[3], slots: f[8:]})
	}
	return nodes, nil
}

// liveView is CLUSTER NODES from the first running node.
func (c *Cluster) liveView(ctx context.Context) ([]clusterNode, error) {
	up := c.Running()
	if len(up) == 0 {
		return nil, errors.New("no cluster node is running")
	}
	return clusterNodes(ctx, c.dial, up[0].Addr)
}

// PrimaryForKey returns the node that serves key's hash slot now.
func (c *Cluster) PrimaryForKey(ctx context.Context, key string) (*Server, error) {
	up := c.Running()
	if len(up) == 0 {
		return nil, errors.New("no cluster node is running")
	}
	v, err := do(ctx, c.dial, up[0].Addr, "CLUSTER", "KEYSLOT", key)
	if err != nil {
		return nil, err
	}
	return c.PrimaryForSlot(ctx, int(v.(int64)))
}

// PrimaryForSlot returns the node that serves slot now.
func (c *Cluster) PrimaryForSlot(ctx context.Context, slot int) (*Server, error) {
	view, err := c.liveView(ctx)
	if err != nil {
		return nil, err
	}
	for _, n := range view {
		if n.primary() && !slices.Contains(n.flags, "fail") && covers(n.slots, slot) {
			return c.node(n.addr)
		}
	}
	return nil, fmt.Errorf("no primary serves slot %d", slot)
}

// covers reports whether the CLUSTER NODES slot ranges include slot.
func covers(ranges []string, slot int) bool {
	for _, r := range ranges {
		lo, hi, ok := strings.Cut(r, "-")
		if !ok {
			hi = lo
		}
		l, err1 := strconv.Atoi(lo)
		h, err2 := strconv.Atoi(hi)
		if err1 == nil && err2 == nil && l <= slot && slot <= h {
			return true
		}
	}
	return false
}

// Kill SIGKILLs node s, remembering the cluster's view just before, so
// WaitPromoted knows its replicas and Restart its role.
func (c *Cluster) Kill(ctx context.Context, s *Server) error {
	view, err := c.liveView(ctx)
	if err != nil {
		return err
	}
	c.view = view
	s.Stop()
	return nil
}

// WaitPromoted waits (up to ClusterReadyTimeout) until a replica of the killed primary old has become
// a primary and the rest of the cluster is healthy again, and returns it.
func (c *Cluster) WaitPromoted(ctx context.Context, old *Server) (*Server, error) {
	var oldID string
	var replicas []string
	for _, n := range c.view {
		if n.addr == old.Addr {
			oldID = n.id
		}
	}
	for _, n := range c.view {
		if n.master == oldID && oldID != "" {
			replicas = append(replicas, n.addr)
		}
	}
	if len(replicas) == 0 {
		return nil, fmt.Errorf("%s had no replica when it was killed (Kill it through the Cluster)", old.Addr)
	}
	var promoted *Server
	err := testenv.Poll(ctx, ClusterReadyTimeout, func(ctx context.Context) error {
		for _, addr := range replicas {
			if r, _, err := role(ctx, c.dial, addr); err == nil && r == "master" {
				promoted, err = c.node(addr)
				return err
			}
		}
		return fmt.Errorf("no replica of %s (%v) is a primary yet", old.Addr, replicas)
	})
	if err != nil {
		return nil, err
	}
	return promoted, c.WaitHealthy(ctx)
}

// Restart starts the killed node s again, empty, and waits until the
// cluster is healthy with it. It refuses while s still serves slots in the
// cluster's view: an empty primary would come back and its replica would
// copy the empty data set.
func (c *Cluster) Restart(ctx context.Context, s *Server) error {
	view, err := c.liveView(ctx)
	if err != nil {
		return err
	}
	for _, n := range view {
		if n.addr == s.Addr && n.primary() && len(n.slots) > 0 {
			return fmt.Errorf("%s still serves slots %v: restarting it empty before a replica took over would wipe that replica; WaitPromoted first", s.Addr, n.slots)
		}
	}
	if err := s.restart(); err != nil {
		return err
	}
	return c.WaitHealthy(ctx)
}

// NodeID is the cluster node id of s (CLUSTER MYID).
func (c *Cluster) NodeID(ctx context.Context, s *Server) (string, error) {
	return text(ctx, c.dial, s.Addr, "CLUSTER", "MYID")
}

// Reshard moves n slots, with their keys, from primary from to primary to
// with `redis-cli --cluster reshard`, as an operator would, and returns
// once redis-cli is done. Requests may run meanwhile: keys of a slot in
// migration answer ASK, and TRYAGAIN for a multi-key command split
// between the two nodes.
func (c *Cluster) Reshard(ctx context.Context, from, to *Server, n int) error {
	fromID, err := c.NodeID(ctx, from)
	if err != nil {
		return err
	}
	toID, err := c.NodeID(ctx, to)
	if err != nil {
		return err
	}
	// ReshardTimeout, not ClusterReadyTimeout: Valkey 8's CLUSTER SETSLOT
	// waits for the replicas, so valkey-cli moves slots slower than
	// redis-cli (1000 empty slots: 3.9 s against 1.5 s here), and more so
	// under the tests' load.
	cctx, cancel := context.WithTimeout(ctx, ReshardTimeout)
	defer cancel()
	out, err := c.cliCommand(cctx, "--cluster", "reshard", from.Addr,
		"--cluster-from", fromID, "--cluster-to", toID, "--cluster-slots", strconv.Itoa(n),
		"--cluster-yes", "--cluster-pipeline", "10").CombinedOutput()
	if err != nil {
		return fmt.Errorf("redis-cli --cluster reshard: %w\n%s", err, out)
	}
	return nil
}

// Primaries are the running nodes that serve slots now.
func (c *Cluster) Primaries(ctx context.Context) ([]*Server, error) {
	view, err := c.liveView(ctx)
	if err != nil {
		return nil, err
	}
	var out []*Server
	for _, n := range view {
		if n.primary() && !slices.Contains(n.flags, "fail") && len(n.slots) > 0 {
			s, err := c.node(n.addr)
			if err != nil {
				return nil, err
			}
			out = append(out, s)
		}
	}
	return out, nil
}
