package redisstore

import (
	"cmp"
	"fmt"
	"strings"
)

// noteDown logs each change of the set of primaries that do not serve,
// while others do (a cluster with a failed shard).
func (c *Gate) noteDown(down []NodeFacts) {
	var addrs []string
	for _, n := range down {
		addrs = append(addrs, n.Addr+": "+n.Err.Error())
	}
	now := strings.Join(addrs, "; ")
	if now == c.lastDown {
		return
	}
	c.lastDown = now
	if now == "" {
		c.log.Info("every redis primary serves again")
		return
	}
	c.log.Error("redis primaries not serving; requests whose keys live there get 503 until a replica takes over, "+
		"the others are served (readiness stays up)", "primaries", now)
}

// noteView logs each change of whether the replicas a failover could
// promote could be read (the sentinels answer).
func (c *Gate) noteView(err error) {
	now := ""
	if err != nil {
		now = err.Error()
	}
	if now == c.lastView {
		return
	}
	c.lastView = now
	if err != nil {
		c.log.Error("the replicas a failover could promote could not be read; the last view read is kept "+
			"(before any was read, new keys are refused)", "error", err)
	} else {
		c.log.Info("the replicas a failover could promote are read again")
	}
}

// noteReplicas logs each change of the primaries whose writes cannot be
// made durable: with --redis-min-replicas all, one of the replicas a
// failover could promote is not connected; with a count, fewer replicas
// are connected. Every lock taken there is refused.
func (c *Gate) noteReplicas(serving []NodeFacts) {
	short, names := 0, []string{}
	for _, n := range serving {
		switch {
		case c.allReplicas && len(n.Offline) > 0:
			short++
			names = append(names, fmt.Sprintf("%s (not connected: %s)", cmp.Or(n.Addr, "primary"), strings.Join(n.Offline, ", ")))
		case !c.allReplicas && n.Replicas < c.minReplicas:
			short++
			names = append(names, fmt.Sprintf("%s (%d)", cmp.Or(n.Addr, "primary"), n.Replicas))
		}
	}
	c.gauges.shortOfReplicas.Set(float64(short))
	now := strings.Join(names, ", ")
	if now == c.lastShort {
		return
	}
	c.lastShort = now
	switch {
	case now != "" && c.allReplicas:
		c.log.Error("redis primaries with replicas a failover could promote that are not connected: new keys there are refused with 503 "+
			"until they are back, or an operator removes them (SENTINEL RESET, CLUSTER FORGET) or gives them replica-priority 0 (Sentinel)",
			"primaries", now)
	case now != "":
		c.log.Error("redis primaries with fewer replicas connected than --redis-min-replicas: new keys there are refused with 503",
			"primaries", now, "min_replicas", c.minReplicas)
	case c.allReplicas || c.minReplicas > 0:
		c.log.Info("every redis primary has its replicas connected")
	}
}

// noteChannels logs each change of the primaries whose ACL user may not
// publish on idemproxy's channels. Nothing is refused for it: the
// settle scripts write anyway, and a waiting duplicate learns of the
// outcome by its re-check instead of within milliseconds.
func (c *Gate) noteChannels(serving []NodeFacts) {
	refused, names := 0, []string{}
	var why error
	for _, n := range serving {
		if n.Channels != nil {
			refused++
			names = append(names, cmp.Or(n.Addr, "primary"))
			why = n.Channels
		}
	}
	c.gauges.channelsRefused.Set(float64(refused))
	now := strings.Join(names, ", ")
	if now == c.lastChannel {
		return
	}
	c.lastChannel = now
	prefix := strings.TrimSuffix(c.probeChannel, "channel-check")
	if now != "" {
		c.log.Error("the redis ACL user may not publish on idemproxy's channels: duplicates that wait for a key "+
			"(--in-progress=wait) learn of its outcome only by the re-check every --wait-recheck, not at once; "+
			"add `&"+prefix+"*` to the user's ACL", "primaries", now, "error", why)
	} else {
		c.log.Info("the redis ACL user may publish on idemproxy's channels again")
	}
}

// notePolicy returns why the store must not be used under policy, and logs
// each change of policy once.
func (c *Gate) notePolicy(policy string) error {
	evicting := policy != "noeviction"
	c.gauges.setEvicting(evicting)
	changed := policy != c.lastPolicy
	c.lastPolicy = policy
	switch {
	case !evicting:
		if changed {
			c.log.Info("redis maxmemory-policy is noeviction; serving", "maxmemory_policy", policy)
		}
		return nil
	case c.allowEvicting:
		if changed {
			c.log.Warn("redis maxmemory-policy evicts keys; serving anyway because of --allow-evicting-redis: "+
				"an evicted lock or stored response lets a retry run twice", "maxmemory_policy", policy)
		}
		return nil
	}
	if changed {
		c.log.Error("redis maxmemory-policy evicts keys: an evicted lock or stored response would let a retried request run twice. "+
			"Keyed requests are refused with 503 and readiness fails until Redis runs with maxmemory-policy noeviction "+
			"(redis.conf `maxmemory-policy noeviction`, `CONFIG SET maxmemory-policy noeviction`, or your provider's parameter group); "+
			"--allow-evicting-redis accepts the risk instead", "maxmemory_policy", policy)
	}
	return fmt.Errorf("redis maxmemory-policy is %s, which may evict idempotency records; it must be noeviction", policy)
}

// notePersistence warns once per change when a restart of Redis would
// forget every key.
func (c *Gate) notePersistence(kind string) {
	c.gauges.setPersistence(kind)
	if kind == c.lastPersist {
		return
	}
	c.lastPersist = kind
	switch kind {
	case "none":
		c.log.Warn("redis has no persistence (no AOF, no RDB save points): a restart of Redis forgets every lock and stored response, "+
			"and retries after it run again; enable appendonly yes", "persistence", kind)
	case "unknown":
		c.log.Info("redis persistence could not be fully read (CONFIG GET refused); AOF is off", "persistence", kind)
	}
}

// evictingPolicy is the first policy among nodes that is not noeviction,
// else "noeviction": one evicting primary can drop the keys in its slots.
func evictingPolicy(nodes []NodeFacts) string {
	for _, n := range nodes {
		if n.Policy != "noeviction" {
			return n.Policy
		}
	}
	return "noeviction"
}

// weakestPersistence is the persistence that forgets most among nodes:
// a restart of that primary decides what is lost.
func weakestPersistence(nodes []NodeFacts) string {
	rank := map[string]int{"none": 0, "unknown": 1, "rdb": 2, "aof": 3}
	weakest := "aof"
	for _, n := range nodes {
		if rank[n.Persist] < rank[weakest] {
			weakest = n.Persist
		}
	}
	return weakest
}
