package main

import (
	"bytes"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/idemproxy/idemproxy/internal/cmdstats"
)

func TestVersionNumber(t *testing.T) {
	require.Equal(t, "1.40.0", versionNumber("/root/.pyenv/versions/3.11.7/bin/envoy  version: 9e5580933739775e8bce696a57a2e1bc99368f23/1.40.0/Clean/RELEASE/BoringSSL"))
	require.Equal(t, "7.0.15", versionNumber("Redis server v=7.0.15 sha=00000000:0 malloc=jemalloc-5.3.0 bits=64"))
	require.Equal(t, "weird", versionNumber("weird"))
}

func row(id, load string, rps, p99, trips float64) phaseResult {
	return phaseResult{Scenario: id, Load: load, RPS: rps, P99ms: p99, RedisPerReq: trips,
		Redis: cmdstats.Count{Requests: int64(trips * 1000)}, TargetRate: 500}
}

func verdicts(gs []goal) map[string]string {
	m := map[string]string{}
	for _, g := range gs {
		m[g.Name] = g.Verdict
	}
	return m
}

func TestReport_Goals(t *testing.T) {
	t.Run("each ratio against its target", func(t *testing.T) {
		cpu := func(p phaseResult, server, redis float64) phaseResult {
			p.ServerCPUPer1k, p.CPUPer1k = server, map[string]float64{"server": server, "redis": redis}
			return p
		}
		low := func(id string, p50, p99 float64) phaseResult {
			p := row(id, "fixed", 300, p99, 0)
			p.TargetRate, p.P50ms = 300, p50
			return p
		}
		r := &report{
			Saturation: []phaseResult{row("a", "saturation", 1000, 5, 0), cpu(row("b", "saturation", 1000, 5, 0), 0.07, 0),
				cpu(row("c", "saturation", 700, 5, 2.01), 0.112, 0.031), row("m", "saturation", 850, 5, 0),
				cpu(row("d", "saturation", 1300, 5, 1), 0.08, 0.01), row("e", "saturation", 990, 5, 0)},
			Fixed: []phaseResult{row("b", "fixed", 500, 2.0, 0), row("c", "fixed", 500, 2.9, 2)},
			Low:   []phaseResult{low("b", 1.0, 2.0), low("c", 1.4, 2.5)},
			Dup:   &dupResult{RedisPerReq: 1},
			Wait:  &waitResult{RedisPerWaiter: 1.06, PerKeyExtra: 6, Waiters: 1000, Replayed: 1000},
		}
		require.Equal(t, map[string]string{
			"throughput c/b (idempotency vs bare ext_proc)":     "MISS", // 0.70
			"throughput m/b (processor over memory: the floor)": "info",
			"idemproxy CPU per new key vs null server (c/b)":    "MISS", // 1.6x
			"idemproxy CPU per replay vs null server (d/b)":     "PASS", // 1.14x
			"Redis CPU per new key (c)":                         "MISS", // 0.031 ms
			"p50(c) - p50(b) at 300 req/s":                      "MISS", // 0.4 ms
			"p99(c) - p99(b) at 300 req/s":                      "PASS", // 0.5 ms
			"p50(c) - p50(b) at 500 req/s":                      "PASS", // 0 ms
			"p99(c) - p99(b) at 500 req/s":                      "PASS", // 0.9 ms
			"throughput d/c (replay vs new key)":                "PASS", // 1.86
			"throughput e/a (no key vs no ext_proc)":            "PASS", // 0.99
			"Redis round trips per request: new key (c)":        "PASS",
			"Redis round trips per request: replay (d)":         "PASS",
			"Redis round trips per request: in-flight dup":      "PASS",
			"Redis round trips per request: no key (e)":         "PASS",
			"Redis round trips per waiting duplicate (wait)":    "PASS",
			"ext_proc streams opened for keyless requests (e)":  "PASS",
		}, verdicts(r.goals()))
	})

	t.Run("a waiter that was not replayed misses", func(t *testing.T) {
		v := verdicts((&report{Wait: &waitResult{RedisPerWaiter: 1.0, PerKeyExtra: 6, Waiters: 200, Replayed: 199}}).goals())
		require.Equal(t, "MISS", v["Redis round trips per waiting duplicate (wait)"])
		v = verdicts((&report{Wait: &waitResult{RedisPerWaiter: 2, PerKeyExtra: 50, Waiters: 1000, Replayed: 1000}}).goals())
		require.Equal(t, "MISS", v["Redis round trips per waiting duplicate (wait)"], "a read per waiter")
	})

	t.Run("a single Redis call without a key misses", func(t *testing.T) {
		e := row("e", "saturation", 1000, 5, 0)
		e.Redis.Requests = 1
		e.ExtProcStreams = 3
		v := verdicts((&report{Saturation: []phaseResult{e}}).goals())
		require.Equal(t, "MISS", v["Redis round trips per request: no key (e)"])
		require.Equal(t, "MISS", v["ext_proc streams opened for keyless requests (e)"])
	})

	t.Run("scenarios not run are n/a", func(t *testing.T) {
		v := verdicts((&report{Saturation: []phaseResult{row("c", "saturation", 800, 5, 2)}}).goals())
		require.Equal(t, "n/a (needs c and b)", v["throughput c/b (idempotency vs bare ext_proc)"])
		require.Equal(t, "n/a (needs dup)", v["Redis round trips per request: in-flight dup"])
		require.Equal(t, "PASS", v["Redis round trips per request: new key (c)"])
	})
}

func TestReport_Write(t *testing.T) {
	r := &report{Saturation: []phaseResult{row("c", "saturation", 800, 5, 2)}, Fixed: []phaseResult{row("c", "fixed", 400, 3, 2)},
		Rate: 400, RateSource: "--rate"}
	r.Goals = r.goals()
	var out bytes.Buffer
	r.write(&out)
	require.Contains(t, out.String(), "fixed rate: 400 req/s (--rate)")
	require.Contains(t, out.String(), "500/s") // the row's own target rate
	require.Contains(t, out.String(), "Redis round trips per request: new key (c)")
}
