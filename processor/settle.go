package processor

// Settling a key: the one store write that ends an acquired key's life as
// a stream sees it (store the response, release the lock, or mark the
// outcome unknown), retried when Redis fails for a moment, so a restart or a
// failover of a few seconds neither loses a response nor leaves a key held
// as an unknown outcome for the retention period.

import (
	"context"
	"errors"
	"time"

	"github.com/idemproxy/idemproxy/internal/idem"
)

// write is one settling store write and what to make of its result.
type write struct {
	op   string                          // for the retries metric and the log
	call func(ctx context.Context) error // one attempt, bounded by timedStore
	// untilReplicated retries an idem.ErrUnreplicated too: a release
	// must reach every replica a failover could promote, or the lock
	// comes back with it and holds its key with nobody to settle it.
	untilReplicated bool
	// done reports the final result; retried says an earlier attempt
	// failed, so its write may have happened all the same (for a release
	// or an abandon, a later ErrLeaseLost is then most likely our own
	// earlier success; a completion's repeat succeeds instead).
	done func(err error, retried bool)
	// keep, when set, takes a write that still fails after
	// --finalize-timeout into the background (pending.go): true when it
	// took it, and then done is its business.
	keep func(err error) bool
}

// kept hands a write that still fails after its retries to w.keep;
// true when kept. A write unreplicated after its retries is not kept:
// it is written.
func (w write) kept(err error) bool {
	return w.keep != nil && retryable(err) && w.keep(err)
}

// settle stops the watchdog and runs w. In band (Envoy waits for our reply
// to this message) it makes one attempt, bounded like any request-path
// call, and leaves a failed one to finish, which retries it once the
// stream is over. Otherwise it retries at once, until --finalize-timeout
// or the end of the lease, whichever is later; but a completion that still
// fails at --finalize-timeout is handed to the background (pending.go).
func (e *exchange) settle(w write, inBand bool) {
	e.lock.state = lockDone
	e.lock.settling = time.Now()
	// The watchdog stops first: a renewal racing the write would find the
	// record settled and report a false lease loss.
	e.lock.dog.stop()
	if end := e.lock.dog.leaseEnd(); end.After(e.lock.leaseEnd) {
		e.lock.leaseEnd = end
	}
	if !inBand {
		err, retried := e.srv.retrying(e.ctx, w, e.lock.leaseEnd)
		if !w.kept(err) {
			w.done(err, retried)
		}
		return
	}
	err := w.call(context.WithoutCancel(e.ctx)) // bounded by the store timeout
	if w.retryable(err) {
		e.lock.pending = &w
		return
	}
	w.done(err, false)
}

// retryable reports whether a settling write failed in a way worth
// another attempt: not when it succeeded, not when the record is no
// longer ours (a retry would get the same answer), and not when it was
// written but too few replicas acknowledged it in time (a retry would
// find it written).
func retryable(err error) bool {
	return err != nil && !errors.Is(err, idem.ErrLeaseLost) && !errors.Is(err, idem.ErrUnreplicated)
}

// retryable is retryable(err), but for a write that must be replicated
// (untilReplicated), ErrUnreplicated is worth another attempt as well.
func (w write) retryable(err error) bool {
	return retryable(err) || (w.untilReplicated && errors.Is(err, idem.ErrUnreplicated))
}

// Backoff between the attempts of a settling write.
const (
	firstBackoff = 50 * time.Millisecond
	maxBackoff   = time.Second
)

// retrying runs w until it succeeds, the record is no longer ours, or
// both --finalize-timeout and the lease (until) are over, on a context
// detached from the stream (Envoy resets it after a normal end). Until the
// lease ends the record still reads as in progress, so a write that gets
// through by then (Redis back after a partition: go-redis may refuse new
// connections for a second or two after it heals) is as good as one at
// once; after it, the key reads as an unknown outcome. Each attempt is
// bounded by the store timeout, so a hung connection cannot eat the
// whole budget.
func (s *Server) retrying(stream context.Context, w write, until time.Time) (err error, retried bool) {
	ctx, cancel := s.detached(stream)
	defer cancel()
	// A write that can be kept (a completion) is handed to the background
	// at --finalize-timeout instead (pending.go), so the stream's
	// goroutine is not held for the lease; unless it is written and only
	// waits for replicas, which goes on as before.
	handoff := deadlineOf(ctx)
	if s.cfg.FinalizeUntilLease && until.After(deadlineOf(ctx)) {
		cancel()
		ctx, cancel = context.WithDeadline(context.WithoutCancel(stream), until)
		defer cancel()
	}
	backoff := firstBackoff
	for n := 0; ; n++ {
		if n > 0 {
			s.metrics.retries.WithLabelValues(w.op).Inc()
		}
		prev := err
		err = w.call(ctx)
		if prev != nil && ctx.Err() != nil && errors.Is(err, ctx.Err()) {
			// The last attempt was cut by our own deadline: what it
			// says is only that time ran out, while the attempt before
			// it said what the store did (say, written but unconfirmed
			// by the replicas).
			err = prev
		}
		if !w.retryable(err) || ctx.Err() != nil || w.keep != nil && retryable(err) && !time.Now().Before(handoff) {
			return err, n > 0
		}
		s.log.Debug("a settling write failed; trying again", "op", w.op, "attempt", n+1, "error", err)
		if !sleep(ctx, min(backoff, time.Until(deadlineOf(ctx)))) {
			return err, true
		}
		if ctx.Err() != nil {
			// Woken at the deadline: another attempt could only fail on
			// it, and hide why the last one failed.
			return err, true
		}
		backoff = min(2*backoff, maxBackoff)
	}
}

// sleep waits d, or until ctx ends; false when ctx ended first.
func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

// deadlineOf is ctx's deadline; detached contexts always have one.
func deadlineOf(ctx context.Context) time.Time {
	d, _ := ctx.Deadline()
	return d
}

// triedFor is how long the settling write has been tried so far.
func (e *exchange) triedFor() string {
	return time.Since(e.lock.settling).Round(time.Millisecond).String()
}

// afterLease says what a key whose lease ended without a settlement
// reads as, under this route's policy.
func (e *exchange) afterLease() string {
	if e.pol.onUnknown.rerun() {
		return "its lock has expired and a retry runs it again (--on-unknown=rerun-after-ttl)"
	}
	return "the key reads as an unknown outcome (409 outcome-unknown) for the retention, until an operator clears it"
}

// release deletes our lock so the client can retry at once: the request
// provably did not run, or ran into a status that is not stored.
func (e *exchange) release(result string, inBand bool, attrs ...any) {
	e.releaseWith(result, inBand, false, attrs...)
}

// releaseWith is release; unsure says the lock may not exist (the
// acquire failed, and may or may not have reached Redis in time).
func (e *exchange) releaseWith(result string, inBand, unsure bool, attrs ...any) {
	e.settle(write{op: "release", untilReplicated: true,
		call: func(ctx context.Context) error { return e.srv.store.Release(ctx, e.req.key, e.lock.token) },
		done: func(err error, _ bool) {
			e.settledAs(result)
			switch {
			case errors.Is(err, idem.ErrUnreplicated):
				e.logger().Warn("the lock was deleted, but not every replica a failover could promote confirmed it, tried for "+e.triedFor()+"; "+
					"if one that still has it is promoted, "+e.afterLease(), append(attrs, "error", err)...)
			case retryable(err) && unsure:
				// The acquire failed without a definite answer (a timeout,
				// a broken connection): whether it took a lock is unknown.
				e.logger().Warn("an acquire failed without saying whether it took the lock, and giving that lock back failed too, tried for "+e.triedFor()+
					"; if the acquire did take it, once its lease ends "+e.afterLease(), append(attrs, "error", err)...)
			case retryable(err):
				e.logger().Error("releasing the lock failed, tried for "+e.triedFor()+"; nothing more will be written: once its lease ends, "+e.afterLease(),
					append(attrs, "error", err, "lease_ends", e.lock.leaseEnd.UTC().Format(time.RFC3339))...)
			case errors.Is(err, idem.ErrLeaseLost) && unsure:
				e.logger().Debug("the failed acquire had taken no lock", attrs...)
			default:
				e.logger().Debug("lock released", append(attrs, "result", result)...)
			}
		},
	}, inBand)
}

// finish runs when the stream ends, however it ends.
func (e *exchange) finish() {
	switch {
	case e.lock.pending != nil:
		w := *e.lock.pending
		e.lock.pending = nil
		e.srv.metrics.retries.WithLabelValues(w.op).Inc()
		err, _ := e.srv.retrying(e.ctx, w, e.lock.leaseEnd)
		if !w.kept(err) {
			w.done(err, true)
		}
	case e.lock.state == lockUnanswered:
		// Acquire failed, so the client got 503 and nothing went
		// upstream; but Redis may have run the acquire after we stopped
		// waiting. Our token's lock, if it exists, must go, or it would
		// turn into an unknown outcome for a request that never ran.
		// (One that reached Redis after we stopped waiting created none:
		// it carried a deadline.)
		e.releaseWith(resultReleasedEarly, false, true, "after", "a failed acquire")
	case e.lock.state == lockAcquired:
		// Our CONTINUE never went out: the request cannot be upstream.
		e.release(resultReleasedEarly, false)
	case e.lock.state == lockForwarded && e.resp.collecting:
		// The upstream's status arrived, so the request ran; only its body
		// is missing (the client hung up, or the upstream reset mid-body).
		// That is an outcome, not an unknown one: stored without the body,
		// so a retry learns the status and never runs it again.
		e.resp.rec.BodyStored, e.resp.rec.Incomplete = false, true
		e.complete(false)
	case e.lock.state == lockForwarded:
		e.srv.checkAnswered(false)
		e.abandon("stream ended before the response headers arrived", false)
	}
}

// abandon handles an unknown outcome: the request may have run and we saw
// no response, so a re-run could execute it twice. By default the key is
// marked so, and refused for the retention period until an operator clears
// it; with --on-unknown=rerun-after-ttl its lock is left to expire instead.
func (e *exchange) abandon(why string, inBand bool, attrs ...any) {
	e.resp.collecting = false
	e.settledAs(resultUnknownOutcome)
	if e.pol.onUnknown.rerun() {
		e.lock.state = lockDone
		e.lock.dog.stop()
		e.logger().Warn("outcome unknown; lock left to expire, after which a retry runs again (--on-unknown=rerun-after-ttl): "+why,
			append(attrs, "lock_ttl", e.pol.lockTTL.String())...)
		return
	}
	e.settle(write{op: "abandon",
		call: func(ctx context.Context) error {
			return e.srv.store.Abandon(ctx, e.req.key, e.lock.token, e.pol.retention)
		},
		done: func(err error, retried bool) {
			switch {
			case errors.Is(err, idem.ErrLeaseLost) && !retried:
				e.srv.metrics.leaseLost.WithLabelValues(stageDone).Inc()
				e.logger().Warn("outcome unknown, but the key is no longer ours (an operator deleted it): "+why, attrs...)
			case retryable(err):
				// The record still holds our lease: once it runs out, the
				// key reads as an unknown outcome all the same.
				e.settledAs(resultStoreError)
				e.logger().Error("outcome unknown, and marking the key failed, tried for "+e.triedFor()+"; its record still holds our lease, which is read as an unknown outcome once it ends: "+why,
					append(attrs, "error", err, "lock_ttl", e.pol.lockTTL.String())...)
			default:
				e.logger().Warn("outcome unknown; key held until an operator clears it or the retention ends: "+why,
					append(attrs, "hold", e.pol.retention.String())...)
			}
		},
	}, inBand)
}
