package processor

// Deciding a keyed request once its fingerprint is known: the store I/O
// around judge (verdict.go). The first acquire of every request is made
// here; a duplicate that waits (wait.go) is judged again here on the look
// its wait ended with, and a granted key is taken over here.

import (
	"errors"
	"log/slog"
	"time"

	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"

	"github.com/idemproxy/idemproxy/internal/idem"
)

// decide takes or inspects the lock for the request whose body (nil: none)
// completes it, and answers the message of phase p. A nil reply means the
// stream ended while the request waited: nobody to answer.
func (e *exchange) decide(body []byte, p phase) *extprocv3.ProcessingResponse {
	if err := e.srv.gate.Usable(e.req.key); err != nil {
		if errors.Is(err, idem.ErrStoreReset) {
			return e.reply(storeReset(), p)
		}
		return e.reply(storeUnsafe(), p)
	}
	token, err := newToken()
	if err != nil {
		return e.reply(storeFailure(err, e.srv.cfg.FailOpen), p)
	}
	claim := idem.Claim{Token: token, Fingerprint: fingerprint(e.req.method, e.req.path, body), Scope: e.req.scope, Lease: e.pol.lease(),
		Wait: e.pol.waits(), Replay: e.replayAsk()}
	since := time.Now()
	l := e.storing(e.acquire(claim))
	v := judge(l, claim, e.pol, e.srv.cfg.FailOpen)
	if v.then == stepWait {
		w := e.wait(claim, l.acq, since)
		if w.gone {
			return nil
		}
		if w.acquireFailed {
			e.unanswered(token, w.err)
		}
		// Waited once: a key still in progress is now the 409.
		w.typical = e.typical()
		v = judge(e.storing(w.look), claim, e.pol.noWait(), e.srv.cfg.FailOpen)
	}
	if v.then == stepGrant {
		v = e.grant(claim, v)
	}
	return e.reply(e.viaEndpoint(v), p)
}

// acquire is the request's first acquire of its key.
func (e *exchange) acquire(claim idem.Claim) look {
	e.lock.leaseEnd = time.Now().Add(e.pol.lockTTL)
	acq, err := e.srv.store.Acquire(e.ctx, e.req.key, claim)
	if err != nil {
		e.unanswered(claim.Token, err)
		if errors.Is(err, idem.ErrUnreplicated) {
			// Not every replica a failover could promote has the lock
			// (or it was not even taken): a failover could lose it, and
			// a retry then run a second time. finish gives it back.
			e.srv.metrics.unreplicated.WithLabelValues("acquire").Inc()
		}
	}
	return look{acq: acq, err: err, typical: e.typical()}
}

// typical is the recent duration of a keyed request on this request's
// route, for the Retry-After of a key in progress (0: none known).
func (e *exchange) typical() time.Duration {
	return e.srv.durations.typical(e.req.route)
}

// storing adds to l whether this process holds the response of the key's
// first request, received and being stored in the background: the record
// then reads as in progress, or, once its lease ran out, as an unknown
// outcome, and both would tell the client less than is known.
func (e *exchange) storing(l look) look {
	if l.err == nil && (l.acq.State == idem.StateInProgress || l.acq.State == idem.StateUnknown && l.acq.Expired) {
		l.storing = e.srv.pending.storing(e.req.key)
	}
	return l
}

// unanswered notes that an acquire for token failed with err: Redis may
// have run it after we stopped waiting, so finish releases whatever lock
// the token holds (never one of another request's); unless the store says
// it wrote nothing.
func (e *exchange) unanswered(token string, err error) {
	if !e.srv.cfg.FailOpen && !errors.Is(err, idem.ErrNotTaken) {
		e.lock.token, e.lock.state = token, lockUnanswered
	}
}

// grant makes this request the key's owner, and returns v, the verdict
// that lets it go upstream with its fence; unless a record of the
// previous scope answers it instead.
func (e *exchange) grant(claim idem.Claim, v verdict) verdict {
	e.lock.token, e.lock.state, e.lock.granted = claim.Token, lockAcquired, time.Now()
	e.resp.rec.Fingerprint = claim.Fingerprint
	e.lock.dog = e.srv.startWatchdog(e.ctx, e.id, e.req.key, claim.Token, e.pol)
	if e.req.legacyKey != "" {
		if legacy, found := e.fromLegacy(claim); found {
			return legacy
		}
	}
	return v
}

// fromLegacy looks, during --scope-legacy-until, for a record the previous
// version wrote under its own scope for this request's key: a retry of a
// request made before the upgrade must find it. When one is there (or
// Redis cannot say), the new grant is given back and the request answered
// as that record says; found is false when the key is new in both schemes.
func (e *exchange) fromLegacy(claim idem.Claim) (v verdict, found bool) {
	acq, err := e.srv.store.Peek(e.ctx, e.req.legacyKey)
	if err == nil && acq.State == idem.StateFree {
		return verdict{}, false
	}
	e.release(resultReleasedEarly, true, "after", "a record under the previous scope")
	if err != nil {
		// Fail closed: the previous scheme may hold this key.
		return storeDown().
			logged(slog.LevelError, "store failed looking up the previous scope; request refused (fail-closed)", "error", err), true
	}
	v = existing(acq, claim, e.typical())
	v.recordKey = e.req.legacyKey
	return v, true
}
