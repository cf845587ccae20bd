package main

import (
	"context"
	"fmt"
	"strconv"
	"time"

	"github.com/idemproxy/idemproxy/internal/cmdstats"
	"github.com/idemproxy/idemproxy/internal/loadgen"
	"github.com/idemproxy/idemproxy/internal/testenv"
)

// Scenario (f)'s idemproxy renews locks every holdHeartbeat, so that its
// short measuring window sees many renewals.
const (
	holdHeartbeat = time.Second
	holdLockTTL   = 3 * time.Second
)

const acquiredSeries = `idemproxy_requests_total{outcome="acquired"}`

// dupResult measures duplicates of keys that are still in flight.
type dupResult struct {
	Holders      int            `json:"holders"`
	Duplicates   int            `json:"duplicates"`
	Statuses     map[string]int `json:"statuses"`
	Non409       int            `json:"non_409"`
	Errors       int            `json:"errors"`
	P50ms        float64        `json:"p50_ms"`
	P99ms        float64        `json:"p99_ms"`
	Redis        cmdstats.Count `json:"redis"`
	RedisPerReq  float64        `json:"redis_round_trips_per_request"`
	HolderNon200 int            `json:"holder_non_200"`
}

// runDuplicates holds a few slow keyed requests (idemproxy's default 10 s
// heartbeat, so no renewal falls in the window), sends duplicates of them,
// each of which must get 409 after one Redis round trip, and lets the
// originals finish.
func (b *bench) runDuplicates(ctx context.Context) (dupResult, error) {
	const holding, perKey, conns = 20, 10, 4
	r := dupResult{Holders: holding, Duplicates: holding * perKey, Statuses: map[string]int{}}
	env, err := b.st.Envoy(ctx, envoyIdem)
	if err != nil {
		return r, err
	}
	reqs := make([][]byte, holding)
	for i := range reqs {
		reqs[i] = slowRequest("", b.nonce+"-dup-"+strconv.Itoa(i), "3s")
	}
	h, err := b.hold(ctx, env, reqs, 30*time.Second, 10*time.Second)
	if err != nil {
		return r, err
	}
	// On the way out after an error, cut the originals; after success
	// they have already finished and this changes nothing.
	defer func() { h.Cut(); h.Wait() }()
	before, err := b.redisCalls(ctx)
	if err != nil {
		return r, err
	}
	res := loadgen.Run(ctx, loadgen.Spec{Addr: env.addr, Conns: conns, Gen: func(dst []byte, c int, seq uint64) []byte {
		if seq >= perKey*holding/conns {
			return nil
		}
		return append(dst, reqs[(int(seq)*conns+c)%holding]...)
	}}, loadgen.Counted())
	after, err := b.redisCalls(ctx)
	if err != nil {
		return r, err
	}
	held, herr := loadgen.CountStatuses(h.Wait())
	r.HolderNon200 = herr + r.Holders - held[200]
	for s, n := range res.Statuses {
		r.Statuses[strconv.Itoa(s)] = n
		if s != 409 {
			r.Non409 += n
		}
	}
	r.Errors = res.Errors
	r.P50ms, r.P99ms = ms(res.Lat.Percentile(50)), ms(res.Lat.Percentile(99))
	r.Redis = cmdstats.Classify(before, after)
	r.RedisPerReq = float64(r.Redis.Requests) / float64(max(res.Completed(), 1))
	return r, b.st.alive()
}

// holdResult is scenario (f): many slow requests in flight at once.
type holdResult struct {
	InFlight         int            `json:"in_flight"`
	RampSeconds      float64        `json:"ramp_seconds"`
	WindowSeconds    float64        `json:"window_seconds"`
	RSSIdleKiB       int64          `json:"rss_idle_kib"`
	RSSHeldKiB       int64          `json:"rss_held_kib"`
	PeakRSSKiB       int64          `json:"peak_rss_kib"`
	GoroutinesIdle   float64        `json:"goroutines_idle"`
	GoroutinesHeld   float64        `json:"goroutines_held"`
	RenewalsPerSec   float64        `json:"redis_renewals_per_second"`
	MetricRenewals   float64        `json:"metric_renewals_per_second"`
	ExpectedPerSec   float64        `json:"expected_renewals_per_second"`
	Redis            cmdstats.Count `json:"redis"`
	ServerCores      float64        `json:"server_cpu_cores"`
	AnsweredEarly    int            `json:"answered_before_cut"`
	DrainSeconds     float64        `json:"drain_seconds"`
	HeartbeatSeconds float64        `json:"heartbeat_seconds"`
}

// runHold holds cfg.inFlight slow requests through a dedicated idemproxy
// with a 1 s heartbeat, measures it while they wait, then cuts them (their
// locks are left to expire, as for any request cut after going upstream).
func (b *bench) runHold(ctx context.Context) (holdResult, error) {
	r := holdResult{InFlight: b.cfg.inFlight, ExpectedPerSec: float64(b.cfg.inFlight) / holdHeartbeat.Seconds(),
		HeartbeatSeconds: holdHeartbeat.Seconds()}
	env, err := b.st.Envoy(ctx, envoyHold)
	if err != nil {
		return r, err
	}
	idem := env.ext
	idle, err := testenv.ProcessMemory(idem.Pid())
	if err != nil {
		return r, err
	}
	r.RSSIdleKiB = idle.RSS
	if r.GoroutinesIdle, err = testenv.ReadMetric(ctx, b.st.http, "http://"+idem.admin+"/metrics", "go_goroutines"); err != nil {
		return r, err
	}
	_ = testenv.ResetPeakRSS(idem.Pid())
	reqs := make([][]byte, b.cfg.inFlight)
	for i := range reqs {
		reqs[i] = slowRequest("", b.nonce+"-hold-"+strconv.Itoa(i), "50s")
	}
	t0 := time.Now()
	h, err := b.hold(ctx, env, reqs, time.Minute, 30*time.Second)
	if err != nil {
		return r, err
	}
	defer func() { h.Cut(); h.Wait() }()
	r.RampSeconds = time.Since(t0).Seconds()
	loadgen.Pause(ctx, b.cfg.warmup) // let the heartbeats spread out
	before, err := b.sample(ctx, env, nil)
	if err != nil {
		return r, err
	}
	loadgen.Pause(ctx, b.cfg.duration)
	after, err := b.sample(ctx, env, nil)
	if err != nil {
		return r, err
	}
	held, err := testenv.ProcessMemory(idem.Pid())
	if err != nil {
		return r, err
	}
	r.RSSHeldKiB, r.PeakRSSKiB, r.GoroutinesHeld = held.RSS, held.Peak, after.metrics["goroutines"]
	wall := after.at.Sub(before.at).Seconds()
	r.WindowSeconds = wall
	r.Redis = cmdstats.Classify(before.redis, after.redis)
	r.RenewalsPerSec = float64(r.Redis.Requests) / wall
	r.MetricRenewals = (after.metrics["renewals"] - before.metrics["renewals"]) / wall
	r.ServerCores = (after.cpu["server"] - before.cpu["server"]).Seconds() / wall

	h.Cut()
	byStatus, _ := loadgen.CountStatuses(h.Wait())
	for _, n := range byStatus {
		r.AnsweredEarly += n
	}
	cut := time.Now()
	if err := b.waitMetric(ctx, idem.admin, "idemproxy_active_streams", 20*time.Second,
		func(v float64) bool { return v == 0 }); err != nil {
		return r, fmt.Errorf("after cutting the held requests: %w", err)
	}
	r.DrainSeconds = time.Since(cut).Seconds()
	return r, b.st.alive()
}
