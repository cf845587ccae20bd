package processor

// Waiting duplicates (--in-progress=wait): a retry that arrives while the
// first request with its key still runs is held, not refused, and gets the
// first request's answer the moment it exists, exactly as a later retry
// would: the replay, or, when the first request gave its key back, its own
// run. Envoy must not time the held message out, so idemproxy first
// extends Envoy's message timer (override_message_timeout, honoured once
// per message and only up to the filter's max_message_timeout).

import (
	"bytes"
	"context"
	"time"

	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/idemproxy/idemproxy/internal/idem"
)

// Watcher tells waiting duplicates when to look at their key again: when
// it was settled (completed, released or marked unknown), and on a slow
// recheck, since a notice can be lost. All of a key's waiters in a
// process are prompted at the same moment, so they share one read
// (Server.peekShared). since is when the waiter last looked: a settlement
// heard after it prompts at once. redisstore.Watcher implements it on
// sharded Pub/Sub.
type Watcher interface {
	Watch(ctx context.Context, key string, since time.Time) (wake <-chan struct{}, stop func(), err error)
}

// waitSlack is the time, past the longest wait, that the final look and
// answer may take before Envoy's extended timer fires.
const waitSlack = time.Second

// Wait outcomes, the label of idemproxy_waits_total.
const (
	waitReplayed = "replayed" // the first request completed: its replay
	waitAcquired = "acquired" // it gave its key back: this one runs
	waitOther    = "other"    // unknown outcome, not stored, mismatch
	waitTimeout  = "timeout"  // --max-wait passed: 409 in-progress
	waitGone     = "gone"     // the client hung up while waiting
	waitFull     = "full"     // --max-waiters reached: 409 at once
	waitError    = "error"    // Redis failed: 503
)

// wait holds a duplicate until its key is settled or the wait ends, then
// answers as a new look at the key says. acq is the first look (in
// progress, with this request's fingerprint), made at since.
func (e *exchange) wait(claim idem.Claim, acq idem.Acquisition, since time.Time, cont func() *extprocv3.ProcessingResponse) *extprocv3.ProcessingResponse {
	m := e.srv.metrics
	if n := e.srv.waiters.Add(1); n > int64(e.srv.cfg.MaxWaiters) {
		e.srv.waiters.Add(-1)
		m.waits.WithLabelValues(waitFull).Inc()
		return e.answerExisting(acq, claim.Fingerprint, cont)
	}
	m.waiting.Inc()
	start := time.Now()
	defer func() {
		e.srv.waiters.Add(-1)
		m.waiting.Dec()
		m.waitSeconds.Observe(time.Since(start).Seconds())
	}()
	// Extend Envoy's timer for this message before anything else, once.
	if err := e.send(&extprocv3.ProcessingResponse{OverrideMessageTimeout: durationpb.New(e.pol.maxWait + waitSlack)}); err != nil {
		m.waits.WithLabelValues(waitGone).Inc()
		return nil // the stream is gone: nobody to answer
	}
	wake, tick, stop := e.watch(since)
	defer stop()
	deadline := time.NewTimer(e.pol.maxWait)
	defer deadline.Stop()
	for {
		select {
		case <-e.ctx.Done():
			m.waits.WithLabelValues(waitGone).Inc()
			return nil
		case <-deadline.C:
			m.waits.WithLabelValues(waitTimeout).Inc()
			return e.answerExisting(acq, claim.Fingerprint, cont)
		case <-wake:
		case <-tick:
		}
		next, err := e.srv.peekShared(e.ctx, e.key)
		if e.ctx.Err() != nil {
			m.waits.WithLabelValues(waitGone).Inc()
			return nil
		}
		if err == nil && e.mayTake(next, claim) {
			// Free (its owner gave it back): race for it as a new
			// request would; one waiter wins, the others wait on.
			next, err = e.look(claim)
		}
		if err != nil {
			m.waits.WithLabelValues(waitError).Inc()
			e.unanswered(claim.Token)
			return e.storeFailed(err, cont)
		}
		switch {
		case next.State == idem.StateInProgress && bytes.Equal(next.Fingerprint, claim.Fingerprint):
			acq = next // still running (or another waiter took it over): wait on
		case next.State == idem.StateAcquired:
			m.waits.WithLabelValues(waitAcquired).Inc()
			return e.granted(claim, next, cont)
		case next.State == idem.StateCompleted && next.Record != nil && next.Record.BodyStored:
			m.waits.WithLabelValues(waitReplayed).Inc()
			return e.answerExisting(next, claim.Fingerprint, cont)
		default:
			m.waits.WithLabelValues(waitOther).Inc()
			return e.answerExisting(next, claim.Fingerprint, cont)
		}
	}
}

// mayTake says whether a shared look found the key takeable by claim: free,
// or (under --on-unknown=rerun-after-ttl) left by an owner whose lease ran
// out.
func (e *exchange) mayTake(acq idem.Acquisition, claim idem.Claim) bool {
	return acq.State == idem.StateFree || (acq.State == idem.StateUnknown && acq.Expired && claim.Lease.Takeover)
}

// watch registers the waiter with the Watcher. Without one (or when it
// fails) the waiter looks on its own every --wait-recheck (tick).
func (e *exchange) watch(since time.Time) (wake <-chan struct{}, tick <-chan time.Time, stop func()) {
	if e.srv.watcher != nil {
		wake, stop, err := e.srv.watcher.Watch(e.ctx, e.key, since)
		if err == nil {
			return wake, nil, stop
		}
		e.logger().Warn("waiting without completion notices, re-checking every --wait-recheck", "error", err)
	}
	t := time.NewTicker(e.srv.cfg.WaitRecheck)
	return nil, t.C, t.Stop
}

// peekShared reads key for every waiter of it in this process that asks
// at the same time: they are prompted together, and one read serves them
// all. It is not tied to one waiter's stream (whose client may leave while
// the others still wait), only bounded like any store call.
func (s *Server) peekShared(ctx context.Context, key string) (idem.Acquisition, error) {
	ch := s.peeks.DoChan(key, func() (any, error) {
		pctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), s.cfg.StoreTimeout)
		defer cancel()
		start := time.Now()
		acq, err := s.store.Peek(pctx, key)
		s.metrics.observeStore("peek", start, err)
		return acq, err
	})
	select {
	case <-ctx.Done():
		return idem.Acquisition{}, ctx.Err()
	case r := <-ch:
		if r.Err != nil {
			return idem.Acquisition{}, r.Err
		}
		return r.Val.(idem.Acquisition), nil
	}
}

// look acquires the key once more for claim, bounded like any request-path
// store call.
func (e *exchange) look(claim idem.Claim) (idem.Acquisition, error) {
	ctx, cancel := context.WithTimeout(e.ctx, e.srv.cfg.StoreTimeout)
	defer cancel()
	start := time.Now()
	acq, err := e.srv.store.Acquire(ctx, e.key, claim)
	e.srv.metrics.observeStore("acquire", start, err)
	return acq, err
}
