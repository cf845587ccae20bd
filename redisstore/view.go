package redisstore

// Which replicas must hold a write before it counts as durable.
//
// Redis replication is not consensus: a failover promotes one replica, and
// the others are pointed at it and, when their partial resync is refused,
// copy its data set in full, dropping what they had. So a write that
// `WAIT 1` counted as replicated is lost when the replica that had it is
// not the one promoted (seen in a flapping partition under Sentinel: the
// sentinels promoted r2 while idemproxy, not yet told, wrote a lock to the
// old primary r1, r3 still followed r1 and acknowledged it, then r3
// resynced from r2 and the lock was gone; the retry ran a second time).
// Only a write every promotable replica acknowledged survives every
// failover the topology can perform. That is the set kept here, per
// primary, refreshed with the health check:
//
//   - Sentinel: every data node any answering sentinel knows for the
//     monitored primary (down ones included: a sentinel never forgets one
//     on its own), but the primary they all name, and but replicas every
//     sentinel reports with replica-priority 0 (never promoted). When the
//     sentinels name different primaries, none is excused: nothing is
//     durable until they agree. A write that reached another node than the
//     named primary (go-redis not yet told of a switch, or told before
//     this view) therefore finds that node among the required replicas,
//     where it cannot acknowledge itself: refused, never wrongly durable.
//   - Cluster: per primary, every replica of its shard in any node's view
//     (CLUSTER SHARDS, failed ones included). A write to a node that is a
//     primary in no view is refused. Redis Cluster has no remote sign of
//     cluster-replica-no-failover, so every replica counts.
//
// Down replicas count, on purpose: a partition can make a replica look
// down to one side while the other side promotes it. The price is
// availability: while a promotable replica is down or cut off, new keys of
// its primary are refused with 503, until it is back, or an operator
// removes it (SENTINEL RESET, CLUSTER FORGET) or, under Sentinel, gives
// it replica-priority 0.

import (
	"context"
	"errors"
	"fmt"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
)

// ErrNoView reports a durable write refused because the topology's
// replicas are not known (yet, or any longer).
var ErrNoView = errors.New("redisstore: the replicas a failover could promote are not known")

// replicaNode is one replica a write may have to reach: the addresses it
// is known by (ip:port, endpoint:port, the TLS port...), and whether a
// failover may promote it.
type replicaNode struct {
	name       string // for messages: its first address
	aliases    []string
	promotable bool
}

// replicaView is what the last refresh learnt.
type replicaView struct {
	at time.Time
	// sentinel: the data nodes the sentinels know, and the primary they
	// all name ("" when they disagree).
	nodes  []replicaNode
	master string
	// cluster: per primary address (every alias), its shard's replicas.
	shards map[string][]replicaNode
	// cluster: per primary's connect address, the slots it serves (the
	// union of the nodes' accounts).
	slots map[string][]redis.SlotRange
	// online is, per primary address ("" outside a cluster), the
	// addresses of the replicas its INFO listed as online.
	online map[string]map[string]bool
}

// plan is what a durable write to the primary at addr must achieve.
type plan struct {
	required []replicaNode // each must acknowledge
	// offline are required replicas the primary did not list as online
	// at the last refresh: a lock is refused at once.
	offline []string
	// wait is WAIT's count: every replica the primary had online, so
	// that a replica not required (replica-priority 0) cannot take the
	// place of one that is.
	wait int
}

// planFor is the plan of a write to addr ("" outside a cluster).
func (v *replicaView) planFor(mode Mode, addr string) (plan, error) {
	var p plan
	switch mode {
	case ModeSentinel:
		if v.master == "" {
			return p, fmt.Errorf("%w: the sentinels disagree about the primary", ErrNoView)
		}
		for _, n := range v.nodes {
			if n.promotable && !slices.Contains(n.aliases, v.master) {
				p.required = append(p.required, n)
			}
		}
	case ModeCluster:
		shard, ok := v.shards[addr]
		if !ok {
			return p, fmt.Errorf("%w: %s is no primary in the cluster's view", ErrNoView, addr)
		}
		p.required = shard
	default:
		return p, fmt.Errorf("%w: a %s Redis has no failover to plan for", ErrNoView, mode)
	}
	online := v.online[addr]
	if mode == ModeSentinel {
		online = v.online[""]
	}
	for _, n := range p.required {
		if !n.in(online) {
			p.offline = append(p.offline, n.name)
		}
	}
	p.wait = max(len(online), len(p.required))
	return p, nil
}

// in reports whether one of n's addresses is in set.
func (n replicaNode) in(set map[string]bool) bool {
	for _, a := range n.aliases {
		if set[a] {
			return true
		}
	}
	return false
}

// sentinelView asks every sentinel, concurrently, for the primary and its
// replicas. At least one must answer.
func (t *Topology) sentinelView(ctx context.Context) (*replicaView, error) {
	type answer struct {
		master   map[string]string
		replicas []map[string]string
		err      error
	}
	answers := make([]answer, len(t.seeds))
	var wg sync.WaitGroup
	for i, addr := range t.seeds {
		wg.Go(func() {
			c, a := t.node(addr), &answers[i]
			var reply any
			if reply, a.err = c.Do(ctx, "sentinel", "master", t.masterName).Result(); a.err == nil {
				a.master = pairs(reply)
				reply, a.err = c.Do(ctx, "sentinel", "replicas", t.masterName).Result()
				list, _ := reply.([]any)
				for _, r := range list {
					a.replicas = append(a.replicas, pairs(r))
				}
			}
			if a.err != nil {
				a.err = fmt.Errorf("sentinel %s: %w", addr, a.err)
			}
		})
	}
	wg.Wait()
	v := &replicaView{at: time.Now()}
	priority := map[string]bool{} // address -> promotable by some sentinel's report
	var errs []error
	masters := map[string]bool{}
	for _, a := range answers {
		if a.err != nil {
			errs = append(errs, a.err)
			continue
		}
		m := net.JoinHostPort(a.master["ip"], a.master["port"])
		masters[m] = true
		priority[m] = true
		for _, r := range a.replicas {
			addr := net.JoinHostPort(r["ip"], r["port"])
			priority[addr] = priority[addr] || r["slave-priority"] != "0"
		}
	}
	if len(masters) == 0 {
		return nil, fmt.Errorf("no sentinel answered: %w", errors.Join(errs...))
	}
	if len(masters) == 1 {
		for m := range masters {
			v.master = m
		}
	}
	for addr, promotable := range priority {
		v.nodes = append(v.nodes, replicaNode{name: addr, aliases: []string{addr}, promotable: promotable})
	}
	slices.SortFunc(v.nodes, func(a, b replicaNode) int { return strings.Compare(a.name, b.name) })
	return v, nil
}

// pairs reads a flat [field, value, ...] reply (RESP2) or a map (RESP3).
func pairs(reply any) map[string]string {
	out := map[string]string{}
	switch r := reply.(type) {
	case []any:
		for i := 0; i+1 < len(r); i += 2 {
			out[fmt.Sprint(r[i])] = fmt.Sprint(r[i+1])
		}
	case map[any]any:
		for k, v := range r {
			out[fmt.Sprint(k)] = fmt.Sprint(v)
		}
	}
	return out
}

// clusterView asks every node it knows of (the URL's, and every node of
// the last view) for CLUSTER SHARDS, concurrently, each bounded by ctx, so
// an unreachable node costs its own answer, not the others'. It returns
// the union of the answers, and the address to reach each primary at.
func (t *Topology) clusterView(ctx context.Context, tlsOn bool) (*replicaView, []string, error) {
	addrs := slices.Clone(t.seeds)
	if last := t.view.Load(); last != nil {
		for a := range last.shards {
			addrs = append(addrs, a)
		}
		for _, nodes := range last.shards {
			for _, n := range nodes {
				addrs = append(addrs, n.name)
			}
		}
	}
	slices.Sort(addrs)
	addrs = slices.Compact(addrs)
	views := make([][]redis.ClusterShard, len(addrs))
	errs := make([]error, len(addrs))
	var wg sync.WaitGroup
	for i, addr := range addrs {
		wg.Go(func() {
			views[i], errs[i] = t.node(addr).ClusterShards(ctx).Result()
			if errs[i] != nil {
				errs[i] = fmt.Errorf("%s: %w", addr, errs[i])
			}
		})
	}
	wg.Wait()
	v := &replicaView{at: time.Now(), shards: map[string][]replicaNode{}, slots: map[string][]redis.SlotRange{}}
	primaries := map[string]bool{}
	answered := 0
	for i, shards := range views {
		if errs[i] != nil {
			continue
		}
		answered++
		for _, sh := range shards {
			if len(sh.Slots) > 0 {
				v.addShard(sh, tlsOn, primaries)
			}
		}
	}
	if answered == 0 {
		return nil, nil, fmt.Errorf("no cluster node answered CLUSTER SHARDS: %w", errors.Join(errs...))
	}
	list := make([]string, 0, len(primaries))
	for a := range primaries {
		list = append(list, a)
	}
	slices.Sort(list)
	return v, list, nil
}

// addShard adds one node's account of a shard: its primary's replicas,
// under every address of the primary, merged with other accounts.
func (v *replicaView) addShard(sh redis.ClusterShard, tlsOn bool, primaries map[string]bool) {
	var primary *redis.Node
	var replicas []replicaNode
	for i := range sh.Nodes {
		n := &sh.Nodes[i]
		if n.Role == "master" {
			primary = n
			continue
		}
		al := aliases(*n)
		replicas = append(replicas, replicaNode{name: connectAddr(*n, tlsOn), aliases: al, promotable: true})
	}
	if primary == nil {
		return
	}
	addr := connectAddr(*primary, tlsOn)
	primaries[addr] = true
	for _, r := range sh.Slots {
		if !slices.Contains(v.slots[addr], r) {
			v.slots[addr] = append(v.slots[addr], r)
		}
	}
	for _, a := range aliases(*primary) {
		merged := v.shards[a]
		for _, r := range replicas {
			if !slices.ContainsFunc(merged, func(m replicaNode) bool { return m.name == r.name }) {
				merged = append(merged, r)
			}
		}
		if merged == nil {
			merged = []replicaNode{} // a primary without replicas is still a primary
		}
		v.shards[a] = merged
	}
}

// aliases are the addresses a cluster node may be known by.
func aliases(n redis.Node) []string {
	var out []string
	for _, host := range []string{n.IP, n.Endpoint, n.Hostname} {
		for _, port := range []int64{n.Port, n.TLSPort} {
			if host != "" && host != "?" && port > 0 {
				out = append(out, net.JoinHostPort(host, strconv.FormatInt(port, 10)))
			}
		}
	}
	slices.Sort(out)
	return slices.Compact(out)
}

// connectAddr is where a client reaches n: its endpoint (the address
// CLUSTER SLOTS gives go-redis), at its TLS port over TLS.
func connectAddr(n redis.Node, tlsOn bool) string {
	host := n.Endpoint
	if host == "" || host == "?" {
		host = n.IP
	}
	port := n.Port
	if tlsOn && n.TLSPort > 0 || port == 0 {
		port = n.TLSPort
	}
	return net.JoinHostPort(host, strconv.FormatInt(port, 10))
}
