package main

import (
	"fmt"
	"math"
)

// goal is one target of issue 5 and whether this run met it.
type goal struct {
	Name     string `json:"name"`
	Measured string `json:"measured"`
	Target   string `json:"target"`
	Verdict  string `json:"verdict"` // PASS, MISS, or n/a
}

func verdict(ok bool) string {
	if ok {
		return "PASS"
	}
	return "MISS"
}

// goals computes the ratios from whatever scenarios ran.
func (r *report) goals() []goal {
	var gs []goal
	ratio := func(name, num, den string, target float64) {
		n, d := r.find(r.Saturation, num), r.find(r.Saturation, den)
		if n == nil || d == nil || d.RPS == 0 {
			gs = append(gs, goal{Name: name, Measured: "-", Target: fmt.Sprintf(">= %.2f", target), Verdict: "n/a (needs " + num + " and " + den + ")"})
			return
		}
		v := n.RPS / d.RPS
		gs = append(gs, goal{Name: name, Measured: fmt.Sprintf("%.2f", v), Target: fmt.Sprintf(">= %.2f", target), Verdict: verdict(v >= target)})
	}
	ratio("throughput c/b (idempotency vs bare ext_proc)", "c", "b", 0.75)
	// The floor of idemproxy's own handling: its processor without Redis.
	if m, bb := r.find(r.Saturation, "m"), r.find(r.Saturation, "b"); m != nil && bb != nil && bb.RPS > 0 {
		gs = append(gs, goal{Name: "throughput m/b (processor over memory: the floor)", Measured: fmt.Sprintf("%.2f", m.RPS/bb.RPS),
			Target: "-", Verdict: "info"})
	}
	cpu := func(name, num string, target float64) {
		n, d := r.find(r.Saturation, num), r.find(r.Saturation, "b")
		if n == nil || d == nil || n.ServerCPUPer1k <= 0 || d.ServerCPUPer1k <= 0 {
			gs = append(gs, goal{Name: name, Measured: "-", Target: fmt.Sprintf("<= %.1fx", target), Verdict: "n/a (needs " + num + " and b)"})
			return
		}
		v := n.ServerCPUPer1k / d.ServerCPUPer1k
		gs = append(gs, goal{Name: name, Measured: fmt.Sprintf("%.2fx", v), Target: fmt.Sprintf("<= %.1fx", target), Verdict: verdict(v <= target)})
	}
	cpu("idemproxy CPU per new key vs null server (c/b)", "c", 1.5)
	cpu("idemproxy CPU per replay vs null server (d/b)", "d", 1.2)
	if c := r.find(r.Saturation, "c"); c != nil {
		v := c.CPUPer1k["redis"] // s per 1,000 = ms per request
		gs = append(gs, goal{Name: "Redis CPU per new key (c)", Measured: fmt.Sprintf("%.3f ms", v), Target: "<= 0.030 ms", Verdict: verdict(v <= 0.030)})
	} else {
		gs = append(gs, goal{Name: "Redis CPU per new key (c)", Measured: "-", Target: "<= 0.030 ms", Verdict: "n/a (needs c)"})
	}
	latency := func(rows []phaseResult, where string) {
		c, b := r.find(rows, "c"), r.find(rows, "b")
		if c == nil || b == nil || c.TargetRate != b.TargetRate {
			gs = append(gs, goal{Name: "p50(c) - p50(b) " + where, Measured: "-", Target: "<= 0.3 ms", Verdict: "n/a (needs b and c)"},
				goal{Name: "p99(c) - p99(b) " + where, Measured: "-", Target: "<= 1 ms", Verdict: "n/a (needs b and c)"})
			return
		}
		at := fmt.Sprintf("at %.0f req/s", c.TargetRate)
		d50, d99 := c.P50ms-b.P50ms, c.P99ms-b.P99ms
		gs = append(gs, goal{Name: "p50(c) - p50(b) " + at, Measured: fmt.Sprintf("%.2f ms", d50), Target: "<= 0.3 ms", Verdict: verdict(d50 <= 0.3)},
			goal{Name: "p99(c) - p99(b) " + at, Measured: fmt.Sprintf("%.2f ms", d99), Target: "<= 1 ms", Verdict: verdict(d99 <= 1)})
	}
	latency(r.Low, "at the low rate")
	latency(r.Fixed, "at the fixed rate")
	ratio("throughput d/c (replay vs new key)", "d", "c", 1.5)
	// (c1) runs only when asked for (--only ...,c1): it needs a replica.
	durable := r.find(r.Saturation, "c1") != nil
	if durable {
		ratio("throughput c1/c (1 replica acknowledged vs none)", "c1", "c", 0.8)
	}
	ratio("throughput e/a (no key vs no ext_proc)", "e", "a", 0.95)

	trips := func(name, id string, want float64) {
		p := r.find(r.Saturation, id)
		if p == nil {
			gs = append(gs, goal{Name: name, Measured: "-", Target: fmt.Sprintf("%.0f", want), Verdict: "n/a (needs " + id + ")"})
			return
		}
		// Requests straddling the window's edges make new keys and
		// replays off by a few hundredths; no key must be exactly 0.
		ok := math.Abs(p.RedisPerReq-want) <= 0.05
		if want == 0 {
			ok = p.Redis.Requests == 0
		}
		gs = append(gs, goal{Name: name, Measured: fmt.Sprintf("%.2f", p.RedisPerReq), Target: fmt.Sprintf("%.0f", want), Verdict: verdict(ok)})
	}
	trips("Redis round trips per request: new key (c)", "c", 2)
	if durable {
		trips("Redis round trips per request: new key, WAIT 1 (c1)", "c1", 2)
	}
	trips("Redis round trips per request: replay (d)", "d", 1)
	if d := r.Dup; d != nil {
		gs = append(gs, goal{Name: "Redis round trips per request: in-flight dup", Measured: fmt.Sprintf("%.2f", d.RedisPerReq),
			Target: "1", Verdict: verdict(math.Abs(d.RedisPerReq-1) <= 0.05 && d.Non409 == 0 && d.Errors == 0)})
	} else {
		gs = append(gs, goal{Name: "Redis round trips per request: in-flight dup", Measured: "-", Target: "1", Verdict: "n/a (needs dup)"})
	}
	if w := r.Wait; w != nil {
		// Its own acquire; what waiting costs beyond it is per key
		// (SSUBSCRIBE, SUNSUBSCRIBE, one read when the subscription is
		// active, one per notice, one per recheck), shared by all of
		// the key's waiters, so nothing grows with their number.
		gs = append(gs, goal{Name: "Redis round trips per waiting duplicate (wait)",
			Measured: fmt.Sprintf("%.2f (%.1f per key beyond)", w.RedisPerWaiter, w.PerKeyExtra),
			Target:   "1 + per-key", Verdict: verdict(w.PerKeyExtra <= 8 && w.Replayed == w.Waiters && w.Errors == 0)})
	} else {
		gs = append(gs, goal{Name: "Redis round trips per waiting duplicate (wait)", Measured: "-", Target: "1 + per-key", Verdict: "n/a (needs wait)"})
	}
	trips("Redis round trips per request: no key (e)", "e", 0)
	if e := r.find(r.Saturation, "e"); e != nil {
		var streams int64
		for _, p := range []*phaseResult{e, r.find(r.Fixed, "e")} {
			if p != nil {
				streams += p.ExtProcStreams
			}
		}
		gs = append(gs, goal{Name: "ext_proc streams opened for keyless requests (e)", Measured: fmt.Sprintf("%d", streams),
			Target: "0", Verdict: verdict(streams == 0)})
	}
	return gs
}
