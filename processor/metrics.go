package processor

import (
	"errors"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/idemproxy/idemproxy/internal/idem"
)

// Request outcomes: the decision taken for each request that reached us.
const (
	outcomePassthrough      = "passthrough"
	outcomeAcquired         = "acquired"
	outcomeReplayed         = "replayed"
	outcomeConflict         = "in_progress_conflict"
	outcomeMismatch         = "fingerprint_mismatch"
	outcomeInvalidKey       = "invalid_key"
	outcomeStoreError       = "store_error"
	outcomeStoreUnsafe      = "store_unsafe"
	outcomeStoreReset       = "store_reset"
	outcomeFailOpen         = "fail_open"
	outcomeNotStored        = "not_stored"
	outcomeMisconfigured    = "misconfigured"
	outcomeKeyRequired      = "key_required"
	outcomeUnknown          = "outcome_unknown"
	outcomeHeadersTooLarge  = "headers_too_large"
	outcomeIdentityRequired = "identity_required"
)

// Response results: what became of an acquired key.
const (
	resultStored       = "stored"
	resultStoredNoBody = "stored_without_body"
	// resultStoredIncomplete: the status arrived, the body never ended.
	resultStoredIncomplete = "stored_incomplete"
	// resultStoredTrailers: the response ended with trailers (not replayable).
	resultStoredTrailers = "stored_trailers"
	resultReleasedStatus = "released_status"
	resultReleasedEarly  = "released_early"
	resultUnknownOutcome = "unknown_outcome"
	resultLeaseLost      = "lease_lost"
	resultStoreError     = "store_error"
	// resultStorePending: seen in full, not stored within
	// --finalize-timeout, kept for a background completion (pending.go,
	// whose idemproxy_pending_completions_total says how it ended).
	resultStorePending = "store_pending"
	// resultReplayMisrouted is no acquired key's: the response to a replay
	// re-routed to the replay endpoint came from something else
	// (reroute.go, replayNotServed), a config without the replay route.
	resultReplayMisrouted = "replay_misrouted"
)

// allOutcomes and allResults are every value of the two labels.
var (
	allOutcomes = []string{outcomePassthrough, outcomeAcquired, outcomeReplayed, outcomeConflict,
		outcomeMismatch, outcomeInvalidKey, outcomeStoreError, outcomeStoreUnsafe, outcomeStoreReset, outcomeFailOpen, outcomeNotStored,
		outcomeMisconfigured, outcomeKeyRequired, outcomeUnknown, outcomeHeadersTooLarge, outcomeIdentityRequired}
	allResults = []string{resultStored, resultStoredNoBody, resultStoredIncomplete, resultStoredTrailers, resultReleasedStatus, resultReleasedEarly,
		resultUnknownOutcome, resultLeaseLost, resultStoreError, resultStorePending, resultReplayMisrouted}
)

// Watchdog renewal results and the stages at which a lease can be lost.
const (
	renewOK    = "ok"
	renewLost  = "lost"
	renewError = "error"
	stageRenew = "renew"
	stageDone  = "complete"
)

// Metrics are the processor's Prometheus collectors.
type Metrics struct {
	requests  *prometheus.CounterVec
	responses *prometheus.CounterVec
	renewals  *prometheus.CounterVec
	leaseLost *prometheus.CounterVec
	redis     *prometheus.HistogramVec
	retries   *prometheus.CounterVec
	// waiting duplicates and shadow decisions
	waiting     prometheus.Gauge
	waits       *prometheus.CounterVec
	waitSeconds prometheus.Histogram
	// retryAfter is the wait estimated for 409 in-progress refusals, by
	// what decided it (retryafter.go).
	retryAfter *prometheus.HistogramVec
	shadow     *prometheus.CounterVec
	// unreplicated counts writes fewer replicas acknowledged than asked
	// (--redis-min-replicas): refused locks and stored-but-exposed responses.
	unreplicated *prometheus.CounterVec
	streams      prometheus.Gauge
	// upstreamRetries counts keyed responses Envoy retried upstream (attempts.go).
	upstreamRetries *prometheus.CounterVec
	// pending completions (pending.go): kept now, their bytes, and what
	// became of them.
	pendingNow   prometheus.Gauge
	pendingBytes prometheus.Gauge
	pending      *prometheus.CounterVec
	// config is idemproxy_envoy_config_problems (envoycheck.go).
	config *configProblems
}

// NewMetrics creates the collectors and registers them with reg.
func NewMetrics(reg prometheus.Registerer) (*Metrics, error) {
	m := &Metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "idemproxy_requests_total",
			Help: "Requests that reached idemproxy, by the decision taken.",
		}, []string{"outcome"}),
		responses: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "idemproxy_responses_total",
			Help: "What became of acquired keys: stored, released, or left to expire.",
		}, []string{"result"}),
		renewals: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "idemproxy_lock_renewals_total",
			Help: "Watchdog lock renewals by result (ok, lost, error).",
		}, []string{"result"}),
		leaseLost: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "idemproxy_leases_lost_total",
			Help: "Locks found owned by someone else or expired, by stage (renew, complete).",
		}, []string{"stage"}),
		redis: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "idemproxy_redis_duration_seconds",
			Help:    "Latency of store calls by operation and result.",
			Buckets: []float64{.0002, .0005, .001, .002, .005, .01, .025, .05, .1, .25, .5, 1, 2.5},
		}, []string{"op", "result"}),
		retries: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "idemproxy_store_retries_total",
			Help: "Settling writes (complete, release, abandon) tried again after a failure, by operation.",
		}, []string{"op"}),
		waiting: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "idemproxy_waiters",
			Help: "Duplicates held right now until their key is settled (--in-progress=wait).",
		}),
		waits: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "idemproxy_waits_total",
			Help: "Waits of duplicates by how they ended: replayed, acquired, other, timeout, gone, full, error.",
		}, []string{"result"}),
		waitSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "idemproxy_wait_duration_seconds",
			Help:    "How long waiting duplicates were held.",
			Buckets: []float64{.005, .01, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60},
		}),
		retryAfter: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "idemproxy_retry_after_seconds",
			Help: "Waits suggested to 409 in-progress duplicates, before rounding up to Retry-After's whole seconds, " +
				"by basis: typical (the route's recent duration), running (the first request's time so far), lease (the lease left).",
			Buckets: []float64{.25, .5, 1, 2, 3, 5, 10, 20, 30, 60},
		}, []string{"basis"}),
		shadow: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "idemproxy_shadow_decisions_total",
			Help: "Shadow mode: requests passed upstream that enforcement would have answered itself, by what it would have done.",
		}, []string{"would"}),
		unreplicated: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "idemproxy_unreplicated_writes_total",
			Help: "Writes fewer replicas acknowledged than --redis-min-replicas asks, by operation: acquire (the request was refused with 503), complete (the response was delivered, stored on the primary only).",
		}, []string{"op"}),
		streams: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "idemproxy_active_streams",
			Help: "ext_proc streams currently open.",
		}),
		upstreamRetries: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "idemproxy_upstream_retries_total",
			Help: "Keyed responses that Envoy retried upstream (x-envoy-attempt-count above 1), by kind: may_have_run (an earlier attempt may have run: the request may have run more than once) or declared_never_sent (the route declares x-idemproxy-retries: never-sent).",
		}, []string{"kind"}),
		pendingNow: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "idemproxy_pending_completions",
			Help: "Responses seen in full whose completion the store did not take within --finalize-timeout, retried in the background right now.",
		}),
		pendingBytes: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "idemproxy_pending_completion_bytes",
			Help: "Bytes of response bodies and headers held by the pending completions (against --max-pending-completion-bytes).",
		}),
		pending: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "idemproxy_pending_completions_total",
			Help: "Pending completions by what became of them: stored (the response), status_only (409 response-not-stored), lease_lost, gave_up (nothing written), refused (--max-pending-completions reached), body_dropped (kept without its body: --max-pending-completion-bytes reached).",
		}, []string{"result"}),
	}
	m.config = newConfigProblems()
	if err := reg.Register(m.config); err != nil {
		return nil, err
	}
	for _, c := range []prometheus.Collector{m.requests, m.responses, m.renewals, m.leaseLost, m.redis, m.retries, m.waiting, m.waits, m.waitSeconds, m.retryAfter, m.shadow, m.unreplicated, m.streams, m.upstreamRetries,
		m.pendingNow, m.pendingBytes, m.pending} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	m.zeros()
	return m, nil
}

// zeros pre-creates the label values, so dashboards see zeros, not gaps.
func (m *Metrics) zeros() {
	for _, o := range allOutcomes {
		m.requests.WithLabelValues(o)
		if o != outcomePassthrough && o != outcomeAcquired && o != outcomeFailOpen {
			m.shadow.WithLabelValues(o) // every answer shadow mode can pass on
		}
	}
	for _, r := range allResults {
		m.responses.WithLabelValues(r)
	}
	for _, r := range []string{renewOK, renewLost, renewError} {
		m.renewals.WithLabelValues(r)
	}
	for _, r := range []string{waitReplayed, waitAcquired, waitOther, waitTimeout, waitGone, waitFull, waitError} {
		m.waits.WithLabelValues(r)
	}
	m.leaseLost.WithLabelValues(stageRenew)
	m.leaseLost.WithLabelValues(stageDone)
	m.unreplicated.WithLabelValues("acquire")
	m.unreplicated.WithLabelValues("complete")
	m.upstreamRetries.WithLabelValues(retryMayHaveRun)
	m.upstreamRetries.WithLabelValues(retryDeclaredSafe)
	for _, b := range []string{basisTypical, basisRunning, basisLease} {
		m.retryAfter.WithLabelValues(b)
	}
	for _, r := range []string{pendingStored, pendingStatusOnly, pendingLeaseLost, pendingGaveUp, pendingRefused, pendingBodyDrop} {
		m.pending.WithLabelValues(r)
	}
}

// observeStore records one store call's latency; a lost lease is a normal
// answer, not an error.
func (m *Metrics) observeStore(op string, start time.Time, err error) {
	result := "ok"
	switch {
	case errors.Is(err, idem.ErrLeaseLost):
		result = "lost"
	case errors.Is(err, idem.ErrUnreplicated):
		result = "unreplicated"
	case err != nil:
		result = "error"
	}
	m.redis.WithLabelValues(op, result).Observe(time.Since(start).Seconds())
}
