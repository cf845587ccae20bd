package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

// extProcService is the name Envoy's gRPC health checks can ask for.
const extProcService = "envoy.service.ext_proc.v3.ExternalProcessor"

// healthChecker asks Redis every interval whether it answers and whether it
// can be trusted: a Redis that may evict keys under memory pressure can drop
// a lock or a stored response, and a retry then runs twice. It reports
// SERVING only while Redis answers and keeps what it is given; without that
// every keyed request would get a 503, so a balancer should prefer another
// replica. It is also the processor's StoreGate.
type healthChecker struct {
	rdb           redis.Cmdable
	hs            *health.Server
	interval      time.Duration
	timeout       time.Duration
	allowEvicting bool
	log           *slog.Logger
	gauges        healthGauges

	ready   atomic.Bool
	closing atomic.Bool
	mu      sync.Mutex
	unsafe  error // why the store must not be used; nil when it may
	// last results, only touched by the run goroutine, to log changes once
	checked     bool
	lastErr     string
	lastPolicy  string
	lastPersist string
}

// errNotChecked refuses keyed requests until Redis's eviction policy has
// been read once: unknown is not safe.
var errNotChecked = errors.New("the maxmemory-policy of Redis has not been read yet")

func newHealthChecker(rdb redis.Cmdable, hs *health.Server, s settings, reg prometheus.Registerer, log *slog.Logger) (*healthChecker, error) {
	g, err := newHealthGauges(reg)
	if err != nil {
		return nil, err
	}
	c := &healthChecker{rdb: rdb, hs: hs, interval: s.HealthInterval, timeout: s.RedisTimeout,
		allowEvicting: s.AllowEvicting, log: log, gauges: g, unsafe: errNotChecked}
	c.set(false)
	return c, nil
}

// run checks at once, then every interval, until ctx ends.
func (c *healthChecker) run(ctx context.Context) {
	t := time.NewTicker(c.interval)
	defer t.Stop()
	for {
		c.check(ctx)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// redisFacts is what one health check learnt.
type redisFacts struct {
	policy  string // maxmemory_policy
	persist string // aof, rdb, none, unknown
}

func (c *healthChecker) check(ctx context.Context) {
	pctx, cancel := context.WithTimeout(ctx, c.timeout)
	facts, err := c.ask(pctx)
	cancel()
	if ctx.Err() != nil || c.closing.Load() {
		return
	}
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
	c.notePersistence(facts.persist)
	unsafe := c.notePolicy(facts.policy)
	c.mu.Lock()
	c.unsafe = unsafe
	c.mu.Unlock()
	c.set(unsafe == nil)
}

// ask reads the eviction policy and persistence in one round trip. INFO
// works where CONFIG is disabled (managed Redis); CONFIG GET save only
// refines "no AOF" into RDB or nothing, and may be refused.
func (c *healthChecker) ask(ctx context.Context) (redisFacts, error) {
	var info *redis.StringCmd
	var save *redis.MapStringStringCmd
	_, err := c.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		info = p.Info(ctx, "memory", "persistence")
		save = p.ConfigGet(ctx, "save")
		return nil
	})
	if err := info.Err(); err != nil {
		return redisFacts{}, err
	}
	_ = err // CONFIG GET's own failure is not a failure of Redis
	fields := parseInfo(info.Val())
	f := redisFacts{policy: fields["maxmemory_policy"], persist: "unknown"}
	switch {
	case fields["aof_enabled"] == "1":
		f.persist = "aof"
	case save.Err() != nil:
	case save.Val()["save"] != "":
		f.persist = "rdb"
	default:
		f.persist = "none"
	}
	if f.policy == "" {
		return f, errors.New("INFO memory has no maxmemory_policy")
	}
	return f, nil
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
