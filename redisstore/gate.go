package redisstore

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Gate asks Redis every interval whether it answers and whether it can be
// trusted: a Redis that may evict keys under memory pressure can drop a
// lock or a stored response, and a retry then runs twice. It reports
// ready only while Redis answers and keeps what it is given; without that
// every keyed request would get a 503, so a balancer should prefer another
// replica. It is also the processor's StoreGate (Usable).
//
// On a cluster it asks every primary, and stays ready while at least one
// serves (answers, is a primary, and sees cluster_state:ok): every
// idemproxy replica sees the same Redis, so failing readiness for one
// failed shard would take all of them out of service at once, and with
// them the keys the other shards still serve. A key whose shard is down
// gets 503 on its own, and idemproxy_redis_primaries says which are down.
type Gate struct {
	redis         FactSource
	report        func(ready bool)
	interval      time.Duration
	timeout       time.Duration
	allowEvicting bool
	minReplicas   int
	allReplicas   bool
	prefix        string
	probeChannel  string // under the key prefix, for the channel ACL check
	log           *slog.Logger
	gauges        gateGauges
	markers       *Markers
	resets        *resetWatch

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

// FactSource reads every primary's facts and writes the store-reset
// markers; *Topology is the one.
type FactSource interface {
	Refresh(ctx context.Context, probe Probe) (Facts, error)
	Kicked() <-chan struct{}
	markerStore
}

// GateOptions configure a Gate.
type GateOptions struct {
	Interval      time.Duration // how often Redis is asked (--health-interval)
	Timeout       time.Duration // bound on one check (--redis-timeout)
	AllowEvicting bool          // serve under an evicting maxmemory-policy
	MinReplicas   int           // replicas a write waits for (a count)
	AllReplicas   bool          // a write waits for every promotable replica
	Prefix        string        // the key prefix: the ACL probe publishes under it
	Registerer    prometheus.Registerer
	Logger        *slog.Logger
	// Report is told the readiness after every check, and false at once
	// (the gRPC health service); nil: nobody.
	Report func(ready bool)
	// Markers, when set, are the store-reset markers the check reads and
	// writes (marker.go, resets.go): give the Store the same.
	Markers *Markers
	// Retention is how long after a store reset the keys of the primary
	// stay held, unless acknowledged (--retention).
	Retention time.Duration
	// AcceptResets notes and logs a store reset but holds nothing
	// (--on-store-reset=accept: MAY RUN TWICE).
	AcceptResets bool
}

// markerWriteTimeout bounds the check's marker writes, at least.
const markerWriteTimeout = 5 * time.Second

// errNotChecked refuses keyed requests until Redis's eviction policy has
// been read once: unknown is not safe.
var errNotChecked = errors.New("the maxmemory-policy of Redis has not been read yet")

// NewGate registers the gate's gauges and starts not ready; Run checks.
func NewGate(src FactSource, o GateOptions) (*Gate, error) {
	g, err := newGateGauges(o.Registerer)
	if err != nil {
		return nil, err
	}
	c := &Gate{redis: src, report: o.Report, interval: o.Interval, timeout: o.Timeout,
		allowEvicting: o.AllowEvicting, minReplicas: o.MinReplicas, allReplicas: o.AllReplicas, prefix: cmp.Or(o.Prefix, DefaultPrefix), probeChannel: o.Prefix + "channel-check",
		log: o.Logger, gauges: g, unsafe: errNotChecked, markers: o.Markers}
	c.resets = newResetWatch(o.Markers, o.Retention, o.AcceptResets, o.Logger, g)
	if c.report == nil {
		c.report = func(bool) {}
	}
	c.set(false)
	return c, nil
}

// Run checks at once, then every interval, until ctx ends; and at once
// when a durable write found the view of replicas out of date (a
// failover), at most every interval/10.
func (c *Gate) Run(ctx context.Context) {
	t := time.NewTicker(c.interval)
	defer t.Stop()
	for {
		c.check(ctx)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-c.redis.Kicked():
			if !sleep(ctx, c.interval/10) {
				return
			}
		}
	}
}

func (c *Gate) check(ctx context.Context) {
	pctx, cancel := context.WithTimeout(ctx, c.timeout)
	facts, err := c.redis.Refresh(pctx, Probe{Channel: c.probeChannel, Markers: c.markers})
	cancel()
	if ctx.Err() != nil || c.closing.Load() {
		return
	}
	serving, down := Serving(facts.Nodes)
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
	// Writing a new cluster's markers (one per slot) takes longer than a
	// read; it happens once.
	mctx, cancel := context.WithTimeout(ctx, max(c.timeout, markerWriteTimeout))
	c.resets.check(mctx, c.redis, serving)
	cancel()
	unsafe := c.notePolicy(evictingPolicy(serving))
	c.mu.Lock()
	c.unsafe = unsafe
	c.mu.Unlock()
	c.set(unsafe == nil)
}

func (c *Gate) set(ok bool) {
	c.ready.Store(ok)
	c.gauges.ready.Set(0)
	if ok {
		c.gauges.ready.Set(1)
	}
	c.report(ok)
}

// Shutdown reports not ready for good, so balancers drain us first; the
// caller ends what Report feeds (the gRPC health service's Shutdown).
func (c *Gate) Shutdown() {
	c.closing.Store(true)
	c.ready.Store(false)
	c.gauges.ready.Set(0)
}

// Ready reports whether Redis answered the last check and may be trusted.
func (c *Gate) Ready() bool { return c.ready.Load() }

// Usable implements processor.StoreGate: nil unless Redis's eviction
// policy (or not knowing it yet) makes the store unsafe, or the primary of
// key lost its records (an idem.ErrStoreReset, resets.go). A Redis that
// does not answer is not refused here: the store call itself fails then.
func (c *Gate) Usable(key string) error {
	c.mu.Lock()
	unsafe := c.unsafe
	c.mu.Unlock()
	if unsafe != nil {
		return unsafe
	}
	return c.resets.refuses(func() int { return keySlot(recordKey(c.prefix, key)) })
}

// StoreResets lists the primaries held after a store reset.
func (c *Gate) StoreResets() []HeldPrimary { return c.resets.heldNow() }

// AckStoreResets acknowledges every held store reset (an operator's
// POST /admin/v1/store-resets/ack): the keys of those primaries are
// served again, by every process, and a key completed before the reset
// runs again if retried. It returns what it released.
func (c *Gate) AckStoreResets(ctx context.Context) ([]HeldPrimary, error) {
	ctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	return c.resets.ack(ctx, c.redis)
}
