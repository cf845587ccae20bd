package envoy

import (
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

// TestEndToEnd_ProxyLocalReplies: Envoy's own replies when it cannot get an
// answer from idemproxy are problem+json with a stable type and Retry-After
// (envoy.yaml's local_reply_config), while idemproxy's answers and the
// upstream's pass unchanged.
func TestEndToEnd_ProxyLocalReplies(t *testing.T) {
	t.Parallel()
	requireProxyProblem := func(t *testing.T, r reply, status int, slug string) {
		t.Helper()
		require.Equal(t, status, r.status, "%s", r.body)
		require.Equal(t, "application/problem+json", r.header.Get("Content-Type"))
		require.Equal(t, problem+slug, r.problemType())
		require.Equal(t, "1", r.header.Get("Retry-After"))
		var p struct {
			Status int
			Title  string
			Detail string
		}
		require.NoError(t, json.Unmarshal(r.body, &p))
		require.Equal(t, status, p.Status, "the status in the body is a number and matches")
		require.NotEmpty(t, p.Title)
		require.Contains(t, p.Detail, "idempotency key")
	}

	t.Run("idemproxy unreachable: 503 proxy-unavailable, nothing runs", func(t *testing.T) {
		t.Parallel()
		s := startStack(t)
		s.idemproxy.Kill()
		key := newKey(t)
		r := s.do(t, "POST", "/charge", "", "Idempotency-Key", key)
		requireProxyProblem(t, r, http.StatusServiceUnavailable, "proxy-unavailable")
		require.Zero(t, s.executions(t, key))
		plain := s.do(t, "POST", "/charge", "")
		require.Equal(t, http.StatusOK, plain.status, "keyless requests never involve idemproxy")
	})

	t.Run("idemproxy silent past the message timeout: 504 proxy-timeout", func(t *testing.T) {
		t.Parallel()
		s := startStackWith(t, stackConfig{envoyEdits: [][2]string{{"message_timeout: 2s", "message_timeout: 0.5s"}}})
		resume := pauseProcess(t, s.idemproxy)
		key := newKey(t)
		r := s.do(t, "POST", "/charge", "", "Idempotency-Key", key)
		ranWhileFrozen := s.executions(t, key)
		resume()
		requireProxyProblem(t, r, http.StatusGatewayTimeout, "proxy-timeout")
		require.Zero(t, ranWhileFrozen)
		// The frozen idemproxy answers the stale message once it resumes;
		// Envoy has given up on that stream, so nothing goes upstream.
		time.Sleep(time.Second) // time for a late answer to do harm, if it could
		require.Zero(t, s.executions(t, key), "a late answer to a timed-out message never sends the request")
	})

	t.Run("more keyed requests in flight than the circuit breaker admits: 503 proxy-overloaded", func(t *testing.T) {
		t.Parallel()
		s := startStackWith(t, stackConfig{envoyEdits: [][2]string{{"max_requests: 65536", "max_requests: 2"}}})
		const n = 6
		keys := make([]string, n)
		chans := make([]<-chan result, n)
		for i := range n {
			keys[i] = newKey(t)
			chans[i] = s.goDo("POST", "/slow?delay=1s", "", "Idempotency-Key", keys[i])
		}
		var ok, overloaded int
		for i := range n {
			r := await(t, chans[i], 20*time.Second, "a request of the overload")
			switch r.status {
			case http.StatusOK:
				ok++
			default:
				requireProxyProblem(t, r, http.StatusServiceUnavailable, "proxy-overloaded")
				require.Zero(t, s.executions(t, keys[i]), "an overloaded request never ran")
				overloaded++
			}
		}
		require.Positive(t, overloaded)
		require.Positive(t, ok)
		t.Logf("circuit breaker of 2: %d ran, %d got 503 proxy-overloaded", ok, overloaded)
	})

	t.Run("idemproxy's own answers and the upstream's are not rewritten", func(t *testing.T) {
		t.Parallel()
		s := startStack(t)
		key := newKey(t)
		ch := s.goDo("POST", "/slow?delay=1s", "", "Idempotency-Key", key)
		testenv.WaitFor(t, 10*time.Second, "the slow request at the backend", func() bool { return s.executions(t, key) == 1 })
		dup := s.do(t, "POST", "/slow?delay=1s", "", "Idempotency-Key", key)
		require.Equal(t, problem+"in-progress", dup.problemType())
		require.Equal(t, http.StatusOK, await(t, ch, 20*time.Second, "the slow request").status)
		fail := s.do(t, "POST", "/fail", "", "Idempotency-Key", newKey(t))
		require.Equal(t, http.StatusInternalServerError, fail.status)
		require.Empty(t, fail.problemType(), "the upstream's 500 is its own")
	})
}

// TestEndToEnd_ReplayFidelity: a replay carries the stored Content-Type,
// or none, exactly as the first response did, although Envoy rewrites it in
// immediate responses (the Lua filter in envoy.yaml undoes that).
func TestEndToEnd_ReplayFidelity(t *testing.T) {
	t.Parallel()
	s := startStack(t)
	for _, tc := range []struct {
		name, method, path string
		wantType           string // "" : no Content-Type at all
		wantBody           string
	}{
		{"an empty 201 keeps its Content-Type", "POST", "/status?code=201&body=&type=application/json", "application/json", ""},
		{"a body without a Content-Type gains none", "POST", "/status?code=200&body=hello", "", "hello"},
		{"a body with its Content-Type keeps it", "POST", "/status?code=201&body=%7B%7D&type=application/vnd.api%2Bjson", "application/vnd.api+json", "{}"},
		{"a HEAD keeps its Content-Type", "HEAD", "/status?code=200&body=&type=text/csv", "text/csv", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			key := newKey(t)
			first := s.do(t, tc.method, tc.path, "", "Idempotency-Key", key)
			again := s.do(t, tc.method, tc.path, "", "Idempotency-Key", key)
			require.True(t, again.replayed(), "%d %s", again.status, again.body)
			require.Equal(t, 1, s.executions(t, key))
			for name, r := range map[string]reply{"first": first, "replay": again} {
				require.Equal(t, tc.wantType, r.header.Get("Content-Type"), name)
				_, has := r.header["Content-Type"]
				require.Equal(t, tc.wantType != "", has, "%s: Content-Type present", name)
				require.Equal(t, tc.wantBody, string(r.body), name)
				require.Equal(t, "/orders/1", r.header.Get("Location"), name)
				require.Empty(t, r.header.Get("X-Idemproxy-Content-Type"), "%s: the stash never reaches the client", name)
			}
			require.Equal(t, first.status, again.status)
		})
	}
}

// TestEndToEnd_Trailers pins what Envoy 1.40 does with HTTP trailers on
// keyed requests, for HTTP/1.1 and HTTP/2 clients and upstreams, and what
// idemproxy makes of it: a request with trailers runs once and replays (the
// fingerprint covers the body, not the trailers); a response that ends
// with trailers (only an HTTP/2 upstream sends them through) reaches the
// client whole (trailers only to an HTTP/2 client: Envoy drops them towards
// HTTP/1.1), and is completed without a replayable body: a retry gets 409
// response-not-stored, never a second run. An HTTP/1.1 upstream's trailers
// are dropped by Envoy, so that response replays as the client saw it.
func TestEndToEnd_Trailers(t *testing.T) {
	t.Parallel()
	h2c := new(http.Protocols)
	h2c.SetUnencryptedHTTP2(true)
	clients := map[string]*http.Client{
		"HTTP/1.1": {Timeout: 10 * time.Second},
		"HTTP/2":   {Timeout: 10 * time.Second, Transport: &http.Transport{Protocols: h2c}},
	}
	upstreams := map[string]stackConfig{
		"HTTP/1.1": {},
		"HTTP/2": {envoyEdits: [][2]string{{"  - name: backend\n    type: STATIC\n    connect_timeout: 1s\n",
			"  - name: backend\n    type: STATIC\n    connect_timeout: 1s\n" +
				"    typed_extension_protocol_options:\n      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:\n" +
				"        \"@type\": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions\n" +
				"        explicit_http_config:\n          http2_protocol_options: {}\n"}}},
	}
	for up, cfg := range upstreams {
		t.Run("upstream "+up, func(t *testing.T) {
			t.Parallel()
			s := startStackWith(t, cfg)
			for cl, c := range clients {
				t.Run("client "+cl, func(t *testing.T) {
					key := newKey(t)
					send := func() (*http.Response, []byte) {
						req, err := http.NewRequest("POST", s.url+"/trailers", io.NopCloser(strings.NewReader(`{"amount":5000}`)))
						require.NoError(t, err)
						req.ContentLength = -1 // chunked on HTTP/1.1, so trailers can follow
						req.Trailer = http.Header{"X-Request-Signature": {"abc"}}
						req.Header.Set("Idempotency-Key", key)
						resp, err := c.Do(req)
						require.NoError(t, err)
						defer resp.Body.Close()
						b, err := io.ReadAll(resp.Body)
						require.NoError(t, err)
						return resp, b
					}
					first, firstBody := send()
					require.Equal(t, http.StatusOK, first.StatusCode, "%s", firstBody)
					require.Contains(t, string(firstBody), `"request_body_bytes":15`)
					again, againBody := send()
					require.Equal(t, 1, s.executions(t, key), "a request with trailers runs once")
					gotTrailer := first.Trailer.Get("X-Charge-Checksum")
					if up == "HTTP/2" {
						if cl == "HTTP/2" {
							require.Equal(t, "sha256:demo", gotTrailer, "the first response reaches the client with its trailer")
						} else {
							require.Empty(t, gotTrailer, "Envoy drops trailers towards an HTTP/1.1 client")
						}
						require.Equal(t, http.StatusConflict, again.StatusCode, "%s", againBody)
						require.Contains(t, string(againBody), "response-not-stored")
						require.Contains(t, string(againBody), "trailers")
					} else {
						require.Empty(t, gotTrailer, "Envoy drops an HTTP/1.1 upstream's trailers")
						require.Equal(t, "true", again.Header.Get("Idempotent-Replayed"))
						require.Equal(t, string(firstBody), string(againBody))
					}
					t.Logf("%s client, %s upstream: first %d (trailer %q), retry %d %s",
						cl, up, first.StatusCode, gotTrailer, again.StatusCode, strings.TrimSpace(fmt.Sprint(again.Header.Get("Idempotent-Replayed"))))
				})
			}
		})
	}
}
