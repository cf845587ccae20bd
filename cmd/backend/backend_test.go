package main

import (
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// newTestBackend returns a backend logging at debug level to the test's
// output, so the request-log path runs too.
func newTestBackend(t *testing.T, slowDelay time.Duration) (*backend, http.Handler) {
	t.Helper()
	log := slog.New(slog.NewJSONHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelDebug}))
	b := newBackend(slowDelay, log)
	return b, b.routes()
}

// send serves one request; key is sent as Idempotency-Key unless empty.
func send(t *testing.T, h http.Handler, method, target, body, key string) *httptest.ResponseRecorder {
	t.Helper()
	var r io.Reader
	if body != "" {
		r = strings.NewReader(body)
	}
	req := httptest.NewRequestWithContext(t.Context(), method, target, r)
	if key != "" {
		req.Header.Set(headerIdempotencyKey, key)
	}
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	return rec
}

func getStats(t *testing.T, h http.Handler) stats {
	t.Helper()
	rec := send(t, h, http.MethodGet, "/stats", "", "")
	require.Equal(t, http.StatusOK, rec.Code)
	require.Equal(t, "application/json", rec.Header().Get("Content-Type"))
	var s stats
	require.NoError(t, json.Unmarshal(rec.Body.Bytes(), &s))
	return s
}

func TestBackend_Stats(t *testing.T) {
	t.Run("counts per key, without key and in total", func(t *testing.T) {
		_, h := newTestBackend(t, time.Millisecond)
		send(t, h, http.MethodPost, "/charge", "", "k1")
		send(t, h, http.MethodPost, "/charge", "", "k1")
		send(t, h, http.MethodPost, "/", "", "k2")
		send(t, h, http.MethodPost, "/fail", "", "k3")
		send(t, h, http.MethodPost, "/charge", "", "")
		send(t, h, http.MethodGet, "/status?code=409", "", "")

		require.Equal(t, stats{Total: 6, Keys: map[string]int{"k1": 2, "k2": 1, "k3": 1}, NoKey: 2, StaleFences: map[string]int{}, Fences: map[string]int64{}}, getStats(t, h))
	})

	t.Run("Idempotency-Key wins over X-Idempotency-Key", func(t *testing.T) {
		_, h := newTestBackend(t, time.Millisecond)
		both := httptest.NewRequestWithContext(t.Context(), http.MethodPost, "/charge", nil)
		both.Header.Set(headerIdempotencyKey, "primary")
		both.Header.Set(headerXIdempotencyKey, "secondary")
		h.ServeHTTP(httptest.NewRecorder(), both)
		xOnly := httptest.NewRequestWithContext(t.Context(), http.MethodPost, "/charge", nil)
		xOnly.Header.Set(headerXIdempotencyKey, "x only")
		h.ServeHTTP(httptest.NewRecorder(), xOnly)

		require.Equal(t, map[string]int{"primary": 1, "x only": 1}, getStats(t, h).Keys)
	})

	t.Run("rejected requests count because they reached the service", func(t *testing.T) {
		_, h := newTestBackend(t, time.Millisecond)
		rec := send(t, h, http.MethodPost, "/charge?amount=oops", "", "k")
		require.Equal(t, http.StatusBadRequest, rec.Code)
		require.Equal(t, 1, getStats(t, h).Keys["k"])
	})

	t.Run("observation and unknown paths do not count", func(t *testing.T) {
		_, h := newTestBackend(t, time.Millisecond)
		send(t, h, http.MethodGet, "/healthz", "", "k")
		send(t, h, http.MethodGet, "/stats", "", "k")
		require.Equal(t, http.StatusNotFound, send(t, h, http.MethodGet, "/nope", "", "k").Code)

		require.Equal(t, stats{Keys: map[string]int{}, StaleFences: map[string]int{}, Fences: map[string]int64{}}, getStats(t, h))
	})

	t.Run("concurrent requests are all counted", func(t *testing.T) {
		_, h := newTestBackend(t, time.Millisecond)
		const n = 50
		var wg sync.WaitGroup
		for range n {
			wg.Go(func() { send(t, h, http.MethodPost, "/charge", "", "same") })
		}
		wg.Wait()
		require.Equal(t, stats{Total: n, Keys: map[string]int{"same": n}, StaleFences: map[string]int{}, Fences: map[string]int64{}}, getStats(t, h))
	})

	t.Run("stats only answers GET", func(t *testing.T) {
		_, h := newTestBackend(t, time.Millisecond)
		require.Equal(t, http.StatusMethodNotAllowed, send(t, h, http.MethodPost, "/stats", "", "").Code)
	})
}

func TestBackend_ResetStats(t *testing.T) {
	t.Run("zeroes every count", func(t *testing.T) {
		_, h := newTestBackend(t, time.Millisecond)
		send(t, h, http.MethodPost, "/charge", "", "k")
		send(t, h, http.MethodPost, "/charge", "", "")

		rec := send(t, h, http.MethodPost, "/stats/reset", "", "")
		require.Equal(t, http.StatusOK, rec.Code)
		require.Equal(t, stats{Keys: map[string]int{}, StaleFences: map[string]int{}, Fences: map[string]int64{}}, getStats(t, h))

		send(t, h, http.MethodPost, "/charge", "", "k")
		require.Equal(t, stats{Total: 1, Keys: map[string]int{"k": 1}, StaleFences: map[string]int{}, Fences: map[string]int64{}}, getStats(t, h))
	})

	t.Run("needs POST", func(t *testing.T) {
		_, h := newTestBackend(t, time.Millisecond)
		send(t, h, http.MethodPost, "/charge", "", "k")
		require.Equal(t, http.StatusMethodNotAllowed, send(t, h, http.MethodGet, "/stats/reset", "", "").Code)
		require.Equal(t, 1, getStats(t, h).Total)
	})
}

func TestBackend_Healthz(t *testing.T) {
	_, h := newTestBackend(t, time.Millisecond)
	rec := send(t, h, http.MethodGet, "/healthz", "", "")
	require.Equal(t, http.StatusOK, rec.Code)
	require.Equal(t, "ok", rec.Body.String())
}

func TestIdempotencyKey(t *testing.T) {
	t.Run("keeps the value as sent", func(t *testing.T) {
		h := http.Header{}
		h.Set(headerIdempotencyKey, "Order-42/ÄÖ")
		require.Equal(t, "Order-42/ÄÖ", idempotencyKey(h))
	})
	t.Run("empty without either header", func(t *testing.T) {
		require.Empty(t, idempotencyKey(http.Header{}))
	})
}
