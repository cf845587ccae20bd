package processor

import (
	"bytes"
	"context"
	"fmt"
	"time"

	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"

	"github.com/idemproxy/idemproxy/internal/idem"
)

// decide takes or inspects the lock once the fingerprint is known.
// cont builds the CONTINUE of the message being answered.
func (e *exchange) decide(body []byte, cont func() *extprocv3.ProcessingResponse) *extprocv3.ProcessingResponse {
	if err := e.srv.gate.Usable(); err != nil {
		// The store answers but could lose what it is given: nothing runs
		// on its word, fail-open or not. The gate logs the cause itself,
		// once per change, not once per request.
		e.decided(outcomeStoreUnsafe)
		return problemReply(probStoreUnavail, "The idempotency store is not safe to use; the request was not run. Retry later.", "1")
	}
	fp := fingerprint(e.method, e.path, body)
	token, err := newToken()
	if err != nil {
		return e.storeFailed(err, cont)
	}
	ctx, cancel := context.WithTimeout(e.ctx, e.srv.cfg.StoreTimeout)
	start := time.Now()
	acq, err := e.srv.store.Acquire(ctx, e.key, idem.Claim{Token: token, Fingerprint: fp, Scope: e.scope, Lease: e.pol.lease()})
	cancel()
	e.srv.metrics.observeStore("acquire", start, err)
	if err != nil {
		if !e.srv.cfg.FailOpen {
			e.token, e.lock = token, lockUnanswered
		}
		return e.storeFailed(err, cont)
	}
	if acq.State == idem.StateAcquired {
		e.decided(outcomeAcquired)
		e.granted(acq.Fence)
		e.token, e.lock = token, lockAcquired
		e.rec.Fingerprint = fp
		e.dog = e.srv.startWatchdog(e.ctx, e.id, e.key, token, e.pol)
		return e.srv.fence(cont(), acq.Fence)
	}
	return e.answerExisting(acq, fp)
}

// answerExisting answers a request whose key another request has taken.
func (e *exchange) answerExisting(acq idem.Acquisition, fp []byte) *extprocv3.ProcessingResponse {
	switch {
	case !bytes.Equal(acq.Fingerprint, fp):
		e.decided(outcomeMismatch)
		return problemReply(probMismatch, "This idempotency key was first used with a different method, path or body.", "")
	case acq.State == idem.StateUnknown:
		e.decided(outcomeUnknown)
		if acq.Expired {
			// The first time anyone learns of a crash: its owner never
			// said a word, so this log line is the operator's trace of it.
			e.logger().Warn("outcome unknown: the key's lease ran out without word from its owner (crashed or cut off from Redis); refused, not run",
				"scope", e.scope, "held_for", acq.LockTTL.Round(time.Second).String())
		}
		return problemReply(probOutcomeUnknown, "An earlier request with this idempotency key may have run, but its outcome is unknown; it will not run again. An operator can clear the key.", "")
	case acq.State == idem.StateInProgress:
		e.decided(outcomeConflict)
		return problemReply(probInProgress, "The first request with this idempotency key is still running; retry later.",
			retryAfterSeconds(acq.LockTTL.Milliseconds()))
	case acq.Record == nil || !acq.Record.BodyStored:
		e.decided(outcomeNotStored)
		return problemReply(probNotStored, notStoredDetail(acq.Record), "")
	default:
		e.decided(outcomeReplayed)
		hs := append(acq.Record.Headers[:len(acq.Record.Headers):len(acq.Record.Headers)],
			idem.Header{Name: replayedHeader, Value: "true"})
		return immediate(acq.Record.Status, hs, acq.Record.Body, "idemproxy_replayed")
	}
}

// notStoredDetail tells the client what became of a request that ran but
// whose response cannot be replayed.
func notStoredDetail(rec *idem.Record) string {
	status, why := 0, "its response was too large to store"
	if rec != nil {
		status = rec.Status
		if rec.Incomplete {
			why = "its response body never reached the proxy in full (the connection broke mid-body)"
		}
	}
	return fmt.Sprintf("The request with this idempotency key completed with status %d, but %s; it will not run again.", status, why)
}

// storeFailed fails closed (503, nothing upstream) unless fail-open is set.
func (e *exchange) storeFailed(err error, cont func() *extprocv3.ProcessingResponse) *extprocv3.ProcessingResponse {
	if e.srv.cfg.FailOpen {
		e.decided(outcomeFailOpen)
		e.logger().Warn("store failed; request let through unguarded (fail-open)", "error", err)
		return e.srv.fence(cont(), 0)
	}
	e.decided(outcomeStoreError)
	e.logger().Error("store failed; request refused (fail-closed)", "error", err)
	return problemReply(probStoreUnavail, "The idempotency store did not answer; the request was not run. Retry later.", "1")
}
