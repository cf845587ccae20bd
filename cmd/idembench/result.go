package main

import (
	"strconv"
	"time"

	"github.com/idemproxy/idemproxy/internal/cmdstats"
	"github.com/idemproxy/idemproxy/internal/loadgen"
)

// phaseResult is one row of the table.
type phaseResult struct {
	Scenario    string         `json:"scenario"`
	Title       string         `json:"title"`
	Load        string         `json:"load"` // "saturation" or "fixed"
	TargetRate  float64        `json:"target_rate,omitempty"`
	Connections int            `json:"connections"`
	Seconds     float64        `json:"seconds"`
	Requests    int            `json:"requests"`
	RPS         float64        `json:"requests_per_second"`
	P50ms       float64        `json:"p50_ms"`
	P99ms       float64        `json:"p99_ms"`
	P999ms      float64        `json:"p999_ms"`
	Statuses    map[string]int `json:"statuses"`
	Non2xx      int            `json:"non_2xx"`
	Errors      int            `json:"errors"`
	FirstError  string         `json:"first_error,omitempty"`
	// Open loop only: how late the generator's timer fired (p99), and how
	// many requests found all connections busy.
	LagP99ms float64 `json:"lag_p99_ms,omitempty"`
	Behind   int     `json:"behind,omitempty"`

	Redis                cmdstats.Count `json:"redis"`
	RedisPerReq          float64        `json:"redis_round_trips_per_request"`
	RedisInScriptsPerReq float64        `json:"redis_script_commands_per_request"`
	// ServerCPUPer1k is the ext_proc server's CPU seconds per 1,000
	// requests; -1 without one.
	ServerCPUPer1k float64 `json:"server_cpu_s_per_1k"`
	// ServerPeakRSSKiB is the ext_proc server's peak resident set during
	// the run (VmHWM, reset at its start); -1 without one.
	ServerPeakRSSKiB int64 `json:"server_peak_rss_kib"`
	// CPUPer1k is CPU seconds per 1,000 requests for every process.
	CPUPer1k map[string]float64 `json:"cpu_s_per_1k"`
	// CoresBusy is the benchmark's processes' CPU over the wall time, in
	// cores; OthersCores is the rest of the machine's, in the same window:
	// other work on the machine that competed for the same cores.
	CoresBusy      float64            `json:"cores_busy"`
	OthersCores    float64            `json:"others_cores"`
	ExtProcStreams int64              `json:"ext_proc_streams_started"`
	Decisions      map[string]float64 `json:"idemproxy_decisions,omitempty"`
}

func newPhaseResult(ph phase, cfg config, res loadgen.Result, before, after sample, peakKiB int64) phaseResult {
	wall := after.at.Sub(before.at)
	r := phaseResult{
		Scenario: ph.sc.id, Title: ph.sc.title, Load: "saturation", TargetRate: ph.rate,
		Connections: cfg.connections, Seconds: cfg.duration.Seconds(),
		Requests: res.Completed(), Statuses: map[string]int{}, Errors: res.Errors,
		P50ms: ms(res.Lat.Percentile(50)), P99ms: ms(res.Lat.Percentile(99)), P999ms: ms(res.Lat.Percentile(99.9)),
		ServerCPUPer1k: -1, ServerPeakRSSKiB: peakKiB, CPUPer1k: map[string]float64{},
		ExtProcStreams: after.streams - before.streams,
	}
	if ph.rate > 0 {
		r.Load = "fixed"
		r.LagP99ms, r.Behind = ms(res.Lag.Percentile(99)), res.Behind
	}
	r.RPS = float64(r.Requests) / cfg.duration.Seconds()
	for s, n := range res.Statuses {
		r.Statuses[strconv.Itoa(s)] = n
		if s < 200 || s > 299 {
			r.Non2xx += n
		}
	}
	if res.FirstErr != nil {
		r.FirstError = res.FirstErr.Error()
	}
	// Per-request figures divide by the responses between the two samples,
	// read at the same moments as the servers' counters.
	answered := float64(max(after.answered-before.answered, 1))
	r.Redis = cmdstats.Classify(before.redis, after.redis)
	perK := 1000 / answered
	r.RedisPerReq = float64(r.Redis.Requests) / answered
	r.RedisInScriptsPerReq = float64(r.Redis.InScripts) / answered
	var busy time.Duration
	for role, d := range after.cpu {
		delta := d - before.cpu[role]
		busy += delta
		r.CPUPer1k[role] = delta.Seconds() * perK
	}
	if v, ok := r.CPUPer1k["server"]; ok {
		r.ServerCPUPer1k = v
	}
	r.CoresBusy = busy.Seconds() / wall.Seconds()
	r.OthersCores = max((after.machine-before.machine-busy).Seconds()/wall.Seconds(), 0)
	if len(after.metrics) > 0 {
		r.Decisions = map[string]float64{}
		for k, v := range after.metrics {
			if k != "goroutines" {
				r.Decisions[k] = v - before.metrics[k]
			}
		}
	}
	return r
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
