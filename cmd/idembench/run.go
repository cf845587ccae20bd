package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"time"

	"github.com/idemproxy/idemproxy/internal/testenv"
)

// lowRate is the fixed rate of the low-load runs of (b) and (c): far below
// either's saturation on this machine, so nothing queues.
const lowRate = 300

// run measures every selected scenario: all saturation runs first, since
// the fixed rate derives from (b)'s peak; then the fixed-rate runs; then
// the in-flight duplicates and (f).
func (b *bench) run(ctx context.Context) (*report, error) {
	rep := &report{Started: time.Now(), Machine: machine(), Connections: b.cfg.connections,
		Warmup: b.cfg.warmup.String(), Duration: b.cfg.duration.String(),
		Envoy: version(b.cfg.bins.envoy, "--version"), Redis: version(b.cfg.bins.redis, "--version"),
		Go: runtime.Version()}
	if !strings.Contains(rep.Envoy, "/"+testenv.EnvoyVersion+"/") {
		fmt.Fprintf(b.progress, "warning: Envoy is not %s: %s\n", testenv.EnvoyVersion, rep.Envoy)
	}
	if b.cfg.only["c1"] {
		if _, err := b.st.Replica(ctx); err != nil {
			return nil, err
		}
	}
	var selected, low []scenario
	for _, sc := range loadScenarios {
		if b.cfg.only[sc.id] {
			selected = append(selected, sc)
		}
		// The added latency where nothing queues: (b), (c) and the floor
		// (m) at a low rate.
		if b.cfg.only[sc.id] && (sc.id == "b" || sc.id == "c" || sc.id == "m") {
			low = append(low, sc)
		}
	}
	var err error
	if rep.Saturation, err = b.phases(ctx, selected, "sat", func(scenario) float64 { return 0 }); err != nil {
		return nil, err
	}
	rep.Rate, rep.RateSource = b.cfg.rate, "--rate"
	if rep.Rate == 0 {
		rep.RateSource = "half of each scenario's own saturation throughput (b was not run)"
		if r := rep.find(rep.Saturation, "b"); r != nil {
			rep.Rate, rep.RateSource = r.RPS/2, "half of b's saturation throughput"
		}
	}
	if rep.Fixed, err = b.phases(ctx, selected, "fixed", func(sc scenario) float64 {
		if rep.Rate == 0 {
			return max(rep.find(rep.Saturation, sc.id).RPS/2, 1)
		}
		return max(rep.Rate, 1)
	}); err != nil {
		return nil, err
	}
	if rep.Low, err = b.phases(ctx, low, "low", func(scenario) float64 { return lowRate }); err != nil {
		return nil, err
	}
	for _, x := range []struct {
		id, what string
		run      func() error
	}{
		{"dup", "duplicates of in-flight keys", func() (err error) { rep.Dup, err = ref(b.runDuplicates(ctx)); return err }},
		{"wait", "duplicates of in-flight keys on a route that waits", func() (err error) { rep.Wait, err = ref(b.runWait(ctx)); return err }},
		{"f", fmt.Sprintf("%d slow requests in flight", b.cfg.inFlight), func() (err error) { rep.Hold, err = ref(b.runHold(ctx)); return err }},
	} {
		if !b.cfg.only[x.id] {
			continue
		}
		fmt.Fprintf(b.progress, "==> %s: %s\n", x.id, x.what)
		if err := x.run(); err != nil {
			return nil, fmt.Errorf("%s: %w", x.id, err)
		}
	}
	rep.Finished = time.Now()
	rep.Goals = rep.goals()
	return rep, nil
}

// phases runs label's phase of each scenario, at the rate rate gives it
// (0: saturation), with a progress line before and after each.
func (b *bench) phases(ctx context.Context, scs []scenario, label string, rate func(scenario) float64) ([]phaseResult, error) {
	var out []phaseResult
	for _, sc := range scs {
		ph, load := phase{sc: sc, label: label, rate: rate(sc)}, "saturation"
		if ph.rate > 0 {
			load = fmt.Sprintf("%.0f/s", ph.rate)
		}
		fmt.Fprintf(b.progress, "==> %s: %s, %s (%s warm-up + %s)\n", sc.id, sc.title, load, b.cfg.warmup, b.cfg.duration)
		res, err := b.runPhase(ctx, ph)
		if err != nil {
			return nil, fmt.Errorf("%s (%s): %w", sc.id, load, err)
		}
		fmt.Fprintf(b.progress, "    %.0f req/s, p99 %.2f ms, non-2xx %d, errors %d\n", res.RPS, res.P99ms, res.Non2xx, res.Errors)
		out = append(out, res)
	}
	return out, nil
}

// ref is a result by reference, for the report's optional sections.
func ref[T any](v T, err error) (*T, error) { return &v, err }

// machine describes where the run happened.
func machine() string {
	model := "unknown CPU"
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
				model = strings.TrimSpace(v)
				break
			}
		}
	}
	load := ""
	if b, err := os.ReadFile("/proc/loadavg"); err == nil {
		if f := strings.Fields(string(b)); len(f) >= 3 {
			load = ", load average " + strings.Join(f[:3], " ")
		}
	}
	return fmt.Sprintf("%d cores (%s), %s/%s%s", runtime.NumCPU(), model, runtime.GOOS, runtime.GOARCH, load)
}

// version is the first line of bin's version output.
func version(bin string, arg string) string {
	out, err := exec.Command(bin, arg).CombinedOutput()
	if err != nil {
		return "unknown (" + err.Error() + ")"
	}
	line, _, _ := strings.Cut(strings.TrimSpace(string(out)), "\n")
	return line
}
