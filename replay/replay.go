// Package replay is idemproxy's replay endpoint: it serves a stored
// response as an upstream response, for the replays an ext_proc immediate
// response cannot reproduce (a response that ended with trailers: gRPC,
// HTTP/2 trailers). The processor answers such a retry by re-routing it
// with a single-use token (processor.ReplayHeader); Envoy's replay route
// sends it here, over HTTP/2 (h2c, or TLS), with the bearer token Envoy
// also presents on ext_proc streams. The endpoint takes the token (once,
// in the store) and writes the record's status, headers, body and
// trailers as stored.
package replay

import (
	"context"
	"errors"
	"log/slog"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/idemproxy/idemproxy/internal/auth"
	"github.com/idemproxy/idemproxy/internal/idem"
)

// Header carries the replay token (processor.ReplayHeader; not imported,
// so this package needs nothing of the processor's).
const Header = "x-idemproxy-replay"

// replayedHeader marks a replayed response, as the processor's immediate
// replays do.
const replayedHeader = "idempotent-replayed"

// Taker uses a replay token once (redisstore.Store implements it): the
// record it was issued for, or an error wrapping idem.ErrNoReplay.
type Taker interface {
	TakeReplay(ctx context.Context, token string) (*idem.Record, error)
}

// Options configure a Handler.
type Options struct {
	Taker Taker
	// Tokens, when set, returns the bearer tokens a request must carry in
	// its Authorization header (--auth-token-file); nil: none is asked
	// (mutual TLS, or a port that only this host can reach).
	Tokens func() []string
	Logger *slog.Logger
	// Registerer takes the endpoint's counter of requests by result.
	Registerer prometheus.Registerer
}

// Handler serves replays.
type Handler struct {
	opts    Options
	results *prometheus.CounterVec
}

// Results of the endpoint's requests (idemproxy_replay_requests_total).
const (
	resultServed          = "served"
	resultUnauthenticated = "unauthenticated"
	resultNoReplay        = "no_replay"
	resultStoreError      = "store_error"
)

// NewHandler builds a Handler and registers its counter.
func NewHandler(opts Options) (*Handler, error) {
	if opts.Taker == nil {
		return nil, errors.New("replay: a taker is required")
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	h := &Handler{opts: opts, results: prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "idemproxy_replay_requests_total",
		Help: "Requests to the replay endpoint, by result: served, unauthenticated (no or a wrong bearer token), no_replay (the token replays nothing: used, expired, never issued), store_error.",
	}, []string{"result"})}
	for _, r := range []string{resultServed, resultUnauthenticated, resultNoReplay, resultStoreError} {
		h.results.WithLabelValues(r)
	}
	if opts.Registerer != nil {
		if err := opts.Registerer.Register(h.results); err != nil {
			return nil, err
		}
	}
	return h, nil
}

// ServeHTTP checks the caller, takes the token and writes its record.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if !h.authenticated(r) {
		h.results.WithLabelValues(resultUnauthenticated).Inc()
		// The peer, never the token: a refused token is still a secret.
		h.opts.Logger.Warn("replay request refused: missing or wrong bearer token", "peer", r.RemoteAddr)
		w.Header().Set("www-authenticate", "Bearer")
		http.Error(w, "idemproxy: a valid bearer token is required", http.StatusUnauthorized)
		return
	}
	rec, err := h.opts.Taker.TakeReplay(r.Context(), r.Header.Get(Header))
	switch {
	case errors.Is(err, idem.ErrNoReplay):
		h.results.WithLabelValues(resultNoReplay).Inc()
		h.opts.Logger.Info("replay request for a token that replays nothing (used, expired or never issued)", "peer", r.RemoteAddr)
		unavailable(w)
		return
	case err != nil:
		h.results.WithLabelValues(resultStoreError).Inc()
		h.opts.Logger.Error("store failed taking a replay token", "error", err)
		unavailable(w)
		return
	}
	h.results.WithLabelValues(resultServed).Inc()
	write(w, rec)
}

// authenticated reports whether r carries one of the bearer tokens, when
// tokens are asked for.
func (h *Handler) authenticated(r *http.Request) bool {
	if h.opts.Tokens == nil {
		return true
	}
	for _, v := range r.Header.Values("authorization") {
		if tok, ok := auth.Bearer(v); ok && auth.TokenMatches(tok, h.opts.Tokens()) {
			return true
		}
	}
	return false
}

// write writes rec as it was stored: status, headers in order (repeated
// names repeat), body, then trailers (HTTP/2 trailers, or chunked
// HTTP/1.1 trailers).
func write(w http.ResponseWriter, rec *idem.Record) {
	hs := w.Header()
	for _, h := range rec.Headers {
		hs[http.CanonicalHeaderKey(h.Name)] = append(hs[http.CanonicalHeaderKey(h.Name)], h.Value)
	}
	hs.Set(replayedHeader, "true")
	if _, ok := hs["Content-Type"]; !ok {
		// Without it, Go would sniff the body and add a Content-Type the
		// original did not have.
		hs["Content-Type"] = nil
	}
	w.WriteHeader(rec.Status)
	_, _ = w.Write(rec.Body)
	for _, t := range rec.TrailerHeaders {
		k := http.TrailerPrefix + t.Name
		hs[k] = append(hs[k], t.Value)
	}
}

// unavailable answers a replay that cannot be served: nothing ran, and a
// retry with the same key decides again (a new token, or what the key
// holds by then), so it is safe.
func unavailable(w http.ResponseWriter) {
	w.Header().Set("content-type", "application/problem+json")
	// The processor tells the endpoint's answers from an upstream's by
	// this header (or Idempotent-Replayed) on a re-routed replay.
	w.Header().Set("idempotency-problem", "urn:idemproxy:problem:replay-unavailable")
	w.Header().Set("retry-after", "1")
	w.WriteHeader(http.StatusServiceUnavailable)
	_, _ = w.Write([]byte(`{"type":"urn:idemproxy:problem:replay-unavailable","title":"The stored response could not be served",` +
		`"status":503,"detail":"The replay of this idempotency key's stored response expired or failed; the request was not run again. Retrying with the same idempotency key is safe."}` + "\n"))
}

// NewServer is the endpoint's HTTP server: HTTP/2 without TLS (h2c, what
// Envoy's replay cluster speaks) and HTTP/1.1; with a TLS config (served
// by ServeTLS), HTTP/2 over TLS.
func NewServer(h http.Handler) *http.Server {
	var p http.Protocols
	p.SetHTTP1(true)
	p.SetHTTP2(true)
	p.SetUnencryptedHTTP2(true)
	return &http.Server{Handler: h, Protocols: &p, ReadHeaderTimeout: readHeaderTimeout}
}

// readHeaderTimeout bounds a caller that opens a connection and sends
// nothing.
const readHeaderTimeout = 10 * time.Second
