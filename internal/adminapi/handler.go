// Package adminapi is the admin HTTP API: liveness, readiness, metrics,
// the authenticated key endpoint and, when asked for, Go's profiler.
package adminapi

import (
	"net/http"
	httppprof "net/http/pprof"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// NewHandler serves liveness, readiness and metrics on their own port, so
// they never compete with or get exposed next to the data plane; keys and
// resets, when not nil, serve the authenticated key and store-reset
// endpoints.
//
// pprof exposes Go's profiler under /debug/pprof/: off by default, because
// profiles reveal internals and cost CPU while they run.
func NewHandler(reg *prometheus.Registry, ready interface{ Ready() bool }, keys, resets http.Handler, pprof bool) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		w.Write([]byte("ok\n"))
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		if !ready.Ready() {
			http.Error(w, "redis unreachable", http.StatusServiceUnavailable)
			return
		}
		w.Write([]byte("ok\n"))
	})
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg}))
	if keys != nil {
		mux.Handle("/admin/v1/keys", keys)
	}
	if resets != nil {
		mux.Handle("/admin/v1/store-resets", resets)
		mux.Handle("/admin/v1/store-resets/ack", resets)
	}
	if pprof {
		mux.HandleFunc("/debug/pprof/", httppprof.Index)
		mux.HandleFunc("/debug/pprof/cmdline", httppprof.Cmdline)
		mux.HandleFunc("/debug/pprof/profile", httppprof.Profile)
		mux.HandleFunc("/debug/pprof/symbol", httppprof.Symbol)
		mux.HandleFunc("/debug/pprof/trace", httppprof.Trace)
	}
	return mux
}
