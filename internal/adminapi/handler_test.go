package adminapi

import (
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/require"

	"github.com/idemproxy/idemproxy/processor"
)

type fakeReady struct{ ok atomic.Bool }

func (f *fakeReady) Ready() bool { return f.ok.Load() }

func TestNewHandler(t *testing.T) {
	reg := prometheus.NewRegistry()
	_, err := processor.NewMetrics(reg)
	require.NoError(t, err)
	ready := &fakeReady{}
	h := NewHandler(reg, ready, nil, nil, false)
	serve := func(method, path string) *httptest.ResponseRecorder {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest(method, path, nil))
		return rec
	}

	require.Equal(t, http.StatusOK, serve("GET", "/healthz").Code)
	require.Equal(t, http.StatusServiceUnavailable, serve("GET", "/readyz").Code, "not ready before Redis answered")
	ready.ok.Store(true)
	require.Equal(t, http.StatusOK, serve("GET", "/readyz").Code)

	m := serve("GET", "/metrics")
	require.Equal(t, http.StatusOK, m.Code)
	for _, name := range []string{
		"idemproxy_requests_total", "idemproxy_responses_total", "idemproxy_lock_renewals_total",
		"idemproxy_leases_lost_total", "idemproxy_active_streams",
	} {
		require.Contains(t, m.Body.String(), name)
	}
	require.Contains(t, m.Body.String(), `outcome="in_progress_conflict"`, "outcomes are pre-created")

	require.Equal(t, http.StatusMethodNotAllowed, serve("POST", "/healthz").Code)
	require.Equal(t, http.StatusNotFound, serve("GET", "/").Code)
}
