package envoy

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/idemproxy/idemproxy/internal/testenv"
)

// TestEndToEnd_IdentityScope: with the shipped defaults, two credentials
// sending the same key and body never share a record, the same credential
// does, and authorities that differ only in case or default port are one
// scope over HTTP/1.1 and HTTP/2.
func TestEndToEnd_IdentityScope(t *testing.T) {
	t.Parallel()
	s := startStack(t)
	const body = `{"amount":5000}`

	t.Run("two credentials with the same key and body run twice, neither sees the other's", func(t *testing.T) {
		key := newKey(t)
		alice := s.do(t, "POST", "/charge", body, "Idempotency-Key", key, "Authorization", "Bearer alice-api-key")
		bob := s.do(t, "POST", "/charge", body, "Idempotency-Key", key, "Authorization", "Bearer bob-api-key")
		require.Equal(t, http.StatusOK, alice.status)
		require.Equal(t, http.StatusOK, bob.status)
		require.False(t, bob.replayed(), "bob's charge runs: %s", bob.body)
		require.NotEqual(t, chargeID(t, alice.body), chargeID(t, bob.body))
		require.Equal(t, 2, s.executions(t, key))

		again := s.do(t, "POST", "/charge", body, "Idempotency-Key", key, "Authorization", "Bearer alice-api-key")
		require.True(t, again.replayed())
		require.Equal(t, chargeID(t, alice.body), chargeID(t, again.body), "alice gets her own charge back")
		require.Equal(t, 2, s.executions(t, key), "the same credential twice: one execution and a replay")
	})

	t.Run("authority case and default port do not split a key, over HTTP/1.1 and HTTP/2", func(t *testing.T) {
		key := newKey(t)
		h2c := new(http.Protocols)
		h2c.SetUnencryptedHTTP2(true)
		h2 := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{Protocols: h2c}}
		var ids []string
		for i, tc := range []struct {
			client *http.Client
			host   string
		}{{s.client, "a.example"}, {s.client, "A.EXAMPLE"}, {s.client, "a.example:80"}, {h2, "a.example:80"}, {h2, "A.example"}} {
			req, err := http.NewRequest("POST", s.url+"/charge", strings.NewReader(body))
			require.NoError(t, err)
			req.Host = tc.host
			req.Header.Set("Idempotency-Key", key)
			resp, err := tc.client.Do(req)
			require.NoError(t, err)
			b, err := io.ReadAll(resp.Body)
			resp.Body.Close()
			require.NoError(t, err)
			require.Equal(t, http.StatusOK, resp.StatusCode, "%s: %s", tc.host, b)
			require.Equal(t, i > 0, resp.Header.Get("Idempotent-Replayed") == "true", "request %d (%s, %s)", i, tc.host, resp.Proto)
			ids = append(ids, chargeID(t, b))
		}
		require.Equal(t, 1, s.executions(t, key), "one execution for every spelling")
		for _, id := range ids {
			require.Equal(t, ids[0], id)
		}
	})

	t.Run("a client's own fence never reaches the backend, keyed or not", func(t *testing.T) {
		before := s.stats(t).FencedWithoutKey
		r := s.do(t, "POST", "/charge", body, "Idempotency-Fence", "999999")
		require.Equal(t, http.StatusOK, r.status)
		require.Equal(t, before, s.stats(t).FencedWithoutKey, "the keyless route removed it")
		key := newKey(t)
		require.Equal(t, http.StatusOK, s.do(t, "POST", "/charge", body, "Idempotency-Key", key, "Idempotency-Fence", "999999").status)
		require.EqualValues(t, 1, s.stats(t).Fences[key], "idemproxy's fence, not the client's")
	})

	t.Run("an Envoy with the wrong token gets nothing from idemproxy", func(t *testing.T) {
		bad := &stack{backendAddr: s.backendAddr, backend: s.backend}
		grpcAddr := s.idemproxy.LogAddr(t, "grpc listening")
		bad.startEnvoy(t, testenv.EnvoyBin(t), testenv.EnvoyConfig{ExtProc: grpcAddr, Backend: s.backendAddr,
			// The ext_proc stream's token (the replay route's line ends in " }").
			Edits: [][2]string{{"Bearer " + e2eToken + "\"\n", "Bearer not-the-token-0123456789\"\n"}}}, 4)
		key := newKey(t)
		r := bad.do(t, "POST", "/charge", body, "Idempotency-Key", key)
		require.Equal(t, http.StatusServiceUnavailable, r.status, "%s", r.body)
		require.Equal(t, problem+"proxy-unavailable", r.problemType())
		require.Zero(t, s.executions(t, key))
		require.Positive(t, s.metric(t, "idemproxy_grpc_unauthenticated_total"))
	})
}

// jwtIssuer signs test tokens that a local JWKS in Envoy's jwt_authn
// provider verifies.
type jwtIssuer struct {
	key *ecdsa.PrivateKey
}

func newJWTIssuer(t *testing.T) *jwtIssuer {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	return &jwtIssuer{key: k}
}

func b64(b []byte) string { return base64.RawURLEncoding.EncodeToString(b) }

// jwks is the issuer's public key as a JSON Web Key Set.
func (j *jwtIssuer) jwks(t *testing.T) string {
	t.Helper()
	pad := func(b []byte) []byte { return append(make([]byte, 32-len(b)), b...) }
	set, err := json.Marshal(map[string]any{"keys": []any{map[string]string{
		"kty": "EC", "crv": "P-256", "alg": "ES256", "kid": "test", "use": "sig",
		"x": b64(pad(j.key.X.Bytes())), "y": b64(pad(j.key.Y.Bytes())),
	}}})
	require.NoError(t, err)
	return string(set)
}

// sign makes an ES256 JWT with claims, valid for an hour.
func (j *jwtIssuer) sign(t *testing.T, claims map[string]any) string {
	t.Helper()
	claims["iss"] = "https://issuer.test"
	claims["exp"] = time.Now().Add(time.Hour).Unix()
	claims["iat"] = time.Now().Unix()
	hdr, err := json.Marshal(map[string]string{"alg": "ES256", "typ": "JWT", "kid": "test"})
	require.NoError(t, err)
	pl, err := json.Marshal(claims)
	require.NoError(t, err)
	signing := b64(hdr) + "." + b64(pl)
	sum := sha256.Sum256([]byte(signing))
	r, s, err := ecdsa.Sign(rand.Reader, j.key, sum[:])
	require.NoError(t, err)
	sig := append(r.FillBytes(make([]byte, 32)), s.FillBytes(make([]byte, 32))...)
	return signing + "." + b64(sig)
}

// jwtFilter is the envoy.yaml edit that puts Envoy's jwt_authn filter,
// verifying the issuer's tokens and writing their payload to metadata,
// before the ext_proc filter.
func (j *jwtIssuer) jwtFilter(t *testing.T) [2]string {
	quoted, err := json.Marshal(j.jwks(t))
	require.NoError(t, err)
	return [2]string{testenv.ExtProcFilterStart, fmt.Sprintf(`          - name: envoy.filters.http.jwt_authn
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication
              providers:
                test:
                  issuer: https://issuer.test
                  local_jwks: { inline_string: %s }
                  payload_in_metadata: jwt_payload
                  forward: true
              rules:
              - match: { prefix: / }
                requires: { provider_name: test }
`, quoted) + testenv.ExtProcFilterStart}
}

// TestEndToEnd_JWTScope: with --scope-jwt-claim sub behind Envoy's real
// jwt_authn filter, a refreshed token of the same subject keeps its
// records (its retry is a replay, not a second charge), two subjects never
// share one, and a verified token without the claim is refused.
func TestEndToEnd_JWTScope(t *testing.T) {
	t.Parallel()
	iss := newJWTIssuer(t)
	s := startStackWith(t, stackConfig{
		idemproxyArgs: []string{"--scope-jwt-claim", "sub"},
		envoyEdits:    [][2]string{iss.jwtFilter(t)},
	})
	const body = `{"amount":5000}`
	bearer := func(claims map[string]any) string { return "Bearer " + iss.sign(t, claims) }

	t.Run("a refreshed token of the same subject shares the record", func(t *testing.T) {
		key := newKey(t)
		first := s.do(t, "POST", "/charge", body, "Idempotency-Key", key, "Authorization", bearer(map[string]any{"sub": "user-7", "n": 1}))
		require.Equal(t, http.StatusOK, first.status, "%s", first.body)
		refreshed := s.do(t, "POST", "/charge", body, "Idempotency-Key", key, "Authorization", bearer(map[string]any{"sub": "user-7", "n": 2}))
		require.True(t, refreshed.replayed(), "%d %s", refreshed.status, refreshed.body)
		require.Equal(t, chargeID(t, first.body), chargeID(t, refreshed.body))
		require.Equal(t, 1, s.executions(t, key))
	})
	t.Run("two subjects never share a record", func(t *testing.T) {
		key := newKey(t)
		a := s.do(t, "POST", "/charge", body, "Idempotency-Key", key, "Authorization", bearer(map[string]any{"sub": "user-1"}))
		b := s.do(t, "POST", "/charge", body, "Idempotency-Key", key, "Authorization", bearer(map[string]any{"sub": "user-2"}))
		require.False(t, b.replayed())
		require.NotEqual(t, chargeID(t, a.body), chargeID(t, b.body))
		require.Equal(t, 2, s.executions(t, key))
	})
	t.Run("a verified token without the claim is refused", func(t *testing.T) {
		key := newKey(t)
		r := s.do(t, "POST", "/charge", body, "Idempotency-Key", key, "Authorization", bearer(map[string]any{"scope": "pay"}))
		require.Equal(t, http.StatusUnauthorized, r.status, "%s", r.body)
		require.Equal(t, problem+"identity-required", r.problemType())
		require.Zero(t, s.executions(t, key))
	})
	t.Run("no token at all is Envoy's own 401, before idemproxy", func(t *testing.T) {
		key := newKey(t)
		r := s.do(t, "POST", "/charge", body, "Idempotency-Key", key)
		require.Equal(t, http.StatusUnauthorized, r.status)
		require.Empty(t, r.problemType())
		require.Zero(t, s.executions(t, key))
	})
}
