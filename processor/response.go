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
		// run the request, so a retry must not, until the lock expires.
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
		e.logger().Error("storing the response failed; the key stays locked until its TTL", "error", err, "status", e.rec.Status)
	case e.rec.BodyStored:
		e.srv.metrics.responses.WithLabelValues(resultStored).Inc()
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
	switch e.lock {
	case lockAcquired:
		// Our CONTINUE never went out: the request cannot be upstream.
		e.release(resultReleasedEarly)
	case lockForwarded:
		e.abandon("stream ended before the response completed")
	}
}

// abandon handles an unknown outcome: the request may have run and we saw
// no final response, so a re-run could execute it twice. The lock is left
// to expire after its TTL; retries until then get 409.
func (e *exchange) abandon(why string, attrs ...any) {
	e.lock = lockDone
	e.collecting = false
	e.dog.stop()
	e.srv.metrics.responses.WithLabelValues(resultUnknownOutcome).Inc()
	if !e.srv.cfg.HoldUnknown {
		e.logger().Warn("outcome unknown; lock left to expire: "+why,
			append(attrs, "lock_ttl", e.pol.lockTTL.String())...)
		return
	}
	// --on-unknown=hold: keep the key refused for the retention period
	// instead of letting a retry run it again after the lock TTL.
	ctx, cancel := e.srv.detached(e.ctx)
	defer cancel()
	start := time.Now()
	err := e.srv.store.Abandon(ctx, e.key, e.token, e.pol.retention)
	e.srv.metrics.observeStore("abandon", start, err)
	switch {
	case errors.Is(err, idem.ErrLeaseLost):
		e.srv.metrics.leaseLost.WithLabelValues(stageDone).Inc()
		e.logger().Warn("outcome unknown, but the lease was already lost; not holding the key: "+why, attrs...)
	case err != nil:
		e.srv.metrics.responses.WithLabelValues(resultStoreError).Inc()
		e.logger().Error("outcome unknown, and holding the key failed; the lock expires after its TTL: "+why,
			append(attrs, "error", err)...)
	default:
		e.logger().Warn("outcome unknown; key held until an operator clears it or the retention ends: "+why,
			append(attrs, "hold", e.pol.retention.String())...)
	}
}
