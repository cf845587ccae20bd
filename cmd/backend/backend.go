package main

import (
	"encoding/json"
	"log/slog"
	"maps"
	"net/http"
	"strconv"
	"sync"
	"time"
)

// Header names the proxy and the demo clients use for the idempotency key.
// The first one present wins.
const (
	headerIdempotencyKey  = "Idempotency-Key"
	headerXIdempotencyKey = "X-Idempotency-Key"
	headerFence           = "Idempotency-Fence"
)

// backend is the mock payment service. It owns its execution counts, so each
// server (and each test) starts from zero and nothing is global.
type backend struct {
	slowDelay time.Duration
	log       *slog.Logger

	mu    sync.Mutex
	total int
	// counts is keyed by idempotency key; "" holds requests that sent none.
	counts map[string]int
	// fences is the highest Idempotency-Fence seen per key; stale counts
	// the requests refused for carrying a lower one.
	fences map[string]int64
	stale  map[string]int
	// fencedNoKey counts keyless requests that arrived with a fence: the
	// proxy should have removed a client's own.
	fencedNoKey int
	// attempts is, per key, Envoy's highest x-envoy-attempt-count seen
	// (include_request_attempt_count): above 1, Envoy retried the request.
	attempts map[string]int
}

func newBackend(slowDelay time.Duration, log *slog.Logger) *backend {
	return &backend{slowDelay: slowDelay, log: log, counts: make(map[string]int),
		fences: make(map[string]int64), stale: make(map[string]int), attempts: make(map[string]int)}
}

// stats is the body of GET /stats.
type stats struct {
	Total int            `json:"total"`
	Keys  map[string]int `json:"keys"`
	NoKey int            `json:"no_key"`
	// StaleFences counts, per key, requests refused for a stale fence: they
	// did not execute.
	StaleFences map[string]int `json:"stale_fences"`
	// Fences is the highest fence seen per key.
	Fences map[string]int64 `json:"fences"`
	// FencedWithoutKey counts keyless requests that carried a fence.
	FencedWithoutKey int `json:"fenced_without_key"`
	// Attempts is Envoy's highest attempt count seen per key, when above 1.
	Attempts map[string]int `json:"attempts,omitempty"`
}

// routes returns the service's handler. Only the execution endpoints count;
// /stats and /healthz are how tests observe the service, not traffic to it.
func (b *backend) routes() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("/{$}", b.executes(b.charge))
	mux.Handle("/charge", b.executes(b.charge))
	mux.Handle("/slow", b.executes(b.slow))
	mux.Handle("/fail", b.executes(b.fail))
	mux.Handle("/large", b.executes(b.large))
	mux.Handle("/status", b.executes(b.status))
	mux.Handle("/busy", b.executes(b.busy))
	mux.Handle("/trailers", b.executes(b.trailers))
	mux.Handle("/hangup", b.executes(b.hangup))
	mux.Handle("POST /v1/charges", b.executes(b.stripeCharges))
	mux.HandleFunc("GET /stats", b.getStats)
	mux.HandleFunc("POST /stats/reset", b.resetStats)
	mux.HandleFunc("GET /healthz", healthz)
	return b.logRequests(mux)
}

// executes counts the request before next runs, so a request that is still
// running, or whose client gave up, has already been counted: "at most once"
// must hold for executions that started, not just for those that finished.
//
// It is also how a protected resource uses fencing tokens: a request whose
// Idempotency-Fence is lower than one already seen for its key comes from a
// lease that was lost to a newer request, and is refused without running.
func (b *backend) executes(next http.HandlerFunc) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		key := idempotencyKey(r.Header)
		var fence int64
		if v := r.Header.Get(headerFence); v != "" {
			n, err := strconv.ParseInt(v, 10, 64)
			if err != nil || n <= 0 {
				writeError(w, http.StatusBadRequest, "invalid "+headerFence+" header")
				return
			}
			fence = n
		}
		if n, err := strconv.Atoi(r.Header.Get("X-Envoy-Attempt-Count")); err == nil && n > 1 && key != "" {
			b.mu.Lock()
			b.attempts[key] = max(b.attempts[key], n)
			b.mu.Unlock()
		}
		if !b.record(key, fence) {
			writeError(w, http.StatusConflict, "stale fence: a newer request holds this idempotency key")
			return
		}
		next(w, r)
	})
}

// record counts an execution, unless fence is stale for key.
func (b *backend) record(key string, fence int64) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	if key == "" && fence > 0 {
		b.fencedNoKey++
	}
	if key != "" && fence > 0 {
		if fence < b.fences[key] {
			b.stale[key]++
			return false
		}
		b.fences[key] = fence
	}
	b.total++
	b.counts[key]++
	return true
}

// executions is how many times key has executed so far.
func (b *backend) executions(key string) int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.counts[key]
}

func (b *backend) snapshot() stats {
	b.mu.Lock()
	defer b.mu.Unlock()
	s := stats{Total: b.total, Keys: make(map[string]int, len(b.counts)), NoKey: b.counts[""],
		StaleFences: maps.Clone(b.stale), Fences: maps.Clone(b.fences), FencedWithoutKey: b.fencedNoKey}
	if len(b.attempts) > 0 {
		s.Attempts = maps.Clone(b.attempts)
	}
	for k, n := range b.counts {
		if k != "" {
			s.Keys[k] = n
		}
	}
	return s
}

func (b *backend) getStats(w http.ResponseWriter, _ *http.Request) {
	writeJSON(w, http.StatusOK, b.snapshot())
}

func (b *backend) resetStats(w http.ResponseWriter, _ *http.Request) {
	b.mu.Lock()
	b.total = 0
	clear(b.counts)
	clear(b.fences)
	clear(b.stale)
	clear(b.attempts)
	b.fencedNoKey = 0
	b.mu.Unlock()
	writeJSON(w, http.StatusOK, stats{Keys: map[string]int{}, StaleFences: map[string]int{}, Fences: map[string]int64{}})
}

func healthz(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	_, _ = w.Write([]byte("ok"))
}

// idempotencyKey returns the key as the client sent it, or "" without one.
func idempotencyKey(h http.Header) string {
	if k := h.Get(headerIdempotencyKey); k != "" {
		return k
	}
	return h.Get(headerXIdempotencyKey)
}

// logRequests writes one line per request at debug level: the line carries
// the idempotency key, which may be a secret, so it stays out of info logs.
func (b *backend) logRequests(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ctx := r.Context()
		if !b.log.Enabled(ctx, slog.LevelDebug) {
			next.ServeHTTP(w, r)
			return
		}
		start := time.Now()
		sw := &statusWriter{ResponseWriter: w}
		next.ServeHTTP(sw, r)
		if sw.status == 0 {
			sw.status = http.StatusOK
		}
		b.log.LogAttrs(ctx, slog.LevelDebug, "request",
			slog.String("method", r.Method),
			slog.String("path", r.URL.Path),
			slog.String("key", idempotencyKey(r.Header)),
			slog.Int("status", sw.status),
			slog.Int64("bytes", sw.bytes),
			slog.Duration("duration", time.Since(start)),
		)
	})
}

// statusWriter records what the handler sent, for the request log line.
type statusWriter struct {
	http.ResponseWriter
	status int
	bytes  int64
}

func (w *statusWriter) WriteHeader(code int) {
	// Informational (1xx) headers precede the final status; keep the final one.
	if w.status == 0 && code >= 200 {
		w.status = code
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusWriter) Write(p []byte) (int, error) {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	n, err := w.ResponseWriter.Write(p)
	w.bytes += int64(n)
	return n, err
}

// Unwrap lets http.ResponseController reach the real writer.
func (w *statusWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// errorBody is the JSON body of every error response.
type errorBody struct {
	Error string `json:"error"`
}

func writeError(w http.ResponseWriter, status int, msg string) {
	writeJSON(w, status, errorBody{Error: msg})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	// An encoding error here means the client went away; nobody is left to tell.
	_ = json.NewEncoder(w).Encode(v)
}
