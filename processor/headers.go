package processor

import (
	"fmt"
	"strings"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"

	"github.com/idemproxy/idemproxy/internal/idem"
)

// headerValue reads a header as current Envoy sends it (raw_value), falling
// back to the legacy value field.
func headerValue(h *corev3.HeaderValue) string {
	if raw := h.GetRawValue(); len(raw) > 0 {
		return string(raw)
	}
	return h.GetValue()
}

// headerValueLen is len(headerValue(h)) without copying the value.
func headerValueLen(h *corev3.HeaderValue) int {
	if n := len(h.GetRawValue()); n > 0 {
		return n
	}
	return len(h.GetValue())
}

// hopByHop are the RFC 9110 section 7.6.1 connection-specific headers, plus
// the ones that only describe one transfer (content-length: Envoy rewrites
// the body framing; date: a replay is a new message).
var hopByHop = map[string]bool{
	"connection": true, "keep-alive": true, "proxy-connection": true,
	"transfer-encoding": true, "upgrade": true, "te": true, "trailer": true,
	"proxy-authenticate": true, "proxy-authorization": true,
	"content-length": true, "date": true, replayedHeader: true, contentTypeStash: true,
}

// replayedHeader marks a replayed response (Stripe's name).
const replayedHeader = "idempotent-replayed"

// headerFilter decides which response headers are stored for replay.
type headerFilter struct {
	exclude map[string]bool
}

func newHeaderFilter(extra []string) headerFilter {
	f := headerFilter{exclude: make(map[string]bool, len(hopByHop)+len(extra))}
	for k := range hopByHop {
		f.exclude[k] = true
	}
	for _, k := range extra {
		f.exclude[strings.ToLower(k)] = true
	}
	return f
}

// storable returns the headers worth replaying, in their original order.
// Headers named by the Connection header are hop-by-hop too.
func (f headerFilter) storable(hs []*corev3.HeaderValue) []idem.Header {
	var connNamed map[string]bool
	for _, h := range hs {
		if strings.EqualFold(h.GetKey(), "connection") {
			for _, name := range strings.Split(headerValue(h), ",") {
				if connNamed == nil {
					connNamed = map[string]bool{}
				}
				connNamed[strings.ToLower(strings.TrimSpace(name))] = true
			}
		}
	}
	out := make([]idem.Header, 0, len(hs))
	for _, h := range hs {
		name := strings.ToLower(h.GetKey())
		if name == "" || strings.HasPrefix(name, ":") || strings.HasPrefix(name, "x-envoy-") ||
			f.exclude[name] || connNamed[name] {
			continue
		}
		out = append(out, idem.Header{Name: name, Value: headerValue(h)})
	}
	return out
}

// headroom checks that the fence header idemproxy adds still fits Envoy's
// request header limits. Envoy refuses a mutation past them and answers 500
// on its own, after the lock was granted, so the request would look like an
// unknown outcome and block its key although it never ran. It returns a
// problem detail, or "" when the header fits.
func (s *Server) headroom(hs []*corev3.HeaderValue) string {
	if s.cfg.FenceHeader == "" {
		return ""
	}
	size := len(s.cfg.FenceHeader) + 20 // the longest int64 fence
	for _, h := range hs {
		size += len(h.GetKey()) + headerValueLen(h)
	}
	switch {
	case len(hs)+1 > s.cfg.MaxRequestHeaders:
		return fmt.Sprintf("The request has %d headers; with the %s header the proxy adds, it would pass the limit of %d.",
			len(hs), s.cfg.FenceHeader, s.cfg.MaxRequestHeaders)
	case size > s.cfg.MaxRequestHeaderBytes:
		return fmt.Sprintf("The request's headers take %d bytes; with the %s header the proxy adds, they would pass the limit of %d.",
			size-len(s.cfg.FenceHeader)-20, s.cfg.FenceHeader, s.cfg.MaxRequestHeaderBytes)
	}
	return ""
}
