package main

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"

	"github.com/redis/go-redis/v9"
)

// nodeFacts is what one health check learnt from one primary.
type nodeFacts struct {
	addr     string // "" outside a cluster
	err      error  // it did not answer, or does not serve
	policy   string // maxmemory_policy
	persist  string // aof, rdb, none, unknown
	replicas int    // connected_slaves
	// channels is why the ACL user may not publish on idemproxy's
	// channels (NOPERM), nil when it may or the check said nothing.
	channels error
}

// ask reads every primary's facts, concurrently on a cluster. An error
// means no primary could even be listed.
func (c *healthChecker) ask(ctx context.Context) ([]nodeFacts, error) {
	var (
		mu    sync.Mutex
		nodes []nodeFacts
	)
	err := c.redis.eachPrimary(ctx, func(ctx context.Context, addr string, rdb redis.Cmdable) error {
		f := askNode(ctx, rdb, addr != "", c.probeChannel)
		f.addr = addr
		mu.Lock()
		nodes = append(nodes, f)
		mu.Unlock()
		return nil
	})
	if err == nil && len(nodes) == 0 {
		err = errors.New("the cluster lists no primary")
	}
	slices.SortFunc(nodes, func(a, b nodeFacts) int { return strings.Compare(a.addr, b.addr) })
	return nodes, err
}

// askNode reads one primary's eviction policy, persistence, role and
// replicas in one round trip. INFO works where CONFIG is disabled (managed
// Redis); CONFIG GET save only refines "no AOF" into RDB or nothing, and
// may be refused. On a cluster node, CLUSTER INFO says whether the cluster
// lets it serve: with a slot uncovered, every node refuses (CLUSTERDOWN)
// unless cluster-require-full-coverage is off. A PUBLISH on probe (a
// channel under the key prefix, which nobody subscribes to) tells whether
// the ACL user may use the channels that wake waiting duplicates.
func askNode(ctx context.Context, rdb redis.Cmdable, clustered bool, probe string) nodeFacts {
	var info, cinfo *redis.StringCmd
	var save *redis.MapStringStringCmd
	var pub *redis.IntCmd
	_, _ = rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		info = p.Info(ctx, "memory", "persistence", "replication")
		save = p.ConfigGet(ctx, "save")
		pub = p.Publish(ctx, probe, "")
		if clustered {
			cinfo = p.ClusterInfo(ctx)
		}
		return nil
	})
	if err := info.Err(); err != nil {
		return nodeFacts{err: err}
	}
	fields := parseInfo(info.Val())
	f := nodeFacts{policy: fields["maxmemory_policy"], persist: "unknown"}
	if err := pub.Err(); err != nil && strings.HasPrefix(err.Error(), "NOPERM") {
		f.channels = err
	}
	f.replicas, _ = strconv.Atoi(fields["connected_slaves"])
	switch {
	case fields["aof_enabled"] == "1":
		f.persist = "aof"
	case save.Err() != nil:
	case save.Val()["save"] != "":
		f.persist = "rdb"
	default:
		f.persist = "none"
	}
	switch {
	case f.policy == "":
		f.err = errors.New("INFO memory has no maxmemory_policy")
	case fields["role"] != "master":
		// Writes would fail with READONLY: a URL naming a replica, or a
		// Sentinel client not yet told of a failover.
		f.err = fmt.Errorf("redis is a replica (role %s), not a primary", fields["role"])
	case clustered && cinfo.Err() != nil:
		f.err = cinfo.Err()
	case clustered && parseInfo(cinfo.Val())["cluster_state"] != "ok":
		f.err = fmt.Errorf("cluster_state is %s", parseInfo(cinfo.Val())["cluster_state"])
	}
	return f
}

// split sorts primaries into those that serve and those that do not.
func split(nodes []nodeFacts) (serving, down []nodeFacts) {
	for _, n := range nodes {
		if n.err == nil {
			serving = append(serving, n)
		} else {
			down = append(down, n)
		}
	}
	return serving, down
}

// evictingPolicy is the first policy among nodes that is not noeviction,
// else "noeviction": one evicting primary can drop the keys in its slots.
func evictingPolicy(nodes []nodeFacts) string {
	for _, n := range nodes {
		if n.policy != "noeviction" {
			return n.policy
		}
	}
	return "noeviction"
}

// weakestPersistence is the persistence that forgets most among nodes:
// a restart of that primary decides what is lost.
func weakestPersistence(nodes []nodeFacts) string {
	rank := map[string]int{"none": 0, "unknown": 1, "rdb": 2, "aof": 3}
	weakest := "aof"
	for _, n := range nodes {
		if rank[n.persist] < rank[weakest] {
			weakest = n.persist
		}
	}
	return weakest
}
