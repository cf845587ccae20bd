package processor

// Retry-After of a 409 in-progress: when the first request's answer is
// likely to be there, not when its lease would run out. A client that
// honours the lease left (30 s by default) waits 30 s for the answer to a
// 3 s job; one that honours this estimate retries about when it is stored.
//
// The rule (docs/errors.md, docs/waiting-and-shadow.md), with running how
// long the first request has held its key (the store's clock), typical the
// route's recent duration of a keyed request (0 while none is known) and
// left the lease left:
//
//	wait = typical - running   while the first request is younger than typical
//	wait = running             otherwise: retry once it has run twice as long
//	wait = left, rounded down to whole seconds, if that is less
//	Retry-After = wait rounded up to whole seconds, at least 1
//
// So a duplicate of a usual request is told to come back about when it ends;
// one of an unusually slow request (or of a route with no history yet)
// backs off in step with the request itself, at most doubling its total
// wait and never asked to wait past the lease.

import (
	"sync"
	"time"
)

// Bases of a Retry-After, the idemproxy_retry_after_seconds label: what
// decided the wait.
const (
	basisTypical = "typical" // the route's recent duration, less the time run
	basisRunning = "running" // the time run so far (slower than usual, or no history)
	basisLease   = "lease"   // capped by the lease left
)

// retryHint is the wait an in-progress refusal suggests, and why.
type retryHint struct {
	wait  time.Duration // before rounding; 0: no hint
	basis string
}

// header is the Retry-After value: the wait rounded up to whole seconds,
// at least 1.
func (h retryHint) header() string { return retryAfterSeconds(h.wait.Milliseconds()) }

// estimateRetry is the Retry-After for a key the first request has held
// for running, its lease ending in left, on a route whose keyed requests
// recently took typical (0: not known). A pure function: the table test
// covers it.
func estimateRetry(running, left, typical time.Duration) retryHint {
	running, left = max(running, 0), max(left, 0)
	h := retryHint{wait: running, basis: basisRunning}
	if typical > running {
		h = retryHint{wait: typical - running, basis: basisTypical}
	}
	// Whole seconds of the lease, rounded down: the wait rounded up then
	// never passes it (but for Retry-After's minimum of 1 s).
	if lease := left.Truncate(time.Second); h.wait > lease {
		h = retryHint{wait: lease, basis: basisLease}
	}
	return h
}

// Per-route durations: an exponentially weighted moving average of how long
// a keyed request took from its grant to its stored response, per route
// (authority and first path segment, routeOf), in this process only. The
// map is bounded: a client can name any path, so routes past
// maxDurationRoutes push out an arbitrary one rather than grow it.
const (
	maxDurationRoutes = 1024
	// durationWeight is the weight of the newest duration: recent enough
	// to follow a change of the backend within a few requests, steady
	// enough that one outlier moves the estimate by a quarter.
	durationWeight = 0.25
)

// routeDurations is the per-route estimator. The zero value is usable.
type routeDurations struct {
	mu     sync.Mutex
	routes map[string]time.Duration
}

// observe adds one keyed request of route that took d.
func (r *routeDurations) observe(route string, d time.Duration) {
	if d <= 0 {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	prev, ok := r.routes[route]
	switch {
	case ok:
		r.routes[route] = prev + time.Duration(durationWeight*float64(d-prev))
		return
	case r.routes == nil:
		r.routes = make(map[string]time.Duration)
	case len(r.routes) >= maxDurationRoutes:
		for other := range r.routes {
			delete(r.routes, other)
			break
		}
	}
	r.routes[route] = d
}

// typical is route's recent duration; 0 when none is known.
func (r *routeDurations) typical(route string) time.Duration {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.routes[route]
}

// sampleDuration adds this request's time from its grant to its response,
// seen in full, to its route's durations: the answer a duplicate waits for
// is about to be stored.
func (e *exchange) sampleDuration() {
	if !e.lock.granted.IsZero() {
		e.srv.durations.observe(e.req.route, time.Since(e.lock.granted))
	}
}
