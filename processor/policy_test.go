package processor

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"google.golang.org/grpc/metadata"
)

// withRoutePolicy opens a stream carrying per-route metadata, as Envoy's
// grpc_initial_metadata sends it.
func withRoutePolicy(t *testing.T, srv *Server, kv ...string) *session {
	return serveStream(t, srv, newFakeStream(metadata.NewIncomingContext(t.Context(), metadata.Pairs(kv...))))
}

func TestServer_policyFor(t *testing.T) {
	srv, _ := newTestServer(t, newFakeStore(), nil)
	tests := []struct {
		name    string
		md      []string
		want    policy
		wantErr string
	}{
		{"no metadata keeps the server's settings", nil,
			policy{lockTTL: 30 * time.Second, heartbeat: 10 * time.Second, retention: 24 * time.Hour, maxWait: 10 * time.Second}, ""},
		{"a shorter lock TTL brings a heartbeat of a third of it", []string{mdLockTTL, "6s"},
			policy{lockTTL: 6 * time.Second, heartbeat: 2 * time.Second, retention: 24 * time.Hour, maxWait: 10 * time.Second}, ""},
		{"a longer lock TTL keeps the server's heartbeat", []string{mdLockTTL, "2m"},
			policy{lockTTL: 2 * time.Minute, heartbeat: 10 * time.Second, retention: 24 * time.Hour, maxWait: 10 * time.Second}, ""},
		{"every field set", []string{mdLockTTL, "5s", mdHeartbeat, "1s", mdRetention, "1h", mdKeyRequired, "true"},
			policy{lockTTL: 5 * time.Second, heartbeat: time.Second, retention: time.Hour, keyRequired: true, maxWait: 10 * time.Second}, ""},
		{"not a duration", []string{mdLockTTL, "banana"}, policy{}, "x-idemproxy-lock-ttl=\"banana\" is not a positive duration"},
		{"not a boolean", []string{mdKeyRequired, "sometimes"}, policy{}, "is not a boolean"},
		{"lock TTL under a second", []string{mdLockTTL, "500ms"}, policy{}, "must be at least 1s"},
		{"heartbeat not below the TTL", []string{mdLockTTL, "5s", mdHeartbeat, "5s"}, policy{}, "must be shorter than the lock TTL"},
		{"retention below the TTL", []string{mdLockTTL, "1m", mdRetention, "30s"}, policy{}, "must be at least the lock TTL"},
		{"a route that waits, in shadow", []string{mdInProgress, "wait", mdMaxWait, "25s", mdMode, "shadow"},
			policy{lockTTL: 30 * time.Second, heartbeat: 10 * time.Second, retention: 24 * time.Hour, inProgress: InProgressWait, maxWait: 25 * time.Second, mode: ModeShadow}, ""},
		{"a route that enforces and conflicts", []string{mdInProgress, "conflict", mdMode, "enforce"},
			policy{lockTTL: 30 * time.Second, heartbeat: 10 * time.Second, retention: 24 * time.Hour, maxWait: 10 * time.Second}, ""},
		{"not a waiting policy", []string{mdInProgress, "linger"}, policy{}, `must be conflict or wait`},
		{"not a mode", []string{mdMode, "audit"}, policy{}, `must be enforce or shadow`},
		{"a wait past Envoy's limit", []string{mdMaxWait, "2m"}, policy{}, "must be at most 1m0s"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ctx := t.Context()
			if tc.md != nil {
				ctx = metadata.NewIncomingContext(ctx, metadata.Pairs(tc.md...))
			}
			got, err := srv.policyFor(ctx)
			if tc.wantErr != "" {
				require.ErrorContains(t, err, tc.wantErr)
				return
			}
			require.NoError(t, err)
			require.Equal(t, tc.want, got)
		})
	}
}

func TestServer_Process_routePolicy(t *testing.T) {
	t.Run("a route's lock TTL and retention reach the store", func(t *testing.T) {
		store := newFakeStore()
		srv, _ := newTestServer(t, store, nil)
		s := withRoutePolicy(t, srv, mdLockTTL, "7s", mdRetention, "2h")
		requireContinue(t, s.roundTrip(keyed("POST", "k", true)))
		requireContinue(t, s.roundTrip(respHeaders(true, ":status", "201")))
		s.end(endEOF)
		require.NoError(t, s.wait())
		require.Equal(t, 7*time.Second, store.callsOf("acquire")[0].ttl)
		require.Equal(t, 2*time.Hour, store.callsOf("complete")[0].ttl)
	})
	t.Run("a route that requires a key refuses a request without one", func(t *testing.T) {
		store := newFakeStore()
		srv, reg := newTestServer(t, store, nil)
		s := withRoutePolicy(t, srv, mdKeyRequired, "true")
		resp := s.roundTrip(reqHeaders(false, ":method", "POST", ":path", "/charge", ":authority", testAuthority))
		requireProblem(t, resp, 400, "key-required")
		s.end(endCanceled)
		require.NoError(t, s.wait())
		require.Empty(t, store.callsOf(""))
		require.EqualValues(t, 1, counter(t, reg, "idemproxy_requests_total", "outcome", outcomeKeyRequired))
	})
	t.Run("an invalid policy refuses keyed and keyless requests alike", func(t *testing.T) {
		for _, req := range [][]string{
			{":method", "POST", ":path", "/", ":authority", testAuthority, "idempotency-key", "k"},
			{":method", "POST", ":path", "/", ":authority", testAuthority},
		} {
			store := newFakeStore()
			srv, reg := newTestServer(t, store, nil)
			s := withRoutePolicy(t, srv, mdLockTTL, "soon")
			requireProblem(t, s.roundTrip(reqHeaders(true, req...)), 500, "misconfigured")
			s.end(endEOF)
			require.NoError(t, s.wait())
			require.Empty(t, store.callsOf(""))
			require.EqualValues(t, 1, counter(t, reg, "idemproxy_requests_total", "outcome", outcomeMisconfigured))
		}
	})
}
