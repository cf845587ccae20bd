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
		e.srv.metrics.requests.WithLabelValues(outcomeStoreUnsafe).Inc()
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
	if acq.State != idem.StateAcquired {
		return e.answerExisting(acq, fp)
	}
	e.token, e.lock = token, lockAcquired
	e.rec.Fingerprint = fp
	e.dog = e.srv.startWatchdog(e.ctx, e.id, e.key, token, e.pol)
	if e.legacyKey != "" {
		if resp := e.fromLegacy(fp); resp != nil {
			return resp
		}
	}
	e.srv.metrics.requests.WithLabelValues(outcomeAcquired).Inc()
	return e.srv.fence(cont(), acq.Fence)
}

// fromLegacy looks, during --scope-legacy-until, for a record the previous
// version wrote under its own scope for this request's key: a retry of a
// request made before the upgrade must find it. When one is there (or
// Redis cannot say), the new grant is given back and the request answered
// as that record says; nil means the key is new in both schemes.
func (e *exchange) fromLegacy(fp []byte) *extprocv3.ProcessingResponse {
	ctx, cancel := context.WithTimeout(e.ctx, e.srv.cfg.StoreTimeout)
	start := time.Now()
	acq, err := e.srv.store.Peek(ctx, e.legacyKey)
	cancel()
	e.srv.metrics.observeStore("peek", start, err)
	if err == nil && acq.State == idem.StateFree {
		return nil
	}
	e.release(resultReleasedEarly, true, "after", "a record under the previous scope")
	if err != nil {
		// Fail closed: the previous scheme may hold this key.
		e.srv.metrics.requests.WithLabelValues(outcomeStoreError).Inc()
		e.logger().Error("store failed looking up the previous scope; request refused (fail-closed)", "error", err)
		return problemReply(probStoreUnavail, "The idempotency store did not answer; the request was not run. Retry later.", "1")
	}
	return e.answerExisting(acq, fp)
}

// answerExisting answers a request whose key another request has taken.
func (e *exchange) answerExisting(acq idem.Acquisition, fp []byte) *extprocv3.ProcessingResponse {
	switch {
	case !bytes.Equal(acq.Fingerprint, fp):
		e.srv.metrics.requests.WithLabelValues(outcomeMismatch).Inc()
		return problemReply(probMismatch, "This idempotency key was first used with a different method, path or body.", "")
	case acq.State == idem.StateUnknown:
		e.srv.metrics.requests.WithLabelValues(outcomeUnknown).Inc()
		if acq.Expired {
			// The first time anyone learns of a crash: its owner never
			// said a word, so this log line is the operator's trace of it.
			e.logger().Warn("outcome unknown: the key's lease ran out without word from its owner (crashed or cut off from Redis); refused, not run",
				"scope", e.scope, "held_for", acq.LockTTL.Round(time.Second).String())
		}
		return problemReply(probOutcomeUnknown, "An earlier request with this idempotency key may have run, but its outcome is unknown; it will not run again. An operator can clear the key.", "")
	case acq.State == idem.StateInProgress:
		e.srv.metrics.requests.WithLabelValues(outcomeConflict).Inc()
		return problemReply(probInProgress, "The first request with this idempotency key is still running; retry later.",
			retryAfterSeconds(acq.LockTTL.Milliseconds()))
	case acq.Record == nil || !acq.Record.BodyStored:
		e.srv.metrics.requests.WithLabelValues(outcomeNotStored).Inc()
		return problemReply(probNotStored, notStoredDetail(acq.Record), "")
	default:
		e.srv.metrics.requests.WithLabelValues(outcomeReplayed).Inc()
		return immediate(acq.Record.Status, replayHeaders(acq.Record), acq.Record.Body, "idemproxy_replayed")
	}
}

// contentTypeStash carries a replay's true Content-Type past Envoy, which
// rewrites it in every local reply (an immediate response is one): it
// drops Content-Type when the body is empty, and adds text/plain when a
// body has none (seen with Envoy 1.40). The Lua filter in the shipped
// envoy.yaml puts the stashed value back, "-" meaning none, and removes the
// stash. It is only sent when Envoy would otherwise change the type.
const contentTypeStash = "x-idemproxy-content-type"

// replayHeaders are the stored headers plus the replay marker, and the
// Content-Type stash where Envoy would alter the type.
func replayHeaders(rec *idem.Record) []idem.Header {
	hs := append(rec.Headers[:len(rec.Headers):len(rec.Headers)], idem.Header{Name: replayedHeader, Value: "true"})
	ct, has := "", false
	for _, h := range rec.Headers {
		if h.Name == "content-type" {
			ct, has = h.Value, true
			break
		}
	}
	switch {
	case len(rec.Body) == 0 && has:
		hs = append(hs, idem.Header{Name: contentTypeStash, Value: ct})
	case len(rec.Body) > 0 && !has:
		hs = append(hs, idem.Header{Name: contentTypeStash, Value: "-"})
	}
	return hs
}

// notStoredDetail tells the client what became of a request that ran but
// whose response cannot be replayed.
func notStoredDetail(rec *idem.Record) string {
	status, why := 0, "its response was too large to store"
	if rec != nil {
		status = rec.Status
		switch {
		case rec.Incomplete:
			why = "its response body never reached the proxy in full (the connection broke mid-body)"
		case rec.Trailers:
			why = "its response ended with HTTP trailers, which cannot be replayed"
		}
	}
	return fmt.Sprintf("The request with this idempotency key completed with status %d, but %s; it will not run again.", status, why)
}

// storeFailed fails closed (503, nothing upstream) unless fail-open is set.
func (e *exchange) storeFailed(err error, cont func() *extprocv3.ProcessingResponse) *extprocv3.ProcessingResponse {
	if e.srv.cfg.FailOpen {
		e.srv.metrics.requests.WithLabelValues(outcomeFailOpen).Inc()
		e.logger().Warn("store failed; request let through unguarded (fail-open)", "error", err)
		return e.srv.fence(cont(), 0)
	}
	e.srv.metrics.requests.WithLabelValues(outcomeStoreError).Inc()
	e.logger().Error("store failed; request refused (fail-closed)", "error", err)
	return problemReply(probStoreUnavail, "The idempotency store did not answer; the request was not run. Retry later.", "1")
}
