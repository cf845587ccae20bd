package processor

// Waiting duplicates (--in-progress=wait): a retry that arrives while the
// first request with its key still runs is held, not refused, and gets the
// first request's answer the moment it exists, exactly as a later retry
// would: the replay, or, when the first request gave its key back, its own
// run. Envoy must not time the held message out, so idemproxy first
// extends Envoy's message timer (override_message_timeout, honoured once
// per message and only up to the filter's max_message_timeout).

import (
	"context"
	"time"

	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/idemproxy/idemproxy/internal/idem"
)

// Watcher tells a waiting duplicate when its key was settled (completed,
// released or marked unknown). settled may stay silent (a lost message):
// the waiter then looks again after --wait-recheck. fresh says the key
// had no waiter in this process yet, so a settlement just before may have
// been missed. redisstore.Watcher implements it on sharded Pub/Sub.
type Watcher interface {
	Watch(ctx context.Context, key string) (settled <-chan struct{}, fresh bool, stop func(), err error)
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
// progress, with this request's fingerprint).
func (e *exchange) wait(claim idem.Claim, acq idem.Acquisition, cont func() *extprocv3.ProcessingResponse) *extprocv3.ProcessingResponse {
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
	var settled <-chan struct{}
	lookNow := false
	if e.srv.watcher != nil {
		ch, fresh, stop, err := e.srv.watcher.Watch(e.ctx, e.key)
		if err != nil {
			// No notices: the re-checks alone will see the end.
			e.logger().Warn("waiting without completion notices", "error", err)
		} else {
			defer stop()
			settled, lookNow = ch, fresh
		}
	}
	deadline := time.NewTimer(e.pol.maxWait)
	defer deadline.Stop()
	recheck := time.NewTicker(e.srv.cfg.WaitRecheck)
	defer recheck.Stop()
	for {
		if !lookNow {
			select {
			case <-e.ctx.Done():
				m.waits.WithLabelValues(waitGone).Inc()
				return nil
			case <-deadline.C:
				m.waits.WithLabelValues(waitTimeout).Inc()
				return e.answerExisting(acq, claim.Fingerprint, cont)
			case <-settled:
			case <-recheck.C:
			}
		}
		lookNow = false
		next, err := e.look(claim)
		if err != nil {
			m.waits.WithLabelValues(waitError).Inc()
			e.unanswered(claim.Token)
			return e.storeFailed(err, cont)
		}
		switch {
		case next.State == idem.StateInProgress && bytesEqual(next.Fingerprint, claim.Fingerprint):
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

func bytesEqual(a, b []byte) bool { return string(a) == string(b) }
