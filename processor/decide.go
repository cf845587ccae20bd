package processor

import (
	"bytes"
	"errors"
	"time"

	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"

	"github.com/idemproxy/idemproxy/internal/idem"
)

// decide takes or inspects the lock once the fingerprint is known.
// cont builds the CONTINUE of the message being answered. A nil reply
// means the stream ended while the request waited: nobody to answer.
func (e *exchange) decide(body []byte, cont func() *extprocv3.ProcessingResponse) *extprocv3.ProcessingResponse {
	if err := e.srv.gate.Usable(); err != nil {
		// The store answers but could lose what it is given: nothing runs
		// on its word, fail-open or not. The gate logs the cause itself,
		// once per change, not once per request.
		e.decided(outcomeStoreUnsafe)
		return e.refuse(outcomeStoreUnsafe, problemReply(probStoreUnavail,
			"The idempotency store is not safe to use; the request was not run. Retry later.", "1"), cont)
	}
	fp := fingerprint(e.method, e.path, body)
	token, err := newToken()
	if err != nil {
		return e.storeFailed(err, cont)
	}
	claim := idem.Claim{Token: token, Fingerprint: fp, Scope: e.scope, Lease: e.pol.lease(), Wait: e.pol.waits()}
	since := time.Now()
	e.leaseEnd = since.Add(e.pol.lockTTL)
	acq, err := e.look(claim)
	if err != nil {
		e.unanswered(token, err)
		if errors.Is(err, idem.ErrUnreplicated) {
			// Not every replica a failover could promote has the lock
			// (or it was not even taken): a failover could lose it, and
			// a retry then run a second time. finish gives it back.
			e.srv.metrics.unreplicated.WithLabelValues("acquire").Inc()
		}
		return e.storeFailed(err, cont)
	}
	switch {
	case acq.State == idem.StateAcquired:
		return e.granted(claim, acq, cont)
	case acq.State == idem.StateInProgress && e.pol.waits() && bytes.Equal(acq.Fingerprint, fp):
		return e.wait(claim, acq, since, cont)
	default:
		return e.answerExisting(acq, fp, cont)
	}
}

// unanswered notes that an acquire for token failed with err: Redis may
// have run it after we stopped waiting, so finish releases whatever lock
// the token holds (never one of another request's); unless the store says
// it wrote nothing.
func (e *exchange) unanswered(token string, err error) {
	if !e.srv.cfg.FailOpen && !errors.Is(err, idem.ErrNotTaken) {
		e.token, e.lock = token, lockUnanswered
	}
}

// granted makes this request the key's owner and lets it go upstream with
// its fence.
func (e *exchange) granted(claim idem.Claim, acq idem.Acquisition, cont func() *extprocv3.ProcessingResponse) *extprocv3.ProcessingResponse {
	e.token, e.lock = claim.Token, lockAcquired
	e.rec.Fingerprint = claim.Fingerprint
	e.dog = e.srv.startWatchdog(e.ctx, e.id, e.key, claim.Token, e.pol)
	if e.legacyKey != "" {
		if resp := e.fromLegacy(claim.Fingerprint, cont); resp != nil {
			return resp
		}
	}
	e.decided(outcomeAcquired)
	e.fenced(acq.Fence)
	return e.srv.fence(cont(), acq.Fence)
}

// fromLegacy looks, during --scope-legacy-until, for a record the previous
// version wrote under its own scope for this request's key: a retry of a
// request made before the upgrade must find it. When one is there (or
// Redis cannot say), the new grant is given back and the request answered
// as that record says; nil means the key is new in both schemes.
func (e *exchange) fromLegacy(fp []byte, cont func() *extprocv3.ProcessingResponse) *extprocv3.ProcessingResponse {
	acq, err := e.srv.store.Peek(e.ctx, e.legacyKey)
	if err == nil && acq.State == idem.StateFree {
		return nil
	}
	e.release(resultReleasedEarly, true, "after", "a record under the previous scope")
	if err != nil {
		// Fail closed: the previous scheme may hold this key.
		e.decided(outcomeStoreError)
		e.logger().Error("store failed looking up the previous scope; request refused (fail-closed)", "error", err)
		return e.refuse(outcomeStoreError, problemReply(probStoreUnavail,
			"The idempotency store did not answer; the request was not run. Retry later.", "1"), cont)
	}
	return e.answerExisting(acq, fp, cont)
}

// answerExisting answers a request whose key another request has taken.
func (e *exchange) answerExisting(acq idem.Acquisition, fp []byte, cont func() *extprocv3.ProcessingResponse) *extprocv3.ProcessingResponse {
	outcome, resp := e.existing(acq, fp)
	e.decided(outcome)
	return e.refuse(outcome, resp, cont)
}

// existing is the answer a record gives, and its outcome label.
func (e *exchange) existing(acq idem.Acquisition, fp []byte) (string, *extprocv3.ProcessingResponse) {
	switch {
	case !bytes.Equal(acq.Fingerprint, fp):
		return outcomeMismatch, problemReply(probMismatch, "This idempotency key was first used with a different method, path or body.", "")
	case acq.State == idem.StateUnknown:
		if acq.Expired {
			// The first time anyone learns of a crash: its owner never
			// said a word, so this log line is the operator's trace of it.
			e.logger().Warn("outcome unknown: the key's lease ran out without word from its owner (crashed or cut off from Redis); refused, not run",
				"scope", e.scope, "held_for", acq.LockTTL.Round(time.Second).String())
		}
		return outcomeUnknown, problemReply(probOutcomeUnknown, "An earlier request with this idempotency key may have run, but its outcome is unknown; it will not run again. An operator can clear the key.", "")
	case acq.State == idem.StateInProgress:
		return outcomeConflict, problemReply(probInProgress, "The first request with this idempotency key is still running; retry later.",
			retryAfterSeconds(acq.LockTTL.Milliseconds()))
	case acq.Record == nil || !acq.Record.BodyStored:
		return outcomeNotStored, problemReply(probNotStored, notStoredDetail(acq.Record), "")
	default:
		return outcomeReplayed, immediate(acq.Record.Status, replayHeaders(acq.Record), acq.Record.Body, "idemproxy_replayed")
	}
}

// storeFailed fails closed (503, nothing upstream) unless fail-open is set.
func (e *exchange) storeFailed(err error, cont func() *extprocv3.ProcessingResponse) *extprocv3.ProcessingResponse {
	if e.srv.cfg.FailOpen {
		e.decided(outcomeFailOpen)
		e.logger().Warn("store failed; request let through unguarded (fail-open)", "error", err)
		return e.srv.fence(cont(), 0)
	}
	e.decided(outcomeStoreError)
	if errors.Is(err, idem.ErrUnreplicated) {
		e.logger().Warn("lock taken, but fewer replicas acknowledged it than --redis-min-replicas asks; request refused (fail-closed)", "error", err)
		return e.refuse(outcomeStoreError, problemReply(probStoreUnavail,
			"The idempotency store could not make the key durable on enough replicas; the request was not run. Retry later.", "1"), cont)
	}
	e.logger().Error("store failed; request refused (fail-closed)", "error", err)
	return e.refuse(outcomeStoreError, problemReply(probStoreUnavail,
		"The idempotency store did not answer; the request was not run. Retry later.", "1"), cont)
}
