package main

import (
	"context"
	"slices"
	"strconv"
	"time"

	"github.com/idemproxy/idemproxy/internal/cmdstats"
	"github.com/idemproxy/idemproxy/internal/loadgen"
	"github.com/idemproxy/idemproxy/internal/testenv"
)

// waitResult is scenario (wait): duplicates of keys still in flight, on the
// shipped /wait/ route, where they are held until their original completes
// and then get its replay.
type waitResult struct {
	Keys           int            `json:"keys"`
	PerKey         int            `json:"duplicates_per_key"`
	Delay          string         `json:"original_delay"`
	Waiters        int            `json:"waiters"`
	Statuses       map[string]int `json:"statuses"`
	Replayed       int            `json:"replayed"` // idemproxy_waits_total{result="replayed"}
	Errors         int            `json:"errors"`
	AfterP50ms     float64        `json:"after_original_p50_ms"` // a waiter's answer after its original's
	AfterP99ms     float64        `json:"after_original_p99_ms"`
	AfterMaxms     float64        `json:"after_original_max_ms"`
	Redis          cmdstats.Count `json:"redis"`
	RedisPerWaiter float64        `json:"redis_round_trips_per_waiter"`
	SharedReads    float64        `json:"shared_reads"`
	// PerKeyExtra is what waiting cost Redis beyond each waiter's own
	// acquire, per key: shared reads, SSUBSCRIBE and SUNSUBSCRIBE.
	PerKeyExtra     float64 `json:"round_trips_per_key_beyond_acquires"`
	CPUPerWaiterUs  float64 `json:"server_cpu_us_per_waiter"`
	OriginalsNon200 int     `json:"originals_not_200"`
}

const (
	waitReplayedSeries = `idemproxy_waits_total{result="replayed"}`
	peekSeries         = `idemproxy_redis_duration_seconds{op="peek",result="ok"}`
)

// runWait holds keys slow requests on /wait/, sends perKey duplicates of
// each on connections of their own once the originals hold their locks,
// and lets the originals finish: every duplicate should be answered with
// the replay right after its original, each having cost Redis its own
// acquire and nothing per wait.
func (b *bench) runWait(ctx context.Context) (waitResult, error) {
	// 1,000 waiters: idemproxy's default --max-waiters.
	const keys, perKey, delay = 20, 50, "2s"
	r := waitResult{Keys: keys, PerKey: perKey, Delay: delay, Waiters: keys * perKey, Statuses: map[string]int{}}
	env, err := b.st.Envoy(ctx, envoyIdem)
	if err != nil {
		return r, err
	}
	idem := env.ext
	metrics := "http://" + idem.admin + "/metrics"
	// Prime: Redis loads the scripts now, so no NOSCRIPT retry of the
	// originals' concurrent completions is counted.
	prime := slowRequest("/wait", b.nonce+"-wait-prime", "0s")
	if err := warmPath(ctx, env.addr, 1, func(dst []byte, _ int, _ uint64) []byte { return append(dst, prime...) }); err != nil {
		return r, err
	}
	origs := make([][]byte, keys)
	for i := range origs {
		origs[i] = slowRequest("/wait", b.nonce+"-wait-"+strconv.Itoa(i), delay)
	}
	h, err := b.hold(ctx, env, origs, 30*time.Second, 10*time.Second)
	if err != nil {
		return r, err
	}
	defer func() { h.Cut(); h.Wait() }()
	replayed0, err := testenv.ReadMetric(ctx, b.st.http, metrics, waitReplayedSeries)
	if err != nil {
		return r, err
	}
	peeks0, _ := testenv.ReadMetric(ctx, b.st.http, metrics, peekSeries) // absent before the first
	before, err := b.sample(ctx, env, nil)
	if err != nil {
		return r, err
	}
	dups := make([][]byte, r.Waiters)
	for i := range dups {
		dups[i] = origs[i%keys]
	}
	w, err := loadgen.Hold(ctx, env.addr, dups, 30*time.Second)
	if err != nil {
		return r, err
	}
	origStatus := h.Wait()
	dupStatus := w.Wait()
	after, err := b.sample(ctx, env, nil)
	if err != nil {
		return r, err
	}
	byStatus, errs := loadgen.CountStatuses(origStatus)
	r.OriginalsNon200 = errs + keys - byStatus[200]
	byStatus, r.Errors = loadgen.CountStatuses(dupStatus)
	for s, n := range byStatus {
		r.Statuses[strconv.Itoa(s)] = n
	}
	var after0 []time.Duration
	for i, s := range dupStatus {
		if s > 0 && origStatus[i%keys] > 0 {
			after0 = append(after0, w.Ended[i].Sub(h.Ended[i%keys]))
		}
	}
	if len(after0) > 0 {
		slices.Sort(after0)
		pick := func(p float64) float64 { return ms(after0[min(int(float64(len(after0))*p), len(after0)-1)]) }
		r.AfterP50ms, r.AfterP99ms, r.AfterMaxms = pick(0.5), pick(0.99), ms(after0[len(after0)-1])
	}
	replayed1, err := testenv.ReadMetric(ctx, b.st.http, metrics, waitReplayedSeries)
	if err != nil {
		return r, err
	}
	peeks1, err := testenv.ReadMetric(ctx, b.st.http, metrics, peekSeries)
	if err != nil {
		return r, err
	}
	r.Replayed, r.SharedReads = int(replayed1-replayed0), peeks1-peeks0
	r.Redis = cmdstats.Classify(before.redis, after.redis)
	// The originals' completions fall in the window too; their acquires
	// came before it.
	r.RedisPerWaiter = float64(r.Redis.Requests-keys) / float64(r.Waiters)
	r.PerKeyExtra = float64(r.Redis.Requests-keys-int64(r.Waiters)) / keys
	r.CPUPerWaiterUs = float64((after.cpu["server"] - before.cpu["server"]).Microseconds()) / float64(r.Waiters)
	return r, b.st.alive()
}
