package envoy

import (
	"encoding/json"
	"net/http"
	"net/url"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

const adminToken = "e2e-admin-token-0123456789"

// adminKey calls idemproxy's authenticated key endpoint.
func (s *stack) adminKey(t *testing.T, method, authority, key, token string) (int, map[string]any) {
	t.Helper()
	q := url.Values{"authority": {authority}, "key": {key}}
	return s.admin(t, method, "/admin/v1/keys?"+q.Encode(), token)
}

// admin calls one of idemproxy's admin endpoints with token ("" none) and
// returns the status and the decoded JSON body.
func (s *stack) admin(t *testing.T, method, path, token string) (int, map[string]any) {
	t.Helper()
	req, err := http.NewRequest(method, s.adminURL+path, nil)
	require.NoError(t, err)
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	var body map[string]any
	require.NoError(t, json.NewDecoder(resp.Body).Decode(&body))
	return resp.StatusCode, body
}

// adminJSON calls the admin key endpoint with query and decodes its 200
// answer into v.
func (s *stack) adminJSON(t *testing.T, method, query string, v any) {
	t.Helper()
	req, err := http.NewRequest(method, s.adminURL+"/admin/v1/keys?"+query, nil)
	require.NoError(t, err)
	req.Header.Set("Authorization", "Bearer "+adminToken)
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	require.Equal(t, http.StatusOK, resp.StatusCode)
	require.NoError(t, json.NewDecoder(resp.Body).Decode(v))
}

// TestEndToEnd_OnUnknownHold: with --on-unknown=hold, a request whose
// outcome is unknown (Envoy's route timeout fired after the backend started)
// is never run again, not even after the lock TTL, until an operator
// inspects and clears the key through the admin endpoint.
func TestEndToEnd_OnUnknownHold(t *testing.T) {
	t.Parallel()
	s := startStackWith(t, stackConfig{
		idemproxyArgs: []string{"--lock-ttl", "1s", "--heartbeat", "300ms", "--on-unknown", "hold", "--admin-token", adminToken},
		envoyEdits:    [][2]string{keyedRouteTimeout("1s")},
	})
	key := newKey(t)
	r := s.do(t, "POST", "/slow?delay=1500ms", "", "Idempotency-Key", key)
	require.Equal(t, http.StatusGatewayTimeout, r.status)

	// Well past the 1 s lock TTL, the key is still refused.
	deadline := time.Now().Add(2500 * time.Millisecond)
	for time.Now().Before(deadline) {
		again := s.do(t, "POST", "/slow?delay=1500ms", "", "Idempotency-Key", key)
		require.Equal(t, http.StatusConflict, again.status, "%s", again.body)
		require.Equal(t, problem+"outcome-unknown", again.problemType())
		time.Sleep(250 * time.Millisecond)
	}
	require.Equal(t, 1, s.executions(t, key), "never a second execution")

	host := s.url[len("http://"):]
	code, _ := s.adminKey(t, "GET", host, key, "")
	require.Equal(t, http.StatusUnauthorized, code, "the admin endpoint needs the token")
	code, _ = s.adminKey(t, "GET", host, key, "wrong-token-wrong-token")
	require.Equal(t, http.StatusUnauthorized, code)

	code, info := s.adminKey(t, "GET", host, key, adminToken)
	require.Equal(t, http.StatusOK, code)
	require.Equal(t, "outcome_unknown", info["state"])
	require.NotContains(t, info, "body", "the admin view never shows a body")

	code, res := s.adminKey(t, "DELETE", host, key, adminToken)
	require.Equal(t, http.StatusOK, code)
	require.Equal(t, true, res["deleted"])

	ok := s.do(t, "POST", "/slow?delay=10ms", "", "Idempotency-Key", key)
	require.Equal(t, http.StatusOK, ok.status, "a cleared key runs again: %s", ok.body)
	require.Equal(t, 2, s.executions(t, key))
}

// TestEndToEnd_Fence: every grant's fencing token reaches the backend, and
// grows per key.
func TestEndToEnd_Fence(t *testing.T) {
	t.Parallel()
	s := startStack(t)
	key := newKey(t)
	for i := 1; i <= 2; i++ {
		// A 429 is not stored, so each try is a new grant with a new fence.
		require.Equal(t, http.StatusTooManyRequests, s.do(t, "POST", "/status?code=429", "", "Idempotency-Key", key).status)
	}
	// A client's own fence never reaches the backend: idemproxy sets it.
	r := s.do(t, "POST", "/charge", "", "Idempotency-Key", key, "Idempotency-Fence", "999999")
	require.Equal(t, http.StatusOK, r.status)
	st := s.stats(t)
	require.Equal(t, 3, st.Keys[key])
	require.EqualValues(t, 3, st.Fences[key], "three grants, fences 1, 2, 3; the client's 999999 was replaced")
	other := newKey(t)
	require.Equal(t, http.StatusOK, s.do(t, "POST", "/charge", "", "Idempotency-Key", other).status)
	require.EqualValues(t, 1, s.stats(t).Fences[other], "fences are per key")
}
