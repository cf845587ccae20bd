package processor

import (
	"bytes"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	filterv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_proc/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/require"
)

// syncBuffer is a log destination safe for the Process goroutines.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// newCheckedServer is newTestServer whose log the test reads.
func newCheckedServer(t *testing.T, store Store) (*Server, *prometheus.Registry, *syncBuffer) {
	t.Helper()
	reg := prometheus.NewRegistry()
	m, err := NewMetrics(reg)
	require.NoError(t, err)
	logs := &syncBuffer{}
	srv, err := New(DefaultConfig(), Options{Store: store, Metrics: m, Logger: slog.New(slog.NewTextHandler(logs, nil))})
	require.NoError(t, err)
	return srv, reg, logs
}

// problems reads every series of idemproxy_envoy_config_problems.
func problems(t *testing.T, reg *prometheus.Registry) map[string]float64 {
	t.Helper()
	mfs, err := reg.Gather()
	require.NoError(t, err)
	got := map[string]float64{}
	for _, mf := range mfs {
		if mf.GetName() != "idemproxy_envoy_config_problems" {
			continue
		}
		for _, m := range mf.GetMetric() {
			got[m.GetLabel()[0].GetValue()] = m.GetGauge().GetValue()
		}
	}
	require.Len(t, got, len(allProblems), "every problem has its series from the start")
	return got
}

// only is the gauge with exactly the problems given at 1.
func only(ps ...string) map[string]float64 {
	m := map[string]float64{}
	for _, p := range allProblems {
		m[p] = 0
	}
	for _, p := range ps {
		m[p] = 1
	}
	return m
}

// withModes is a request's first message as Envoy 1.31+ sends it.
func withModes(req *extprocv3.ProcessingRequest, reqBody, respBody filterv3.ProcessingMode_BodySendMode) *extprocv3.ProcessingRequest {
	req.ProtocolConfig = &extprocv3.ProtocolConfiguration{RequestBodyMode: reqBody, ResponseBodyMode: respBody}
	return req
}

const buffered, streamed = filterv3.ProcessingMode_BUFFERED, filterv3.ProcessingMode_STREAMED

func TestConfigProblems_window(t *testing.T) {
	c := newConfigProblems()
	now := time.Unix(1000, 0)
	c.now = func() time.Time { return now }
	require.False(t, c.showing(problemNoCodeDetails))
	require.True(t, c.seen(problemNoCodeDetails), "first sighting: news")
	require.False(t, c.seen(problemNoCodeDetails), "again at once: not news")
	now = now.Add(problemWindow - time.Second)
	require.False(t, c.seen(problemNoCodeDetails))
	require.True(t, c.showing(problemNoCodeDetails))
	now = now.Add(problemWindow - time.Second)
	require.True(t, c.showing(problemNoCodeDetails), "each sighting extends the window")
	now = now.Add(time.Second)
	require.False(t, c.showing(problemNoCodeDetails), "unseen for the whole window: cleared (a config fixed live)")
	require.True(t, c.seen(problemNoCodeDetails), "back after it cleared: news again")
	require.False(t, c.showing(problemBodyNotBuffered), "problems are apart")
}

func TestServer_envoyConfigCheck(t *testing.T) {
	t.Run("the shipped config shows no problem", func(t *testing.T) {
		srv, reg, logs := newCheckedServer(t, newFakeStore())
		for i := range 3 {
			k := fmt.Sprint("k", i)
			_, err := run(t, srv, endCanceled, withModes(keyed("POST", k, false), buffered, streamed), reqBody("{}", true),
				withCodeDetails(respHeaders(true, ":status", "200"), "via_upstream"))
			require.NoError(t, err)
		}
		require.Equal(t, only(), problems(t, reg))
		require.NotContains(t, logs.String(), "Envoy config problem")
	})

	t.Run("no response.code_details: logged once, shown, and Envoy's replies are not stored", func(t *testing.T) {
		store := newFakeStore()
		srv, reg, logs := newCheckedServer(t, store)
		cases := []struct {
			name    string
			headers *extprocv3.ProcessingRequest
			op      string
		}{
			// Measured on Envoy 1.40: its own replies carry no
			// x-envoy-upstream-service-time, the upstream's always do.
			{"Envoy's route timeout", respHeaders(false, ":status", "504", "content-length", "24", "content-type", "text/plain"), "abandon"},
			{"Envoy's connect failure (released with the attribute)", respHeaders(false, ":status", "503", "content-type", "text/plain"), "abandon"},
			{"Envoy's 502", respHeaders(false, ":status", "502"), "abandon"},
			{"the upstream's 504", respHeaders(true, ":status", "504", "x-envoy-upstream-service-time", "1"), "complete"},
			{"the upstream's 503", respHeaders(true, ":status", "503", "x-envoy-upstream-service-time", "0"), "complete"},
			{"a 500 is never Envoy's timeout or reset", respHeaders(true, ":status", "500"), "complete"},
			{"a 200", respHeaders(true, ":status", "200"), "complete"},
		}
		for i, tc := range cases {
			k := fmt.Sprint("k", i)
			_, err := run(t, srv, endCanceled, keyed("POST", k, true), tc.headers)
			require.NoError(t, err)
			e, ok := store.entry(keyOf(k))
			require.True(t, ok, tc.name)
			require.Equal(t, tc.op == "abandon", e.unknown, "%s: unknown outcome", tc.name)
			require.Equal(t, tc.op == "complete", e.rec != nil, "%s: stored", tc.name)
		}
		require.Equal(t, only(problemNoCodeDetails), problems(t, reg))
		require.Equal(t, 1, strings.Count(logs.String(), "Envoy does not send the response.code_details attribute"),
			"one line for %d streams:\n%s", len(cases), logs.String())
		require.Contains(t, logs.String(), "level=ERROR")
	})

	t.Run("body modes from protocol_config", func(t *testing.T) {
		srv, reg, logs := newCheckedServer(t, newFakeStore())
		for i := range 3 {
			// Without a body the request still works; the problem shows.
			out, err := run(t, srv, endCanceled, withModes(keyed("GET", fmt.Sprint("k", i), true),
				filterv3.ProcessingMode_NONE, filterv3.ProcessingMode_NONE))
			require.NoError(t, err)
			requireContinue(t, out[0])
		}
		require.Equal(t, only(problemBodyNotBuffered, problemResponseBodyNotStreamed), problems(t, reg))
		require.Equal(t, 1, strings.Count(logs.String(), "request_body_mode=NONE"), logs.String())
		require.Equal(t, 1, strings.Count(logs.String(), "response_body_mode=NONE"), logs.String())
	})

	t.Run("keyed requests in a row that end without response headers", func(t *testing.T) {
		srv, reg, logs := newCheckedServer(t, newFakeStore())
		var mu sync.Mutex
		now := time.Unix(1000, 0)
		srv.metrics.config.now = func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
		later := func(d time.Duration) { mu.Lock(); now = now.Add(d); mu.Unlock() }
		forward := func(k string) {
			_, err := run(t, srv, endCanceled, keyed("POST", k, true))
			require.NoError(t, err)
		}
		for i := range noResponseRun - 1 {
			forward(fmt.Sprint("a", i))
		}
		require.Equal(t, only(), problems(t, reg), "a few can be clients that hung up")
		forward("a")
		require.Equal(t, only(problemNoResponseHeaders), problems(t, reg), "a run, and never any response headers")
		later(problemWindow)
		require.Equal(t, only(), problems(t, reg), "cleared after the window")
		_, err := run(t, srv, endCanceled, keyed("POST", "b", true), withCodeDetails(respHeaders(true, ":status", "200"), "via_upstream"))
		require.NoError(t, err)
		for i := range noResponseRun - 1 {
			forward(fmt.Sprint("c", i))
		}
		require.Equal(t, only(), problems(t, reg), "response headers in between start the run again")
		for i := range 3 {
			forward(fmt.Sprint("d", i))
		}
		require.Equal(t, only(), problems(t, reg), "a long run, but response headers came within the window: clients that hung up")
		later(problemWindow)
		forward("e")
		require.Equal(t, only(problemNoResponseHeaders), problems(t, reg), "a run, and no response headers for the whole window")
		forward("f")
		require.Equal(t, 2, strings.Count(logs.String(), "problem="+problemNoResponseHeaders), "once per appearance:\n%s", logs.String())
	})
}
