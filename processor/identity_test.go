package processor

import (
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"github.com/stretchr/testify/require"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/idemproxy/idemproxy/internal/idem"
)

func TestNormalizeAuthority(t *testing.T) {
	for _, tc := range []struct{ in, scheme, want string }{
		{"a.example", "http", "a.example"},
		{"A.EXAMPLE", "http", "a.example"},
		{"a.example:80", "http", "a.example"},
		{"a.example:80", "", "a.example"},
		{"a.example:443", "https", "a.example"},
		{"a.example:443", "http", "a.example:443"},
		{"a.example:80", "https", "a.example:80"},
		{"a.example:8080", "http", "a.example:8080"},
		{"a.example.", "http", "a.example"},
		{"[::1]:80", "http", "[::1]"},
		{"[::1]:443", "https", "[::1]"},
		{"[::1]:8443", "https", "[::1]:8443"},
		{"[2001:DB8::1]", "http", "[2001:db8::1]"},
		{"", "http", ""},
	} {
		require.Equal(t, tc.want, normalizeAuthority(tc.in, tc.scheme), "%q over %s", tc.in, tc.scheme)
	}
}

// withAuth is keyed() with an Authorization header and an authority.
func withAuth(authority, authorization string) *extprocv3.ProcessingRequest {
	kv := []string{":method", "POST", ":path", "/charge?x=1", ":authority", authority, ":scheme", "http", "idempotency-key", "k"}
	if authorization != "" {
		kv = append(kv, "authorization", authorization)
	}
	return reqHeaders(true, kv...)
}

// withJWT adds the verified payload jwt_authn would forward.
func withJWT(req *extprocv3.ProcessingRequest, payloadName string, claims map[string]any) *extprocv3.ProcessingRequest {
	payload, err := structpb.NewStruct(claims)
	if err != nil {
		panic(err)
	}
	req.MetadataContext = &corev3.Metadata{FilterMetadata: map[string]*structpb.Struct{
		jwtNamespace: {Fields: map[string]*structpb.Value{payloadName: structpb.NewStructValue(payload)}},
	}}
	return req
}

func acquiredKeys(t *testing.T, srv *Server, store *fakeStore, reqs ...*extprocv3.ProcessingRequest) []string {
	t.Helper()
	var keys []string
	for _, r := range reqs {
		_, err := run(t, srv, endEOF, r)
		require.NoError(t, err)
	}
	for _, c := range store.callsOf("acquire") {
		keys = append(keys, c.key)
	}
	return keys
}

func TestServer_Process_identityScope(t *testing.T) {
	t.Run("two credentials never share a key; the same one does", func(t *testing.T) {
		store := newFakeStore()
		srv, _ := newTestServer(t, store, nil)
		keys := acquiredKeys(t, srv, store,
			withAuth(testAuthority, "Bearer alice-token"), withAuth(testAuthority, "Bearer bob-token"),
			withAuth(testAuthority, "Bearer alice-token"), withAuth(testAuthority, ""))
		require.NotEqual(t, keys[0], keys[1])
		require.Equal(t, keys[0], keys[2])
		require.NotEqual(t, keys[0], keys[3])
		require.Equal(t, keyOfCredential("Bearer alice-token", "k"), keys[0])
		require.Equal(t, keyOf("k"), keys[3], "no credential: the previous version's key")
		for _, c := range store.callsOf("acquire") {
			require.NotContains(t, c.scope, "alice")
		}
	})
	t.Run("authorities that differ only in case or default port are one scope", func(t *testing.T) {
		store := newFakeStore()
		srv, _ := newTestServer(t, store, nil)
		keys := acquiredKeys(t, srv, store, withAuth(testAuthority, ""), withAuth("API.Example.COM:80", ""), withAuth(testAuthority+":8080", ""))
		require.Equal(t, keys[0], keys[1])
		require.NotEqual(t, keys[0], keys[2])
	})
	t.Run("--scope-authorization=false scopes by authority alone", func(t *testing.T) {
		store := newFakeStore()
		srv, _ := newTestServer(t, store, func(c *Config) { c.ScopeAuthorization = false })
		keys := acquiredKeys(t, srv, store, withAuth(testAuthority, "Bearer a"), withAuth(testAuthority, "Bearer b"))
		require.Equal(t, keys[0], keys[1])
	})
	t.Run("a JWT claim replaces the credential: a refreshed token keeps its records", func(t *testing.T) {
		store := newFakeStore()
		srv, _ := newTestServer(t, store, func(c *Config) { c.ScopeJWTClaim = "sub" })
		keys := acquiredKeys(t, srv, store,
			withJWT(withAuth(testAuthority, "Bearer token-1"), DefaultJWTPayload, map[string]any{"sub": "user-7"}),
			withJWT(withAuth(testAuthority, "Bearer token-2"), DefaultJWTPayload, map[string]any{"sub": "user-7"}),
			withJWT(withAuth(testAuthority, "Bearer token-1"), DefaultJWTPayload, map[string]any{"sub": "user-8"}),
			withJWT(withAuth(testAuthority, "Bearer t"), DefaultJWTPayload, map[string]any{"sub": 42}))
		require.Equal(t, keys[0], keys[1], "same subject, another token")
		require.NotEqual(t, keys[0], keys[2], "another subject")
		require.Len(t, keys, 4, "a numeric claim counts")
	})
	t.Run("a keyed request without the claim is refused, never scoped to nobody", func(t *testing.T) {
		store := newFakeStore()
		srv, reg := newTestServer(t, store, func(c *Config) { c.ScopeJWTClaim = "sub"; c.ScopeJWTPayload = "claims" })
		for _, req := range []*extprocv3.ProcessingRequest{
			withAuth(testAuthority, "Bearer x"),
			withJWT(withAuth(testAuthority, "Bearer x"), DefaultJWTPayload, map[string]any{"sub": "u"}), // other payload name
			withJWT(withAuth(testAuthority, "Bearer x"), "claims", map[string]any{"iss": "u"}),
			withJWT(withAuth(testAuthority, "Bearer x"), "claims", map[string]any{"sub": ""}),
		} {
			out, err := run(t, srv, endEOF, req)
			require.NoError(t, err)
			p, _ := requireProblem(t, out[0], 401, "identity-required")
			require.Contains(t, p.Detail, `"sub"`)
		}
		require.Empty(t, store.callsOf("acquire"))
		require.EqualValues(t, 4, counter(t, reg, "idemproxy_requests_total", "outcome", outcomeIdentityRequired))
		out, err := run(t, srv, endEOF, reqHeaders(true, ":method", "POST", ":path", "/", ":authority", "a"))
		require.NoError(t, err)
		require.NotNil(t, out[0].GetRequestHeaders(), "keyless requests need no identity")
	})
}

func TestServer_Process_legacyScope(t *testing.T) {
	legacy := func(authority string) string { return storeKey([]string{authority}, "k") }
	t.Run("during the migration a record of the previous scope answers the retry", func(t *testing.T) {
		store := newFakeStore()
		srv, _ := newTestServer(t, store, func(c *Config) { c.ScopeLegacyUntil = time.Now().Add(time.Hour) })
		rec := idem.Record{Fingerprint: fingerprint("POST", "/charge?x=1", nil), Status: 201, Body: []byte("first"), BodyStored: true}
		store.seedCompleted(legacy(testAuthority+":80"), rec)
		out, err := run(t, srv, endEOF, withAuth(testAuthority+":80", "Bearer a"))
		require.NoError(t, err)
		ir, _ := immediateOf(t, out[0])
		require.EqualValues(t, 201, ir.GetStatus().GetCode(), "the replay of the previous version's record")
		require.Equal(t, []string{"acquire", "peek", "release"}, store.ops(), "the new grant is given back")
		_, held := store.entry(keyOfCredential("Bearer a", "k"))
		require.False(t, held)
	})
	t.Run("a previous-scope record only the replay endpoint can serve gets a token for its own key", func(t *testing.T) {
		store, replays := newFakeStore(), &fakeReplays{}
		srv, _ := newReplayServer(t, store, replays, func(c *Config) { c.ScopeLegacyUntil = time.Now().Add(time.Hour) })
		rec := idem.Record{Fingerprint: fingerprint("POST", "/charge?x=1", nil), Status: 200, Body: []byte("first"), BodyStored: true, Trailers: true}
		store.seedCompleted(legacy(testAuthority+":80"), rec)
		out, err := run(t, srv, endEOF, withAuth(testAuthority+":80", "Bearer a"))
		require.NoError(t, err)
		common, ok := commonOf(out[0])
		require.True(t, ok)
		require.True(t, common.GetClearRouteCache(), "re-routed to the replay endpoint")
		require.Equal(t, []string{legacy(testAuthority + ":80")}, replays.issued, "the token replays the record where it lives")
	})
	t.Run("a key new in both schemes runs, at the cost of one peek", func(t *testing.T) {
		store := newFakeStore()
		srv, _ := newTestServer(t, store, func(c *Config) { c.ScopeLegacyUntil = time.Now().Add(time.Hour) })
		out, err := run(t, srv, endEOF, withAuth(testAuthority, "Bearer a"))
		require.NoError(t, err)
		requireContinue(t, out[0])
		require.Equal(t, "peek", store.ops()[1])
	})
	t.Run("a Redis failure while peeking fails closed", func(t *testing.T) {
		store := newFakeStore()
		store.failOn("peek", errRedisDown)
		srv, _ := newTestServer(t, store, func(c *Config) { c.ScopeLegacyUntil = time.Now().Add(time.Hour) })
		out, err := run(t, srv, endEOF, withAuth(testAuthority, "Bearer a"))
		require.NoError(t, err)
		requireProblem(t, out[0], 503, "store-unavailable")
	})
	t.Run("after the migration, or when the keys are equal, no peek", func(t *testing.T) {
		store := newFakeStore()
		srv, _ := newTestServer(t, store, func(c *Config) { c.ScopeLegacyUntil = time.Now().Add(-time.Second) })
		_, err := run(t, srv, endEOF, withAuth(testAuthority, "Bearer a"))
		require.NoError(t, err)
		srv2, _ := newTestServer(t, store, func(c *Config) { c.ScopeLegacyUntil = time.Now().Add(time.Hour) })
		_, err = run(t, srv2, endEOF, withAuth(testAuthority, ""))
		require.NoError(t, err)
		require.Empty(t, store.callsOf("peek"))
	})
}

func TestServer_StoreKey(t *testing.T) {
	srv, _ := newTestServer(t, newFakeStore(), nil)
	got, err := srv.StoreKey(ScopeInput{Authority: "API.example.com:80", Authorization: "Bearer alice-token"}, `"k"`)
	require.NoError(t, err)
	require.Equal(t, keyOfCredential("Bearer alice-token", "k"), got, "the same key a request gets")
	jwt, _ := newTestServer(t, newFakeStore(), func(c *Config) { c.ScopeJWTClaim = "sub" })
	_, err = jwt.StoreKey(ScopeInput{Authority: "a"}, "k")
	require.ErrorContains(t, err, `"sub"`)
}
