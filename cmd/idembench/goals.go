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

// goalList collects goals as they are judged.
type goalList []goal

// met adds a goal that was measured: PASS when ok, else MISS.
func (gs *goalList) met(name, measured, target string, ok bool) {
	v := "MISS"
	if ok {
		v = "PASS"
	}
	*gs = append(*gs, goal{Name: name, Measured: measured, Target: target, Verdict: v})
}

// na adds a goal the run could not judge: it did not run needs.
func (gs *goalList) na(name, target, needs string) {
	*gs = append(*gs, goal{Name: name, Measured: "-", Target: target, Verdict: "n/a (needs " + needs + ")"})
}

// goals computes the ratios from whatever scenarios ran: the costs
// first, then the Redis round trips.
func (r *report) goals() []goal {
	var gs goalList
	r.costGoals(&gs)
	r.tripGoals(&gs)
	return gs
}

// costGoals adds the throughput, CPU and added-latency goals.
func (r *report) costGoals(gs *goalList) {
	met, na := gs.met, gs.na
	sat := func(id string) *phaseResult { return r.find(r.Saturation, id) }
	ratio := func(name, num, den string, target float64) {
		n, d, t := sat(num), sat(den), fmt.Sprintf(">= %.2f", target)
		if n == nil || d == nil || d.RPS == 0 {
			na(name, t, num+" and "+den)
			return
		}
		met(name, fmt.Sprintf("%.2f", n.RPS/d.RPS), t, n.RPS/d.RPS >= target)
	}
	ratio("throughput c/b (idempotency vs bare ext_proc)", "c", "b", 0.75)
	// The floor of idemproxy's own handling: its processor without Redis.
	if m, b := sat("m"), sat("b"); m != nil && b != nil && b.RPS > 0 {
		*gs = append(*gs, goal{Name: "throughput m/b (processor over memory: the floor)", Measured: fmt.Sprintf("%.2f", m.RPS/b.RPS),
			Target: "-", Verdict: "info"})
	}
	cpu := func(name, num string, target float64) {
		n, d, t := sat(num), sat("b"), fmt.Sprintf("<= %.1fx", target)
		if n == nil || d == nil || n.ServerCPUPer1k <= 0 || d.ServerCPUPer1k <= 0 {
			na(name, t, num+" and b")
			return
		}
		v := n.ServerCPUPer1k / d.ServerCPUPer1k
		met(name, fmt.Sprintf("%.2fx", v), t, v <= target)
	}
	cpu("idemproxy CPU per new key vs null server (c/b)", "c", 1.5)
	cpu("idemproxy CPU per replay vs null server (d/b)", "d", 1.2)
	if c := sat("c"); c != nil {
		v := c.CPUPer1k["redis"] // s per 1,000 = ms per request
		met("Redis CPU per new key (c)", fmt.Sprintf("%.3f ms", v), "<= 0.030 ms", v <= 0.030)
	} else {
		na("Redis CPU per new key (c)", "<= 0.030 ms", "c")
	}
	latency := func(rows []phaseResult, where string) {
		c, b := r.find(rows, "c"), r.find(rows, "b")
		if c == nil || b == nil || c.TargetRate != b.TargetRate {
			na("p50(c) - p50(b) "+where, "<= 0.3 ms", "b and c")
			na("p99(c) - p99(b) "+where, "<= 1 ms", "b and c")
			return
		}
		at := fmt.Sprintf("at %.0f req/s", c.TargetRate)
		d50, d99 := c.P50ms-b.P50ms, c.P99ms-b.P99ms
		met("p50(c) - p50(b) "+at, fmt.Sprintf("%.2f ms", d50), "<= 0.3 ms", d50 <= 0.3)
		met("p99(c) - p99(b) "+at, fmt.Sprintf("%.2f ms", d99), "<= 1 ms", d99 <= 1)
	}
	latency(r.Low, "at the low rate")
	latency(r.Fixed, "at the fixed rate")
	ratio("throughput d/c (replay vs new key)", "d", "c", 1.5)
	// (c1) runs only when asked for (--only ...,c1): it needs a replica.
	if sat("c1") != nil {
		ratio("throughput c1/c (1 replica acknowledged vs none)", "c1", "c", 0.8)
	}
	ratio("throughput e/a (no key vs no ext_proc)", "e", "a", 0.95)
}

// tripGoals adds the goals of Redis round trips per request of each kind.
func (r *report) tripGoals(gs *goalList) {
	met, na := gs.met, gs.na
	sat := func(id string) *phaseResult { return r.find(r.Saturation, id) }
	trips := func(name, id string, want float64) {
		p := sat(id)
		if p == nil {
			na(name, fmt.Sprintf("%.0f", want), id)
			return
		}
		// Requests straddling the window's edges make new keys and
		// replays off by a few hundredths; no key must be exactly 0.
		ok := math.Abs(p.RedisPerReq-want) <= 0.05
		if want == 0 {
			ok = p.Redis.Requests == 0
		}
		met(name, fmt.Sprintf("%.2f", p.RedisPerReq), fmt.Sprintf("%.0f", want), ok)
	}
	trips("Redis round trips per request: new key (c)", "c", 2)
	if sat("c1") != nil {
		trips("Redis round trips per request: new key, WAIT 1 (c1)", "c1", 2)
	}
	trips("Redis round trips per request: replay (d)", "d", 1)
	if d := r.Dup; d != nil {
		met("Redis round trips per request: in-flight dup", fmt.Sprintf("%.2f", d.RedisPerReq), "1",
			math.Abs(d.RedisPerReq-1) <= 0.05 && d.Non409 == 0 && d.Errors == 0)
	} else {
		na("Redis round trips per request: in-flight dup", "1", "dup")
	}
	if w := r.Wait; w != nil {
		// Its own acquire; what waiting costs beyond it is per key
		// (SSUBSCRIBE, SUNSUBSCRIBE, one read when the subscription is
		// active, one per notice, one per recheck), shared by all of
		// the key's waiters, so nothing grows with their number.
		met("Redis round trips per waiting duplicate (wait)", fmt.Sprintf("%.2f (%.1f per key beyond)", w.RedisPerWaiter, w.PerKeyExtra),
			"1 + per-key", w.PerKeyExtra <= 8 && w.Replayed == w.Waiters && w.Errors == 0)
	} else {
		na("Redis round trips per waiting duplicate (wait)", "1 + per-key", "wait")
	}
	trips("Redis round trips per request: no key (e)", "e", 0)
	if e := sat("e"); e != nil {
		var streams int64
		for _, p := range []*phaseResult{e, r.find(r.Fixed, "e")} {
			if p != nil {
				streams += p.ExtProcStreams
			}
		}
		met("ext_proc streams opened for keyless requests (e)", fmt.Sprintf("%d", streams), "0", streams == 0)
	}
}
