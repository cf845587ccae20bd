package processor

import (
	"context"
	"fmt"
	"testing"

	"github.com/stretchr/testify/require"
	"google.golang.org/grpc/metadata"

	"github.com/idemproxy/idemproxy/internal/idem"
)

func TestUpstreamAttempts(t *testing.T) {
	for _, tc := range []struct {
		kv   []string
		want int
	}{
		{nil, 0},
		{[]string{attemptCountHeader, "1"}, 1},
		{[]string{attemptCountHeader, "3"}, 3},
		{[]string{attemptCountHeader, "0"}, 0},
		{[]string{attemptCountHeader, "x"}, 0},
	} {
		require.Equal(t, tc.want, upstreamAttempts(headerMap(tc.kv...).GetHeaders()), "%v", tc.kv)
	}
}

func TestRouteOf(t *testing.T) {
	require.Equal(t, "api.example/charge", routeOf("API.example", "/charge?customer=42"))
	require.Equal(t, "api.example/strict/", routeOf("api.example", "/strict/orders/42"))
	require.Equal(t, "api.example/", routeOf("api.example", "/"))
}

func TestRetryLog_bounded(t *testing.T) {
	var r retryLog
	first, _ := r.first("a")
	require.True(t, first)
	first, _ = r.first("a")
	require.False(t, first, "once per route")
	for i := 1; i < maxRetryRoutes; i++ {
		first, _ = r.first(fmt.Sprint(i))
		require.True(t, first)
	}
	first, overflow := r.first("one too many")
	require.False(t, first)
	require.True(t, overflow, "one summary line past the bound")
	first, overflow = r.first("another")
	require.False(t, first || overflow)
	require.Len(t, r.routes, maxRetryRoutes)
}

func TestServer_policyFor_retries(t *testing.T) {
	srv, _ := newTestServer(t, newFakeStore(), nil)
	p, err := srv.policyFor(mdContext(t, mdRetries, retriesNeverSent))
	require.NoError(t, err)
	require.True(t, p.retriesNeverSent)
	p, err = srv.policyFor(mdContext(t, mdRetries, retriesMayRun))
	require.NoError(t, err)
	require.False(t, p.retriesNeverSent)
	_, err = srv.policyFor(mdContext(t, mdRetries, "sometimes"))
	require.ErrorContains(t, err, `x-idemproxy-retries="sometimes" is neither never-sent nor may-run`)
}

// A keyed response Envoy retried upstream: stored with the attempt count,
// counted, and, when its status is one the key would be given back for,
// held as an unknown outcome instead, unless the route declares that its
// retries never re-send a request that reached the upstream.
func TestServer_Process_upstreamRetries(t *testing.T) {
	t.Run("stored and marked", func(t *testing.T) {
		store := newFakeStore()
		srv, reg := newTestServer(t, store, nil)
		_, err := run(t, srv, endEOF, keyed("POST", "k", true), respHeaders(true, ":status", "201", attemptCountHeader, "2"))
		require.NoError(t, err)
		require.Equal(t, []string{"acquire", "complete"}, store.ops())
		rec := store.callsOf("complete")[0].rec
		require.Equal(t, 2, rec.UpstreamAttempts)
		require.Empty(t, headerGet(rec.Headers, attemptCountHeader), "Envoy's header is not replayed")
		require.EqualValues(t, 1, counter(t, reg, "idemproxy_upstream_retries_total", "kind", retryMayHaveRun))
	})
	t.Run("one attempt is not a retry", func(t *testing.T) {
		store := newFakeStore()
		srv, reg := newTestServer(t, store, nil)
		_, err := run(t, srv, endEOF, keyed("POST", "k", true), respHeaders(true, ":status", "201", attemptCountHeader, "1"))
		require.NoError(t, err)
		require.Equal(t, idem.Record{}.UpstreamAttempts, store.callsOf("complete")[0].rec.UpstreamAttempts)
		require.Zero(t, counter(t, reg, "idemproxy_upstream_retries_total", "kind", retryMayHaveRun))
	})
	for _, tc := range []struct {
		name    string
		headers []string
		attrs   string
	}{
		// The upstream's own 503, as Envoy's router passes it on: with the
		// service-time header (without it and without code_details, a 503
		// is taken for Envoy's local reply: origin.go).
		{"a status not stored", []string{":status", "503", attemptCountHeader, "3", upstreamServiceTime, "4"}, ""},
		{"a connect failure on the last attempt", []string{":status", "503", attemptCountHeader, "3"},
			"upstream_reset_before_response_started{remote_connection_failure}"},
	} {
		t.Run(tc.name+" holds the key when an earlier attempt may have run", func(t *testing.T) {
			store := newFakeStore()
			srv, reg := newTestServer(t, store, func(c *Config) { c.NoStore = MustParseStatusSet("5xx") })
			resp := respHeaders(true, tc.headers...)
			if tc.attrs != "" {
				resp = withCodeDetails(resp, tc.attrs)
			}
			_, err := run(t, srv, endEOF, keyed("POST", "k", true), resp)
			require.NoError(t, err)
			require.Equal(t, []string{"acquire", "abandon"}, store.ops())
			require.EqualValues(t, 1, counter(t, reg, "idemproxy_responses_total", "result", resultUnknownOutcome))
			require.EqualValues(t, 1, counter(t, reg, "idemproxy_upstream_retries_total", "kind", retryMayHaveRun))
		})
		t.Run(tc.name+" releases the key on a route that declares never-sent retries", func(t *testing.T) {
			store := newFakeStore()
			srv, reg := newTestServer(t, store, func(c *Config) { c.NoStore = MustParseStatusSet("5xx") })
			s := withRoutePolicy(t, srv, mdRetries, retriesNeverSent)
			requireContinue(t, s.roundTrip(keyed("POST", "k", true)))
			resp := respHeaders(true, tc.headers...)
			if tc.attrs != "" {
				resp = withCodeDetails(resp, tc.attrs)
			}
			s.roundTrip(resp)
			s.end(endEOF)
			require.NoError(t, s.wait())
			require.Equal(t, []string{"acquire", "release"}, store.ops())
			require.Zero(t, counter(t, reg, "idemproxy_upstream_retries_total", "kind", retryMayHaveRun))
			require.EqualValues(t, 1, counter(t, reg, "idemproxy_upstream_retries_total", "kind", retryDeclaredSafe))
		})
	}
}

// mdContext is a stream context carrying per-route metadata.
func mdContext(t *testing.T, kv ...string) context.Context {
	return metadata.NewIncomingContext(t.Context(), metadata.Pairs(kv...))
}
