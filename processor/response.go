package processor

// The response phase of an exchange: store what the upstream answered, or
// release or abandon the lock when it cannot be stored.

import (
	"bytes"
	"errors"
	"strconv"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"

	"github.com/idemproxy/idemproxy/internal/idem"
)

func (e *exchange) onResponseHeaders(h *extprocv3.HttpHeaders, origin responseOrigin) *extprocv3.ProcessingResponse {
	skipBody := continueResponseHeaders()
	skipBody.ModeOverride = skipResponseBody()
	if e.lock != lockForwarded {
		return skipBody
	}
	hs := h.GetHeaders().GetHeaders()
	status := responseStatus(hs)
	switch {
	case origin == originNeverSent:
		e.release(resultReleasedStatus, "status", status, "local_reply", true)
		return skipBody
	case origin == originLocalUnknown:
		// Envoy gave up waiting (timeout, reset): the upstream may still
		// run the request, so a retry must not.
		e.abandon("local reply after the request was sent", "status", status)
		return skipBody
	case status == 0 || e.srv.cfg.NoStore.Contains(status):
		e.release(resultReleasedStatus, "status", status)
		return skipBody
	}
	e.rec.Status = status
	e.rec.Headers = e.srv.filter.storable(hs)
	e.rec.BodyStored = true
	if h.GetEndOfStream() {
		e.complete()
	} else {
		e.collecting = true
	}
	return continueResponseHeaders()
}

// responseStatus returns the final status, or 0 for a missing, malformed or
// informational (1xx) one: those are never stored, so the key is released.
func responseStatus(hs []*corev3.HeaderValue) int {
	for _, h := range hs {
		if h.GetKey() == ":status" {
			if n, err := strconv.Atoi(headerValue(h)); err == nil && n >= 200 && n <= 599 {
				return n
			}
			return 0
		}
	}
	return 0
}

// onResponseBody keeps a copy of each chunk and lets it through unchanged.
func (e *exchange) onResponseBody(b *extprocv3.HttpBody) *extprocv3.ProcessingResponse {
	if !e.collecting {
		return continueResponseBody()
	}
	if e.rec.BodyStored {
		if e.body.Len()+len(b.GetBody()) > e.srv.cfg.MaxStoredBody {
			e.rec.BodyStored = false
			e.body = bytes.Buffer{}
		} else {
			e.body.Write(b.GetBody())
		}
	}
	if b.GetEndOfStream() {
		// Stored before the last chunk goes out, so a client that saw the
		// whole response and retries at once gets the replay, not a 409.
		e.complete()
	}
	return continueResponseBody()
}

// complete stores the response for the retention period.
func (e *exchange) complete() {
	e.collecting = false
	e.lock = lockDone
	// The watchdog stops first: a renewal racing the completion would find
	// the record completed and report a false lease loss.
	e.dog.stop()
	if e.rec.BodyStored {
		e.rec.Body = e.body.Bytes()
	}
	ctx, cancel := e.srv.detached(e.ctx)
	defer cancel()
	start := time.Now()
	err := e.srv.store.Complete(ctx, e.key, e.token, e.rec, e.pol.retention)
	e.srv.metrics.observeStore("complete", start, err)
	switch {
	case errors.Is(err, idem.ErrLeaseLost):
		e.srv.metrics.responses.WithLabelValues(resultLeaseLost).Inc()
		e.srv.metrics.leaseLost.WithLabelValues(stageDone).Inc()
		e.logger().Warn("lease lost before the response was stored; not overwriting the key's new owner", "status", e.rec.Status)
	case err != nil:
		e.srv.metrics.responses.WithLabelValues(resultStoreError).Inc()
		e.logger().Error("storing the response failed; the key is refused as an unknown outcome once its lease ends",
			"error", err, "status", e.rec.Status)
	case e.rec.BodyStored:
		e.srv.metrics.responses.WithLabelValues(resultStored).Inc()
	case e.rec.Incomplete:
		e.srv.metrics.responses.WithLabelValues(resultStoredIncomplete).Inc()
		e.logger().Info("response stored without its body: the body never completed", "status", e.rec.Status)
	default:
		e.srv.metrics.responses.WithLabelValues(resultStoredNoBody).Inc()
		e.logger().Info("response stored without its body (over the cap)", "status", e.rec.Status, "cap", e.srv.cfg.MaxStoredBody)
	}
	e.body = bytes.Buffer{}
}

// release deletes our lock so the client can retry at once.
func (e *exchange) release(result string, attrs ...any) {
	e.lock = lockDone
	e.dog.stop()
	ctx, cancel := e.srv.detached(e.ctx)
	defer cancel()
	start := time.Now()
	err := e.srv.store.Release(ctx, e.key, e.token)
	e.srv.metrics.observeStore("release", start, err)
	e.srv.metrics.responses.WithLabelValues(result).Inc()
	if err != nil && !errors.Is(err, idem.ErrLeaseLost) {
		e.logger().Error("releasing the lock failed; the key stays locked until its TTL", append(attrs, "error", err)...)
		return
	}
	e.logger().Debug("lock released", append(attrs, "result", result)...)
}

// finish runs when the stream ends, however it ends.
func (e *exchange) finish() {
	switch {
	case e.lock == lockAcquired:
		// Our CONTINUE never went out: the request cannot be upstream.
		e.release(resultReleasedEarly)
	case e.lock == lockForwarded && e.collecting:
		// The upstream's status arrived, so the request ran; only its body
		// is missing (the client hung up, or the upstream reset mid-body).
		// That is an outcome, not an unknown one: stored without the body,
		// so a retry learns the status and never runs it again.
		e.rec.BodyStored, e.rec.Incomplete = false, true
		e.complete()
	case e.lock == lockForwarded:
		e.abandon("stream ended before the response headers arrived")
	}
}

// abandon handles an unknown outcome: the request may have run and we saw
// no response, so a re-run could execute it twice. By default the key is
// marked so, and refused for the retention period until an operator clears
// it; with --on-unknown=rerun-after-ttl its lock is left to expire instead.
func (e *exchange) abandon(why string, attrs ...any) {
	e.lock = lockDone
	e.collecting = false
	e.dog.stop()
	e.srv.metrics.responses.WithLabelValues(resultUnknownOutcome).Inc()
	if e.pol.takeover {
		e.logger().Warn("outcome unknown; lock left to expire, after which a retry runs again (--on-unknown=rerun-after-ttl): "+why,
			append(attrs, "lock_ttl", e.pol.lockTTL.String())...)
		return
	}
	ctx, cancel := e.srv.detached(e.ctx)
	defer cancel()
	start := time.Now()
	err := e.srv.store.Abandon(ctx, e.key, e.token, e.pol.retention)
	e.srv.metrics.observeStore("abandon", start, err)
	switch {
	case errors.Is(err, idem.ErrLeaseLost):
		e.srv.metrics.leaseLost.WithLabelValues(stageDone).Inc()
		e.logger().Warn("outcome unknown, but the key is no longer ours (an operator deleted it): "+why, attrs...)
	case err != nil:
		// The record still holds our lease: once it runs out, the key
		// reads as an unknown outcome all the same.
		e.srv.metrics.responses.WithLabelValues(resultStoreError).Inc()
		e.logger().Error("outcome unknown, and marking the key failed; it is refused as unknown once its lease ends: "+why,
			append(attrs, "error", err, "lock_ttl", e.pol.lockTTL.String())...)
	default:
		e.logger().Warn("outcome unknown; key held until an operator clears it or the retention ends: "+why,
			append(attrs, "hold", e.pol.retention.String())...)
	}
}
