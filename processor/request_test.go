package processor

import (
	"strconv"
	"strings"
	"testing"
	"time"

	filterv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_proc/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"github.com/stretchr/testify/require"

	"github.com/idemproxy/idemproxy/internal/idem"
)

func TestServer_Process_passthrough(t *testing.T) {
	tests := []struct {
		name    string
		methods []string
		headers []string
	}{
		{"no key header", nil, []string{":method", "POST", ":path", "/", ":authority", testAuthority}},
		{"method not in the allow-list", []string{"POST"},
			[]string{":method", "GET", ":path", "/", ":authority", testAuthority, "idempotency-key", "k"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			store := newFakeStore()
			srv, reg := newTestServer(t, store, func(c *Config) { c.Methods = tc.methods })
			out, err := run(t, srv, endEOF, reqHeaders(false, tc.headers...))
			require.NoError(t, err)
			require.Len(t, out, 1)
			require.NotNil(t, out[0].GetRequestHeaders())
			require.Equal(t, "CONTINUE", out[0].GetRequestHeaders().GetResponse().GetStatus().String())
			requireSkipRest(t, out[0].GetModeOverride())
			require.Empty(t, store.callsOf(""))
			require.EqualValues(t, 1, counter(t, reg, "idemproxy_requests_total", "outcome", outcomePassthrough))
		})
	}
}

func TestServer_Process_methodAllowListTakesPart(t *testing.T) {
	store := newFakeStore()
	srv, _ := newTestServer(t, store, func(c *Config) { c.Methods = []string{"post"} })
	out, err := run(t, srv, endEOF, keyed("POST", "k", true))
	require.NoError(t, err)
	require.Len(t, out, 1)
	requireContinue(t, out[0])
	require.Equal(t, "acquire", store.ops()[0])
}

func TestServer_Process_invalidKey(t *testing.T) {
	tests := []struct{ name, key string }{
		{"empty", ""},
		{"only spaces", "   "},
		{"empty quoted string", `""`},
		{"unterminated quote", `"abc`},
		{"quote inside a quoted string", `"a"b"`},
		{"bad escape", `"a\x"`},
		{"control character", "a\x01b"},
		{"control character when quoted", "\"a\tb\""},
		{"inner space", "a b"},
		{"non-ASCII", "clé"},
		{"too long", strings.Repeat("k", 256)},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			store := newFakeStore()
			srv, reg := newTestServer(t, store, nil)
			out, err := run(t, srv, endEOF, keyed("POST", tc.key, true))
			require.NoError(t, err)
			require.Len(t, out, 1)
			_, hs := requireProblem(t, out[0], 400, "invalid-key")
			require.Empty(t, headerGet(hs, "retry-after"))
			require.Empty(t, store.callsOf(""))
			require.EqualValues(t, 1, counter(t, reg, "idemproxy_requests_total", "outcome", outcomeInvalidKey))
		})
	}
}

func TestServer_Process_quotedKeyEqualsBareKey(t *testing.T) {
	store := newFakeStore()
	srv, _ := newTestServer(t, store, nil)

	out, err := run(t, srv, endCanceled, keyed("POST", "order-1", true))
	require.NoError(t, err)
	requireContinue(t, out[0])

	// The first stream ended after its request went upstream: an unknown
	// outcome, held, so the same key is refused as such.
	out, err = run(t, srv, endCanceled, keyed("POST", `"order-1"`, true))
	require.NoError(t, err)
	requireProblem(t, out[0], 409, "outcome-unknown")

	acq := store.callsOf("acquire")
	require.Len(t, acq, 2)
	require.Equal(t, acq[0].key, acq[1].key)
	require.Equal(t, keyOf("order-1"), acq[0].key)
}

func TestServer_Process_twoKeyHeaders(t *testing.T) {
	tests := []struct {
		name, first, second string
		wantStatus          int
	}{
		{"same value", "k-1", `"k-1"`, 0},
		{"different values", "k-1", "k-2", 400},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			store := newFakeStore()
			srv, _ := newTestServer(t, store, nil)
			out, err := run(t, srv, endEOF, reqHeaders(true, ":method", "POST", ":path", "/", ":authority", testAuthority,
				"idempotency-key", tc.first, "x-idempotency-key", tc.second))
			require.NoError(t, err)
			require.Len(t, out, 1)
			if tc.wantStatus == 0 {
				requireContinue(t, out[0])
				return
			}
			p, _ := requireProblem(t, out[0], tc.wantStatus, "invalid-key")
			require.Contains(t, p.Detail, "several different")
			require.Empty(t, store.callsOf(""))
		})
	}
}

func TestServer_Process_decidesAtHeadersWithoutBody(t *testing.T) {
	store := newFakeStore()
	srv, reg := newTestServer(t, store, nil)
	out, err := run(t, srv, endEOF, keyed("GET", "k", true))
	require.NoError(t, err)
	require.Len(t, out, 1)
	requireContinue(t, out[0])
	acq := store.callsOf("acquire")
	require.Len(t, acq, 1)
	require.Equal(t, fingerprint("GET", "/charge?x=1", nil), acq[0].fp)
	require.True(t, acq[0].hasDeadline, "acquire must be bounded by the store timeout")
	require.EqualValues(t, 1, counter(t, reg, "idemproxy_requests_total", "outcome", outcomeAcquired))
}

func TestServer_Process_decidesAtBufferedBody(t *testing.T) {
	store := newFakeStore()
	srv, _ := newTestServer(t, store, nil)
	s := serve(t, srv)

	requireContinue(t, s.roundTrip(keyed("POST", "k", false)))
	require.Empty(t, store.callsOf(""), "the fingerprint needs the body")

	requireContinue(t, s.roundTrip(reqBody(`{"amount":10}`, true)))
	acq := store.callsOf("acquire")
	require.Len(t, acq, 1)
	require.Equal(t, fingerprint("POST", "/charge?x=1", []byte(`{"amount":10}`)), acq[0].fp)
	s.end(endEOF)
	require.NoError(t, s.wait())
}

func TestServer_Process_inProgress(t *testing.T) {
	fp := fingerprint("POST", "/charge?x=1", nil)
	route := routeOf(testAuthority, "/charge?x=1")
	tests := []struct {
		name          string
		running, left time.Duration
		typical       time.Duration // the route's history; 0: none
		want          int
		basis         string
	}{
		{"no history: the time run so far, rounded up", 2200 * time.Millisecond, 25 * time.Second, 0, 3, basisRunning},
		{"the route's typical duration less the time run", 1200 * time.Millisecond, 25 * time.Second, 5 * time.Second, 4, basisTypical},
		{"never past the lease left", 10 * time.Second, 2500 * time.Millisecond, 0, 2, basisLease},
		{"a record without its grant time: at least one second", 0, 25 * time.Second, 0, 1, basisRunning},
		{"lease all but over: at least one second", 5 * time.Second, time.Millisecond, 0, 1, basisLease},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			store := newFakeStore()
			store.seedRunning(keyOf("k"), fp, tc.running, tc.left)
			srv, reg := newTestServer(t, store, nil)
			srv.durations.observe(route, tc.typical)
			out, err := run(t, srv, endEOF, keyed("POST", "k", true))
			require.NoError(t, err)
			_, hs := requireProblem(t, out[0], 409, "in-progress")
			require.Equal(t, strconv.Itoa(tc.want), headerGet(hs, "retry-after"))
			require.Equal(t, []string{"acquire"}, store.ops())
			require.EqualValues(t, 1, counter(t, reg, "idemproxy_requests_total", "outcome", outcomeConflict))
			require.EqualValues(t, 1, histogramCount(t, reg, "idemproxy_retry_after_seconds", "basis", tc.basis))
		})
	}
}

func TestServer_Process_inProgressLearnsTheRoute(t *testing.T) {
	store := newFakeStore()
	srv, _ := newTestServer(t, store, nil)
	route := routeOf(testAuthority, "/charge?x=1")
	require.Zero(t, srv.durations.typical(route), "no history yet")
	out, err := run(t, srv, endEOF, keyed("POST", "first", true), respHeaders(false, ":status", "200"), respBody("x", true))
	require.NoError(t, err)
	requireContinue(t, out[0])
	require.Positive(t, srv.durations.typical(route), "a stored response is the route's first sample")
	require.Zero(t, srv.durations.typical(routeOf(testAuthority, "/other")), "per route")
}

func TestServer_Process_fingerprintMismatch(t *testing.T) {
	other := fingerprint("POST", "/charge?x=1", []byte("another body"))
	tests := []struct {
		name string
		seed func(*fakeStore)
	}{
		{"in progress", func(s *fakeStore) { s.seedInProgress(keyOf("k"), other, time.Second) }},
		{"completed", func(s *fakeStore) {
			s.seedCompleted(keyOf("k"), idem.Record{Fingerprint: other, Status: 200, Body: []byte("x"), BodyStored: true})
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			store := newFakeStore()
			tc.seed(store)
			srv, reg := newTestServer(t, store, nil)
			out, err := run(t, srv, endEOF, keyed("POST", "k", false), reqBody("a body", true))
			require.NoError(t, err)
			require.Len(t, out, 2)
			requireContinue(t, out[0])
			requireProblem(t, out[1], 422, "fingerprint-mismatch")
			require.Equal(t, []string{"acquire"}, store.ops())
			require.EqualValues(t, 1, counter(t, reg, "idemproxy_requests_total", "outcome", outcomeMismatch))
		})
	}
}

func TestServer_Process_replaysCompleted(t *testing.T) {
	store := newFakeStore()
	store.seedCompleted(keyOf("k"), idem.Record{
		Fingerprint: fingerprint("POST", "/charge?x=1", nil),
		Status:      201,
		Headers:     []idem.Header{{Name: "content-type", Value: "application/json"}, {Name: "x-a", Value: "1"}, {Name: "x-a", Value: "2"}},
		Body:        []byte(`{"id":"ch_1"}`),
		BodyStored:  true,
	})
	srv, reg := newTestServer(t, store, nil)
	out, err := run(t, srv, endEOF, keyed("POST", "k", true))
	require.NoError(t, err)
	require.Len(t, out, 1)

	ir, hs := immediateOf(t, out[0])
	require.EqualValues(t, 201, ir.GetStatus().GetCode())
	require.Equal(t, `{"id":"ch_1"}`, string(ir.GetBody()))
	require.Equal(t, []idem.Header{
		{Name: "content-type", Value: "application/json"}, {Name: "x-a", Value: "1"}, {Name: "x-a", Value: "2"}, {Name: "idempotent-replayed", Value: "true"},
	}, hs)
	// The first line of a name replaces, the next ones add.
	var appends []bool
	for _, o := range ir.GetHeaders().GetSetHeaders() {
		appends = append(appends, o.GetAppend().GetValue())
	}
	require.Equal(t, []bool{false, false, true, false}, appends)
	require.Equal(t, []string{"acquire"}, store.ops())
	require.EqualValues(t, 1, counter(t, reg, "idemproxy_requests_total", "outcome", outcomeReplayed))
}

func TestServer_Process_completedWithoutBody(t *testing.T) {
	store := newFakeStore()
	store.seedCompleted(keyOf("k"), idem.Record{Fingerprint: fingerprint("POST", "/charge?x=1", nil), Status: 201})
	srv, reg := newTestServer(t, store, nil)
	out, err := run(t, srv, endEOF, keyed("POST", "k", true))
	require.NoError(t, err)
	p, _ := requireProblem(t, out[0], 409, "response-not-stored")
	require.Contains(t, p.Detail, "status 201")
	require.EqualValues(t, 1, counter(t, reg, "idemproxy_requests_total", "outcome", outcomeNotStored))
}

func TestServer_Process_storeError(t *testing.T) {
	t.Run("fails closed", func(t *testing.T) {
		store := newFakeStore()
		store.failOn("acquire", errRedisDown)
		srv, reg := newTestServer(t, store, nil)
		out, err := run(t, srv, endEOF, keyed("POST", "k", false), reqBody("b", true))
		require.NoError(t, err)
		require.Len(t, out, 2)
		_, hs := requireProblem(t, out[1], 503, "store-unavailable")
		require.Equal(t, "1", headerGet(hs, "retry-after"))
		// The release is for a lock Redis may have taken after we stopped
		// waiting; nothing went upstream.
		require.Equal(t, []string{"acquire", "release"}, store.ops())
		require.EqualValues(t, 1, counter(t, reg, "idemproxy_requests_total", "outcome", outcomeStoreError))
	})
	t.Run("fails open when told to", func(t *testing.T) {
		store := newFakeStore()
		store.failOn("acquire", errRedisDown)
		srv, reg := newTestServer(t, store, func(c *Config) { c.FailOpen = true })
		out, err := run(t, srv, endEOF, keyed("POST", "k", true), respHeaders(false, ":status", "200"), respBody("x", true))
		require.NoError(t, err)
		require.Len(t, out, 3)
		requireContinue(t, out[0])
		// Nothing to store: the response body is not streamed to us.
		require.Equal(t, "NONE", out[1].GetModeOverride().GetResponseBodyMode().String())
		require.Equal(t, []string{"acquire"}, store.ops())
		require.EqualValues(t, 1, counter(t, reg, "idemproxy_requests_total", "outcome", outcomeFailOpen))
	})
}

func TestServer_Process_bodyNotBuffered(t *testing.T) {
	modes := map[string]filterv3.ProcessingMode_BodySendMode{
		"none":     filterv3.ProcessingMode_NONE,
		"streamed": filterv3.ProcessingMode_STREAMED,
	}
	for name, mode := range modes {
		t.Run("request body mode "+name+" is refused before anything goes upstream", func(t *testing.T) {
			store := newFakeStore()
			srv, reg := newTestServer(t, store, nil)
			req := keyed("POST", "k", false)
			req.ProtocolConfig = &extprocv3.ProtocolConfiguration{RequestBodyMode: mode}
			out, err := run(t, srv, endEOF, req)
			require.NoError(t, err)
			require.Len(t, out, 1)
			requireProblem(t, out[0], 500, "misconfigured")
			require.Empty(t, store.callsOf(""))
			require.EqualValues(t, 1, counter(t, reg, "idemproxy_requests_total", "outcome", outcomeMisconfigured))
		})
	}
	t.Run("a request without a body needs no buffering", func(t *testing.T) {
		store := newFakeStore()
		srv, _ := newTestServer(t, store, nil)
		req := keyed("GET", "k", true)
		req.ProtocolConfig = &extprocv3.ProtocolConfiguration{RequestBodyMode: filterv3.ProcessingMode_NONE}
		out, err := run(t, srv, endEOF, req)
		require.NoError(t, err)
		requireContinue(t, out[0])
	})
}

func TestServer_Process_headroomForFence(t *testing.T) {
	withHeaders := func(n int, valueLen int) *extprocv3.ProcessingRequest {
		kv := []string{":method", "POST", ":path", "/charge", ":authority", testAuthority, "idempotency-key", "k"}
		for i := len(kv) / 2; i < n; i++ {
			kv = append(kv, "x-h"+strconv.Itoa(i), strings.Repeat("v", valueLen))
		}
		return reqHeaders(true, kv...)
	}
	tests := []struct {
		name   string
		req    *extprocv3.ProcessingRequest
		fence  string
		refuse bool
	}{
		{"99 headers leave room for the fence", withHeaders(99, 1), "idempotency-fence", false},
		{"100 headers leave none", withHeaders(100, 1), "idempotency-fence", true},
		{"62,000 bytes of headers leave none", withHeaders(14, 6200), "idempotency-fence", true},
		{"without fencing there is nothing to add", withHeaders(100, 1), "", false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			store := newFakeStore()
			srv, _ := newTestServer(t, store, func(c *Config) { c.FenceHeader = tc.fence })
			out, err := run(t, srv, endEOF, tc.req)
			require.NoError(t, err)
			if tc.refuse {
				requireProblem(t, out[0], 431, "headers-too-large")
				require.Empty(t, store.callsOf(""), "refused before any lock")
				return
			}
			requireContinue(t, out[0])
		})
	}
}
