package main

import (
	"context"
	"log/slog"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

// extProcService is the name Envoy's gRPC health checks can ask for.
const extProcService = "envoy.service.ext_proc.v3.ExternalProcessor"

// healthChecker pings Redis and reports SERVING only while it answers:
// without Redis every keyed request would get a 503, so a balancer should
// prefer another replica.
type healthChecker struct {
	rdb      redis.Cmdable
	hs       *health.Server
	interval time.Duration
	timeout  time.Duration
	log      *slog.Logger
	ready    atomic.Bool
	closing  atomic.Bool
	checked  bool // only the run goroutine touches it
}

func newHealthChecker(rdb redis.Cmdable, hs *health.Server, interval, timeout time.Duration, log *slog.Logger) *healthChecker {
	c := &healthChecker{rdb: rdb, hs: hs, interval: interval, timeout: timeout, log: log}
	c.set(false)
	return c
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

func (c *healthChecker) check(ctx context.Context) {
	pctx, cancel := context.WithTimeout(ctx, c.timeout)
	err := c.rdb.Ping(pctx).Err()
	cancel()
	if ctx.Err() != nil || c.closing.Load() {
		return
	}
	ok := err == nil
	// Log changes, and the first result: a Redis that refuses us from the
	// start (wrong password, TLS) must say why at once.
	if was := c.ready.Load(); was != ok || !c.checked {
		c.checked = true
		if ok {
			c.log.Info("redis reachable; serving")
		} else {
			c.log.Error("redis unreachable; not serving", "error", err)
		}
	}
	c.set(ok)
}

func (c *healthChecker) set(ok bool) {
	c.ready.Store(ok)
	st := healthpb.HealthCheckResponse_NOT_SERVING
	if ok {
		st = healthpb.HealthCheckResponse_SERVING
	}
	c.hs.SetServingStatus("", st)
	c.hs.SetServingStatus(extProcService, st)
}

// shutdown reports NOT_SERVING for good, so balancers drain us first.
func (c *healthChecker) shutdown() {
	c.closing.Store(true)
	c.ready.Store(false)
	c.hs.Shutdown()
}

// Ready reports whether Redis answered the last ping.
func (c *healthChecker) Ready() bool { return c.ready.Load() }
