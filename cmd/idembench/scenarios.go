package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"sync/atomic"
	"time"

	"github.com/idemproxy/idemproxy/internal/cmdstats"
	"github.com/idemproxy/idemproxy/internal/loadgen"
	"github.com/idemproxy/idemproxy/internal/testenv"
)

// scenario is one kind of traffic through one Envoy setup.
type scenario struct {
	id, title string
	envoy     envoyKind
	// gen builds the scenario's requests for one run; label makes keys
	// unique to that run.
	gen func(ctx context.Context, b *bench, label string) (loadgen.Gen, error)
}

// loadScenarios are the scenarios measured at saturation and at the fixed
// rate; dup and f have their own shapes (holdscenario.go).
var loadScenarios = []scenario{
	{id: "a", title: "Envoy -> backend, no ext_proc filter", envoy: envoyBare, gen: unkeyed},
	{id: "b", title: "Envoy + null ext_proc server, new keys", envoy: envoyNull, gen: keyed},
	{id: "c", title: "Envoy + idemproxy, new key each", envoy: envoyIdem, gen: keyed},
	{id: "m", title: "Envoy + idemproxy over memory, new keys", envoy: envoyMem, gen: keyed},
	{id: "c1", title: "Envoy + idemproxy, new keys, WAIT 1", envoy: envoyDurable, gen: keyed},
	{id: "d", title: "Envoy + idemproxy, replays", envoy: envoyIdem,
		gen: func(ctx context.Context, b *bench, _ string) (loadgen.Gen, error) { return b.replays(ctx) }},
	{id: "d2", title: "Envoy + idemproxy, endpoint replays", envoy: envoyReplay,
		gen: func(ctx context.Context, b *bench, _ string) (loadgen.Gen, error) { return b.endpointReplays(ctx) }},
	{id: "e", title: "Envoy + idemproxy, no key", envoy: envoyIdem, gen: unkeyed},
}

// keyed sends a new key with every request; unkeyed sends none.
func keyed(_ context.Context, b *bench, label string) (loadgen.Gen, error) {
	return newKeys(b.nonce + label), nil
}
func unkeyed(context.Context, *bench, string) (loadgen.Gen, error) { return noKey(), nil }

// bench is one run: its settings, its processes, what it has measured.
type bench struct {
	cfg      config
	st       *stack
	progress io.Writer
	nonce    string // makes this run's keys unique
	// replayPrefix is set once scenario d's keys are stored;
	// endpointPrefix, scenario d2's.
	replayPrefix, endpointPrefix string
}

// phase is one load run of a scenario.
type phase struct {
	sc    scenario
	label string  // "sat" or "fixed"
	rate  float64 // 0: saturation (closed loop)
}

// runPhase drives one phase and measures it.
func (b *bench) runPhase(ctx context.Context, ph phase) (phaseResult, error) {
	env, err := b.st.Envoy(ctx, ph.sc.envoy)
	if err != nil {
		return phaseResult{}, err
	}
	ext := env.ext
	gen, err := ph.sc.gen(ctx, b, "-"+ph.sc.id+"-"+ph.label+"-")
	if err != nil {
		return phaseResult{}, err
	}
	prime, err := ph.sc.gen(ctx, b, "-"+ph.sc.id+"-"+ph.label+"-prime-")
	if err != nil {
		return phaseResult{}, err
	}
	if err := warmPath(ctx, env.addr, 20, prime); err != nil {
		return phaseResult{}, err
	}
	if ext != nil {
		if err := testenv.ResetPeakRSS(ext.Pid()); err != nil {
			fmt.Fprintf(b.progress, "warning: cannot reset the peak RSS of %s (%v); it is the peak since start\n", ext.Name(), err)
		}
	}
	var answered atomic.Int64
	spec := loadgen.Spec{Addr: env.addr, Conns: b.cfg.connections, Rate: ph.rate, Gen: gen, Answered: &answered}
	win := loadgen.NewWindow(b.cfg.warmup, b.cfg.duration)
	done := make(chan loadgen.Result, 1)
	go func() { done <- loadgen.Run(ctx, spec, win) }()

	loadgen.Pause(ctx, time.Until(win.Start))
	before, berr := b.sample(ctx, env, &answered)
	loadgen.Pause(ctx, time.Until(win.End))
	after, aerr := b.sample(ctx, env, &answered)
	res := <-done
	if err := ctx.Err(); err != nil {
		return phaseResult{}, err
	}
	if err := b.st.alive(); err != nil {
		return phaseResult{}, err
	}
	if berr != nil || aerr != nil {
		return phaseResult{}, fmt.Errorf("%s: sampling: %v %v", ph.sc.id, berr, aerr)
	}
	var peak int64 = -1
	if ext != nil {
		m, err := testenv.ProcessMemory(ext.Pid())
		if err != nil {
			return phaseResult{}, err
		}
		peak = m.Peak
	}
	return newPhaseResult(ph, b.cfg, res, before, after, peak), nil
}

// sample is the state of every measured counter at one moment.
type sample struct {
	at       time.Time
	answered int64                    // responses the load generator had had
	cpu      map[string]time.Duration // by role
	machine  time.Duration            // all processes of the machine
	redis    map[string]int64         // INFO commandstats calls
	streams  int64                    // Envoy's ext_proc streams started
	metrics  map[string]float64       // idemproxy series, when it is the server
}

// decisionSeries are idemproxy's per-request decisions a run reports.
var decisionSeries = map[string]string{
	"acquired":    `idemproxy_requests_total{outcome="acquired"}`,
	"replayed":    `idemproxy_requests_total{outcome="replayed"}`,
	"conflict":    `idemproxy_requests_total{outcome="in_progress_conflict"}`,
	"passthrough": `idemproxy_requests_total{outcome="passthrough"}`,
	"renewals":    `idemproxy_lock_renewals_total{result="ok"}`,
	"goroutines":  "go_goroutines",
}

// sample reads every counter, the fast local ones first, close to the
// moment answered is read, so that the deltas of two samples and the
// requests between them belong together.
func (b *bench) sample(ctx context.Context, env *server, answered *atomic.Int64) (sample, error) {
	ext := env.ext
	s := sample{at: time.Now(), cpu: map[string]time.Duration{}, metrics: map[string]float64{}}
	if answered != nil {
		s.answered = answered.Load()
	}
	roles := map[string]int{"envoy": env.Pid(), "loadgen": os.Getpid()}
	if ext != nil {
		roles["server"] = ext.Pid()
	}
	if b.st.backend != nil {
		roles["backend"] = b.st.backend.Pid()
	}
	if b.st.redis != nil {
		roles["redis"] = b.st.redis.Pid()
	}
	var err error
	if s.machine, err = testenv.MachineCPU(); err != nil {
		return s, err
	}
	for role, pid := range roles {
		d, err := testenv.ProcessCPU(pid)
		if err != nil {
			return s, fmt.Errorf("cpu of %s: %w", role, err)
		}
		s.cpu[role] = d
	}
	if s.redis, err = b.redisCalls(ctx); err != nil {
		return s, err
	}
	if s.streams, err = testenv.EnvoyCounter(ctx, b.st.http, env.admin, "http.ingress.ext_proc.streams_started"); err != nil {
		return s, err
	}
	if ext != nil && ext.admin != "" {
		m, err := testenv.ScrapeMetrics(ctx, b.st.http, "http://"+ext.admin+"/metrics")
		if err != nil {
			return s, err
		}
		for name, series := range decisionSeries {
			if v, ok := m.Value(series); ok {
				s.metrics[name] = v
			}
		}
	}
	return s, nil
}

// redisCalls reads INFO commandstats; without a Redis (only a, b run)
// there is nothing to count.
func (b *bench) redisCalls(ctx context.Context) (map[string]int64, error) {
	if b.st.rdb == nil {
		return map[string]int64{}, nil
	}
	info, err := b.st.rdb.Info(ctx, "commandstats").Result()
	if err != nil {
		return nil, fmt.Errorf("redis INFO commandstats: %w", err)
	}
	return cmdstats.Parse(info)
}

// replays stores scenario d's keys once, by sending each as a new request,
// and returns a generator that cycles through them.
func (b *bench) replays(ctx context.Context) (loadgen.Gen, error) {
	if b.replayPrefix == "" {
		env, err := b.st.Envoy(ctx, envoyIdem)
		if err != nil {
			return nil, err
		}
		prefix := b.nonce + "-replay-"
		if err := populate(ctx, env.addr, prefix, b.cfg.replayKeys, min(b.cfg.connections, 16)); err != nil {
			return nil, fmt.Errorf("storing the keys to replay: %w", err)
		}
		b.replayPrefix = prefix
	}
	return cycledKeys(b.replayPrefix, b.cfg.replayKeys, b.cfg.connections), nil
}

// endpointReplays is replays for scenario d2, whose keys are stored
// through its own Envoy.
func (b *bench) endpointReplays(ctx context.Context) (loadgen.Gen, error) {
	if b.endpointPrefix == "" {
		env, err := b.st.Envoy(ctx, envoyReplay)
		if err != nil {
			return nil, err
		}
		prefix := b.nonce + "-endpoint-replay-"
		if err := populate(ctx, env.addr, prefix, b.cfg.replayKeys, min(b.cfg.connections, 16)); err != nil {
			return nil, fmt.Errorf("storing the keys to replay: %w", err)
		}
		b.endpointPrefix = prefix
	}
	return cycledKeys(b.endpointPrefix, b.cfg.replayKeys, b.cfg.connections), nil
}

// warmPath sends n requests one by one before a run, so that the
// first connections (Envoy to the ext_proc server, idemproxy to Redis) and
// Redis's script cache exist before the clock starts, and so that a path
// that fails at all stops the run with a clear error.
func warmPath(ctx context.Context, addr string, n int, gen loadgen.Gen) error {
	c := loadgen.NewConn(addr, loadgen.RequestTimeout)
	defer c.Close()
	for seq := range uint64(n) {
		if err := ctx.Err(); err != nil {
			return err
		}
		status, err := c.RoundTrip(gen(nil, 0, seq))
		if err == nil && (status < 200 || status > 299) {
			err = fmt.Errorf("status %d", status)
		}
		if err != nil {
			return fmt.Errorf("warming up the path through Envoy: request %d: %w", seq+1, err)
		}
	}
	return nil
}

// populate sends keys prefix0..prefix(n-1) once each over conns
// connections; every one must succeed, so that later they all replay.
func populate(ctx context.Context, addr, prefix string, n, conns int) error {
	res := loadgen.Run(ctx, loadgen.Spec{Addr: addr, Conns: conns, Gen: func(dst []byte, conn int, seq uint64) []byte {
		if i := seq*uint64(conns) + uint64(conn); i < uint64(n) {
			return appendCharge(dst, func(b []byte) []byte { return indexedKey(b, prefix, i) })
		}
		return nil
	}}, loadgen.Counted())
	if res.Errors > 0 || res.Statuses[200] != n {
		return fmt.Errorf("%d keys: statuses %v, %d errors (first: %v)", n, res.Statuses, res.Errors, res.FirstErr)
	}
	return ctx.Err()
}
