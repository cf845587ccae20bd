package main

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/idemproxy/idemproxy/redisstore"
)

// extProcService is the name Envoy's gRPC health checks can ask for.
const extProcService = "envoy.service.ext_proc.v3.ExternalProcessor"

// healthChecker asks Redis every interval whether it answers and whether it
// can be trusted: a Redis that may evict keys under memory pressure can drop
// a lock or a stored response, and a retry then runs twice. It reports
// SERVING only while Redis answers and keeps what it is given; without that
// every keyed request would get a 503, so a balancer should prefer another
// replica. It is also the processor's StoreGate.
//
// On a cluster it asks every primary, and stays ready while at least one
// serves (answers, is a primary, and sees cluster_state:ok): every
// idemproxy replica sees the same Redis, so failing readiness for one
// failed shard would take all of them out of service at once, and with
// them the keys the other shards still serve. A key whose shard is down
// gets 503 on its own, and idemproxy_redis_primaries says which are down.
type healthChecker struct {
	redis         refresher
	hs            *health.Server
	interval      time.Duration
	timeout       time.Duration
	allowEvicting bool
	minReplicas   int
	allReplicas   bool
	probeChannel  string // under --redis-prefix, for the channel ACL check
	log           *slog.Logger
	gauges        healthGauges

	ready   atomic.Bool
	closing atomic.Bool
	mu      sync.Mutex
	unsafe  error // why the store must not be used; nil when it may
	// last results, only touched by the run goroutine, to log changes once
	checked     bool
	lastErr     string
	lastDown    string
	lastShort   string
	lastPolicy  string
	lastPersist string
	lastChannel string
	lastView    string
}

// refresher reads every primary's facts (*redisstore.Topology).
type refresher interface {
	Refresh(ctx context.Context, probe string) (redisstore.Facts, error)
	Kicked() <-chan struct{}
}

// errNotChecked refuses keyed requests until Redis's eviction policy has
// been read once: unknown is not safe.
var errNotChecked = errors.New("the maxmemory-policy of Redis has not been read yet")

func newHealthChecker(rdb refresher, hs *health.Server, s settings, reg prometheus.Registerer, log *slog.Logger) (*healthChecker, error) {
	g, err := newHealthGauges(reg)
	if err != nil {
		return nil, err
	}
	c := &healthChecker{redis: rdb, hs: hs, interval: s.HealthInterval, timeout: s.RedisTimeout,
		allowEvicting: s.AllowEvicting, minReplicas: s.MinReplicas, allReplicas: s.AllReplicas, probeChannel: s.RedisPrefix + "channel-check",
		log: log, gauges: g, unsafe: errNotChecked}
	c.set(false)
	return c, nil
}

// run checks at once, then every interval, until ctx ends; and at once
// when a durable write found the view of replicas out of date (a
// failover), at most every interval/10.
func (c *healthChecker) run(ctx context.Context) {
	t := time.NewTicker(c.interval)
	defer t.Stop()
	for {
		c.check(ctx)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-c.redis.Kicked():
			if !sleepCtx(ctx, c.interval/10) {
				return
			}
		}
	}
}

// sleepCtx waits d unless ctx ends first; it reports whether it waited.
func sleepCtx(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

func (c *healthChecker) check(ctx context.Context) {
	pctx, cancel := context.WithTimeout(ctx, c.timeout)
	facts, err := c.redis.Refresh(pctx, c.probeChannel)
	cancel()
	if ctx.Err() != nil || c.closing.Load() {
		return
	}
	serving, down := redisstore.Serving(facts.Nodes)
	if err == nil && len(serving) == 0 {
		err = down[0].Err
	}
	c.gauges.setPrimaries(len(serving), len(down))
	// Log changes, and the first result: a Redis that refuses us from the
	// start (wrong password, TLS) must say why at once.
	if errText := fmt.Sprint(err); errText != c.lastErr || !c.checked {
		c.checked, c.lastErr = true, errText
		if err == nil {
			c.log.Info("redis reachable")
		} else {
			c.log.Error("redis unreachable; not serving", "error", err)
		}
	}
	if err != nil {
		c.set(false)
		return
	}
	c.noteDown(down)
	c.noteView(facts.ViewErr)
	c.noteReplicas(serving)
	c.noteChannels(serving)
	c.notePersistence(weakestPersistence(serving))
	unsafe := c.notePolicy(evictingPolicy(serving))
	c.mu.Lock()
	c.unsafe = unsafe
	c.mu.Unlock()
	c.set(unsafe == nil)
}

// noteDown logs each change of the set of primaries that do not serve,
// while others do (a cluster with a failed shard).
func (c *healthChecker) noteDown(down []redisstore.NodeFacts) {
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
func (c *healthChecker) noteView(err error) {
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
func (c *healthChecker) noteReplicas(serving []redisstore.NodeFacts) {
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
func (c *healthChecker) noteChannels(serving []redisstore.NodeFacts) {
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
func (c *healthChecker) notePolicy(policy string) error {
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
func (c *healthChecker) notePersistence(kind string) {
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

func (c *healthChecker) set(ok bool) {
	c.ready.Store(ok)
	st := healthpb.HealthCheckResponse_NOT_SERVING
	c.gauges.ready.Set(0)
	if ok {
		st = healthpb.HealthCheckResponse_SERVING
		c.gauges.ready.Set(1)
	}
	c.hs.SetServingStatus("", st)
	c.hs.SetServingStatus(extProcService, st)
}

// shutdown reports NOT_SERVING for good, so balancers drain us first.
func (c *healthChecker) shutdown() {
	c.closing.Store(true)
	c.ready.Store(false)
	c.gauges.ready.Set(0)
	c.hs.Shutdown()
}

// Ready reports whether Redis answered the last check and may be trusted.
func (c *healthChecker) Ready() bool { return c.ready.Load() }

// Usable implements processor.StoreGate: nil unless Redis's eviction
// policy (or not knowing it yet) makes the store unsafe. A Redis that does
// not answer is not refused here: the store call itself fails then.
func (c *healthChecker) Usable() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.unsafe
}

// evictingPolicy is the first policy among nodes that is not noeviction,
// else "noeviction": one evicting primary can drop the keys in its slots.
func evictingPolicy(nodes []redisstore.NodeFacts) string {
	for _, n := range nodes {
		if n.Policy != "noeviction" {
			return n.Policy
		}
	}
	return "noeviction"
}

// weakestPersistence is the persistence that forgets most among nodes:
// a restart of that primary decides what is lost.
func weakestPersistence(nodes []redisstore.NodeFacts) string {
	rank := map[string]int{"none": 0, "unknown": 1, "rdb": 2, "aof": 3}
	weakest := "aof"
	for _, n := range nodes {
		if rank[n.Persist] < rank[weakest] {
			weakest = n.Persist
		}
	}
	return weakest
}
