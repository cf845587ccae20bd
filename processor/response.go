package processor

// The response phase of an exchange: store what the upstream answered, or
// release or abandon the lock when it cannot be stored.

import (
	"bytes"
	"strconv"
	"strings"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"

	"github.com/idemproxy/idemproxy/internal/idem"
)

func (e *exchange) onResponseHeaders(h *extprocv3.HttpHeaders, origin responseOrigin) *extprocv3.ProcessingResponse {
	skipBody := continueResponseHeaders()
	skipBody.ModeOverride = skipResponseBody()
	hs := h.GetHeaders().GetHeaders()
	if e.req.rerouted {
		if refusal := e.replayNotServed(hs); refusal != nil {
			return refusal
		}
	}
	if e.lock.state != lockForwarded {
		return skipBody
	}
	status := responseStatus(hs)
	attempts := upstreamAttempts(hs)
	// An earlier attempt may have run: a response the key would be given
	// back for (the last attempt never reached the upstream, or its status
	// is not stored) must not let the client's retry run the request again.
	mayHaveRun := e.retried(attempts)
	switch {
	case mayHaveRun && (origin != originUpstream || status == 0 || e.srv.cfg.NoStore.Contains(status)):
		e.abandon("Envoy retried the request upstream, and an earlier attempt may have run", true,
			"status", status, "attempts", attempts, "route", e.req.route)
		return skipBody
	case origin == originNeverSent:
		e.release(resultReleasedStatus, true, "status", status, "local_reply", true)
		return skipBody
	case origin == originLocalUnknown:
		// Envoy gave up waiting (timeout, reset): the upstream may still
		// run the request, so a retry must not.
		e.abandon("local reply after the request was sent", true, "status", status)
		return skipBody
	case status == 0 || e.srv.cfg.NoStore.Contains(status):
		e.release(resultReleasedStatus, true, "status", status)
		return skipBody
	}
	if attempts > 1 {
		e.resp.rec.UpstreamAttempts = attempts
	}
	e.resp.rec.Status = status
	e.resp.rec.Headers = e.srv.filter.storable(hs)
	e.resp.declared = declaredTrailers(hs)
	e.resp.rec.BodyStored = true
	if h.GetEndOfStream() {
		e.complete(true)
	} else {
		e.resp.collecting = true
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

// onResponseTrailers ends a response that ends with trailers: its body is
// complete. An immediate response cannot carry trailers, so with a replay
// endpoint (Options.Replays) the trailers are stored with the body and a
// retry is served there; without one the key is completed without its
// body: a retry learns the status (409 response-not-stored), and never
// runs again.
func (e *exchange) onResponseTrailers(t *extprocv3.HttpTrailers) *extprocv3.ProcessingResponse {
	if e.resp.collecting {
		e.resp.rec.Trailers = true
		if e.srv.replays != nil && e.resp.rec.BodyStored {
			e.resp.rec.TrailerHeaders = e.srv.filter.storable(t.GetTrailers().GetHeaders())
			// The replay endpoint sends the trailers as they came, so
			// their announcement too (an HTTP/1.1 client sees it).
			e.resp.rec.Headers = append(e.resp.rec.Headers, e.resp.declared...)
		} else {
			e.resp.rec.BodyStored = false
		}
		e.complete(true)
	}
	return continueResponseTrailers()
}

// onResponseBody keeps a copy of each chunk and lets it through unchanged.
func (e *exchange) onResponseBody(b *extprocv3.HttpBody) *extprocv3.ProcessingResponse {
	if !e.resp.collecting {
		return continueResponseBody()
	}
	if e.resp.rec.BodyStored {
		if e.resp.body.Len()+len(b.GetBody()) > e.srv.cfg.MaxStoredBody {
			e.resp.rec.BodyStored = false
			e.resp.body = bytes.Buffer{}
		} else {
			e.resp.body.Write(b.GetBody())
		}
	}
	if b.GetEndOfStream() {
		// Stored before the last chunk goes out, so a client that saw the
		// whole response and retries at once gets the replay, not a 409.
		e.complete(true)
	}
	return continueResponseBody()
}

// declaredTrailers is the Trailer header of a response, kept aside: it is
// stored only with the trailers it announces (an immediate replay, which
// has none, must not announce any).
func declaredTrailers(hs []*corev3.HeaderValue) []idem.Header {
	var out []idem.Header
	for _, h := range hs {
		if strings.EqualFold(h.GetKey(), "trailer") {
			out = append(out, idem.Header{Name: "trailer", Value: headerValue(h)})
		}
	}
	return out
}
