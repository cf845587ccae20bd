package main

import (
	"fmt"
	"io"
	"maps"
	"math"
	"regexp"
	"slices"
	"strings"
	"time"
)

// report is everything one run measured; it is also the --json output.
type report struct {
	Started     time.Time     `json:"started"`
	Finished    time.Time     `json:"finished"`
	Machine     string        `json:"machine"`
	Envoy       string        `json:"envoy"`
	Redis       string        `json:"redis"`
	Go          string        `json:"go"`
	Connections int           `json:"connections"`
	Warmup      string        `json:"warmup"`
	Duration    string        `json:"duration"`
	Rate        float64       `json:"fixed_rate"`
	RateSource  string        `json:"fixed_rate_source"`
	Saturation  []phaseResult `json:"saturation"`
	Fixed       []phaseResult `json:"fixed_rate_runs"`
	Low         []phaseResult `json:"low_rate_runs,omitempty"` // b, c and m at lowRate
	Dup         *dupResult    `json:"in_flight_duplicates,omitempty"`
	Wait        *waitResult   `json:"waiting_duplicates,omitempty"`
	Hold        *holdResult   `json:"in_flight_hold,omitempty"`
	Goals       []goal        `json:"goals"`
}

func (r *report) find(rows []phaseResult, id string) *phaseResult {
	for i := range rows {
		if rows[i].Scenario == id {
			return &rows[i]
		}
	}
	return nil
}

// write prints the tables, the goals and the notes.
func (r *report) write(w io.Writer) {
	fmt.Fprintf(w, "\nIdemProxy benchmark, %s\n", r.Started.UTC().Format("2006-01-02 15:04 MST"))
	fmt.Fprintf(w, "machine: %s\n", r.Machine)
	fmt.Fprintf(w, "Envoy %s (--concurrency 1), redis-server %s, %s\n", versionNumber(r.Envoy), versionNumber(r.Redis), r.Go)
	fmt.Fprintf(w, "load: %d connections, %s warm-up + %s measured per run; fixed rate: %s\n\n",
		r.Connections, r.Warmup, r.Duration, r.rateText())
	if len(r.Saturation) > 0 {
		r.writeTable(w)
		r.writeCPU(w)
	}
	r.writeDup(w)
	r.writeWait(w)
	r.writeHold(w)
	fmt.Fprintln(w, "\ngoals")
	for _, g := range r.Goals {
		fmt.Fprintf(w, "  %-52s %14s  %-12s %s\n", g.Name, g.Measured, g.Target, g.Verdict)
	}
	r.writeNotes(w)
}

func (r *report) rateText() string {
	if r.Rate == 0 {
		return r.RateSource
	}
	return fmt.Sprintf("%.0f req/s (%s)", r.Rate, r.RateSource)
}

func (r *report) rows() []phaseResult {
	var rows []phaseResult
	for _, s := range r.Saturation {
		rows = append(rows, s)
		if f := r.find(r.Fixed, s.Scenario); f != nil {
			rows = append(rows, *f)
		}
		if f := r.find(r.Low, s.Scenario); f != nil {
			rows = append(rows, *f)
		}
	}
	return rows
}

func loadText(p phaseResult) string {
	if p.Load == "fixed" {
		return fmt.Sprintf("%.0f/s", p.TargetRate)
	}
	return "saturation"
}

func (r *report) writeTable(w io.Writer) {
	fmt.Fprintf(w, "%-42s %-10s %8s %7s %7s %8s %7s %4s %9s %10s %9s\n", "scenario", "load", "req/s",
		"p50 ms", "p99 ms", "p99.9 ms", "non-2xx", "err", "redis/req", "srv CPU s", "srv peak")
	fmt.Fprintf(w, "%-42s %-10s %8s %7s %7s %8s %7s %4s %9s %10s %9s\n", "", "", "", "", "", "", "", "",
		"(trips)", "per 1,000", "RSS MiB")
	for _, p := range r.rows() {
		cpu, rss := "-", "-"
		if p.ServerCPUPer1k >= 0 {
			cpu = fmt.Sprintf("%.3f", p.ServerCPUPer1k)
		}
		if p.ServerPeakRSSKiB >= 0 {
			rss = fmt.Sprintf("%.1f", float64(p.ServerPeakRSSKiB)/1024)
		}
		fmt.Fprintf(w, "%-42s %-10s %8.0f %7.2f %7.2f %8.2f %7d %4d %9.2f %10s %9s\n",
			p.Scenario+"  "+p.Title, loadText(p), p.RPS, p.P50ms, p.P99ms, p.P999ms, p.Non2xx, p.Errors,
			p.RedisPerReq, cpu, rss)
	}
}

// cpuRoles are the processes in the CPU table, in order.
var cpuRoles = []string{"envoy", "server", "redis", "backend", "loadgen"}

func (r *report) writeCPU(w io.Writer) {
	fmt.Fprintln(w, "\nCPU seconds per 1,000 requests, by process (all share the same cores); cores busy:")
	fmt.Fprintln(w, "the benchmark's processes; others: the rest of the machine during the same run")
	fmt.Fprintf(w, "%-4s %-10s", "", "load")
	for _, role := range cpuRoles {
		fmt.Fprintf(w, " %8s", role)
	}
	fmt.Fprintf(w, " %8s %11s %7s\n", "total", "cores busy", "others")
	for _, p := range r.rows() {
		fmt.Fprintf(w, "%-4s %-10s", p.Scenario, loadText(p))
		var total float64
		for _, role := range cpuRoles {
			v, ok := p.CPUPer1k[role]
			if !ok {
				fmt.Fprintf(w, " %8s", "-")
				continue
			}
			total += v
			fmt.Fprintf(w, " %8.3f", v)
		}
		fmt.Fprintf(w, " %8.3f %11.2f %7.2f\n", total, p.CoresBusy, p.OthersCores)
	}
}

func (r *report) writeDup(w io.Writer) {
	d := r.Dup
	if d == nil {
		return
	}
	fmt.Fprintf(w, "\ndup  duplicates of in-flight keys (%d keys held by /slow?delay=3s)\n", d.Holders)
	fmt.Fprintf(w, "     %d duplicates: %s, errors %d, not 409: %d; p50 %.2f ms, p99 %.2f ms\n",
		d.Duplicates, statusText(d.Statuses), d.Errors, d.Non409, d.P50ms, d.P99ms)
	fmt.Fprintf(w, "     Redis round trips per duplicate %.2f; originals not answered 200: %d\n", d.RedisPerReq, d.HolderNon200)
}

func (r *report) writeWait(w io.Writer) {
	x := r.Wait
	if x == nil {
		return
	}
	fmt.Fprintf(w, "\nwait duplicates that wait (route /wait/): %d keys held by /slow?delay=%s, %d duplicates each\n",
		x.Keys, x.Delay, x.PerKey)
	fmt.Fprintf(w, "     %d waiters: %s, replayed %d, errors %d; answered after their original: p50 %.2f ms, p99 %.2f ms, max %.2f ms\n",
		x.Waiters, statusText(x.Statuses), x.Replayed, x.Errors, x.AfterP50ms, x.AfterP99ms, x.AfterMaxms)
	fmt.Fprintf(w, "     Redis round trips per waiter %.3f: its own acquire, plus %.1f per key (%.0f shared reads in all, and each key's SSUBSCRIBE and SUNSUBSCRIBE)\n",
		x.RedisPerWaiter, x.PerKeyExtra, x.SharedReads)
	fmt.Fprintf(w, "     idemproxy CPU %.0f us per waiter; originals not answered 200: %d\n", x.CPUPerWaiterUs, x.OriginalsNon200)
}

func (r *report) writeHold(w io.Writer) {
	h := r.Hold
	if h == nil {
		return
	}
	mib := func(k int64) float64 { return float64(k) / 1024 }
	fmt.Fprintf(w, "\nf    %d slow requests in flight (idemproxy --heartbeat %gs --lock-ttl %gs), all acquired within %.1f s\n",
		h.InFlight, h.HeartbeatSeconds, holdLockTTL.Seconds(), h.RampSeconds)
	fmt.Fprintf(w, "     idemproxy RSS %.1f MiB idle -> %.1f MiB held (peak %.1f MiB): %.1f KiB per request\n",
		mib(h.RSSIdleKiB), mib(h.RSSHeldKiB), mib(h.PeakRSSKiB), float64(h.RSSHeldKiB-h.RSSIdleKiB)/float64(h.InFlight))
	fmt.Fprintf(w, "     goroutines %.0f idle -> %.0f held (%.1f per request)\n",
		h.GoroutinesIdle, h.GoroutinesHeld, (h.GoroutinesHeld-h.GoroutinesIdle)/float64(h.InFlight))
	fmt.Fprintf(w, "     Redis round trips %.0f/s over %.1f s (expected renewals %.0f/s; idemproxy counted %.0f/s); idemproxy CPU %.3f cores\n",
		h.RenewalsPerSec, h.WindowSeconds, h.ExpectedPerSec, h.MetricRenewals, h.ServerCores)
	fmt.Fprintf(w, "     then cut: %d answered before the cut, all streams closed %.1f s after it\n", h.AnsweredEarly, h.DrainSeconds)
}

// versionNumber picks the release out of a version banner: Envoy's
// ".../1.40.0/Clean/RELEASE/..." or Redis's "v=7.0.15".
func versionNumber(banner string) string {
	// Envoy's banner starts with its path, which may hold other versions.
	if _, after, ok := strings.Cut(banner, "version:"); ok {
		banner = after
	}
	if m := releasePattern.FindStringSubmatch(banner); m != nil {
		return m[1]
	}
	return banner
}

var releasePattern = regexp.MustCompile(`[/=v](\d+\.\d+\.\d+)\b`)

// statusText is a result's statuses, "200: 998, 503: 2".
func statusText(m map[string]int) string {
	return joined(m, func(s string, n int) string { return fmt.Sprintf("%s: %d", s, n) }, "no responses")
}

// joined lists m's entries in key order, each as item writes it, leaving
// out those it writes as ""; empty when none is left.
func joined[V any](m map[string]V, item func(string, V) string, empty string) string {
	var parts []string
	for _, k := range slices.Sorted(maps.Keys(m)) {
		if s := item(k, m[k]); s != "" {
			parts = append(parts, s)
		}
	}
	if len(parts) == 0 {
		return empty
	}
	return strings.Join(parts, ", ")
}

func (r *report) writeNotes(w io.Writer) {
	fmt.Fprintln(w, "\nnotes")
	excluded := map[string]int64{}
	for _, p := range append(slices.Clone(r.Saturation), r.Fixed...) {
		for k, v := range p.Redis.Excluded {
			excluded[k] += v
		}
		if len(p.Redis.Other) > 0 {
			fmt.Fprintf(w, "  %s %s: Redis data commands sent outside scripts: %v\n", p.Scenario, loadText(p), p.Redis.Other)
		}
		if p.Non2xx > 0 || p.Errors > 0 {
			fmt.Fprintf(w, "  %s %s: statuses %s; errors %d %s\n", p.Scenario, loadText(p), statusText(p.Statuses), p.Errors, p.FirstError)
		}
	}
	fmt.Fprintf(w, "  Redis round trips count EVALSHA/EVAL and any data command sent outside a script; not counted (housekeeping): %s\n",
		joined(excluded, func(k string, n int64) string { return fmt.Sprintf("%s %d", k, n) }, "none"))
	for _, p := range r.Saturation {
		if p.RedisInScriptsPerReq > 0 {
			fmt.Fprintf(w, "  %s: %.1f commands per request run inside the Lua scripts (Redis CPU, no round trip)\n", p.Scenario, p.RedisInScriptsPerReq)
		}
		if d := joined(p.Decisions, decision, ""); d != "" {
			fmt.Fprintf(w, "  %s: idemproxy decisions %s; Envoy ext_proc streams %d\n", p.Scenario, d, p.ExtProcStreams)
		}
	}
	for _, p := range r.Fixed {
		fmt.Fprintf(w, "  %s %s: generator timer lag p99 %.2f ms (not counted), %d requests sent late because every connection was busy (counted from their slot)\n",
			p.Scenario, loadText(p), p.LagP99ms, p.Behind)
	}
}

// decision is one of idemproxy's decision counts, rounded; "" for none.
func decision(name string, n float64) string {
	if n == 0 {
		return ""
	}
	return fmt.Sprintf("%s %.0f", name, math.Round(n))
}
