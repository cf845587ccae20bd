package envoy

import (
	"io"
	"net/http"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/idemproxy/idemproxy/internal/testenv"
)

// h2Backend is the envoy.yaml edit that makes the backend cluster speak
// HTTP/2 (the backend serves h2c), so its trailers reach Envoy.
var h2Backend = [2]string{"  - name: backend\n    type: STATIC\n    connect_timeout: 1s\n",
	"  - name: backend\n    type: STATIC\n    connect_timeout: 1s\n" +
		"    typed_extension_protocol_options:\n      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:\n" +
		"        \"@type\": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions\n" +
		"        explicit_http_config:\n          http2_protocol_options: {}\n"}

// startReplayStack is startStack with idemproxy's replay endpoint on and
// Envoy's idemproxy-replay cluster pointing at it; it returns the
// endpoint's address too.
func startReplayStack(t *testing.T, edits ...[2]string) (*stack, string) {
	t.Helper()
	return startReplayStackArgs(t, []string{"--replay-addr", "127.0.0.1:0"}, edits...)
}

// startReplayStackArgs is startReplayStack with idemproxy's flags, which
// must turn the replay endpoint on.
func startReplayStackArgs(t *testing.T, args []string, edits ...[2]string) (*stack, string) {
	t.Helper()
	envoyBin := testenv.EnvoyBin(t)
	s := startSharedWith(t)
	var grpcAddr string
	s.idemproxy, grpcAddr, s.adminURL = runIdemproxy(t, "idemproxy", s.redis.URL(), "127.0.0.1:0", "debug", args...)
	replayAddr := s.idemproxy.LogAddr(t, "replay endpoint listening")
	s.startEnvoy(t, envoyBin, testenv.EnvoyConfig{ExtProc: grpcAddr, Backend: s.backendAddr, Replay: replayAddr, Edits: edits}, 16)
	return s, replayAddr
}

// h2cClient speaks HTTP/2 without TLS (prior knowledge), as gRPC does.
func h2cClient() *http.Client {
	tr := &http.Transport{Protocols: new(http.Protocols)}
	tr.Protocols.SetUnencryptedHTTP2(true)
	return &http.Client{Timeout: 10 * time.Second, Transport: tr}
}

// sendH2 sends a keyed POST with HTTP/2 and reads the whole response.
func sendH2(t *testing.T, c *http.Client, url, body string, headers ...string) (*http.Response, string) {
	t.Helper()
	return sendWith(t, c, http.MethodPost, url, body, headers...)
}

// sendWith sends one request with c, headers as name/value pairs, and reads
// the whole response.
func sendWith(t *testing.T, c *http.Client, method, url, body string, headers ...string) (*http.Response, string) {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), method, url, strings.NewReader(body))
	require.NoError(t, err)
	for i := 0; i+1 < len(headers); i += 2 {
		req.Header.Add(headers[i], headers[i+1])
	}
	resp, err := c.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	return resp, string(b)
}

// comparable drops the headers that differ between any two responses
// (date, Envoy's timing) and the replay marker.
func comparable(h http.Header) http.Header {
	h = h.Clone()
	for _, k := range []string{"Date", "X-Envoy-Upstream-Service-Time", "Idempotent-Replayed"} {
		h.Del(k)
	}
	return h
}

// TestEndToEnd_ReplayEndpoint: a response that ended with trailers (an
// HTTP/2 upstream) is stored with them, and its retry is served by
// idemproxy's replay endpoint through the shipped envoy.yaml's replay
// route: the same status, headers, body and trailers, the backend run
// once; the token it used is gone; a client's own x-idemproxy-replay never
// reaches the endpoint; the endpoint refuses callers without the bearer
// token.
func TestEndToEnd_ReplayEndpoint(t *testing.T) {
	t.Parallel()
	s, replayAddr := startReplayStack(t, h2Backend)
	c := h2cClient()
	t.Run("a response with trailers replays byte for byte, once", func(t *testing.T) {
		key := newKey(t)
		first, firstBody := sendH2(t, c, s.url+"/trailers", `{"amount":5000}`, "Idempotency-Key", key)
		require.Equal(t, http.StatusOK, first.StatusCode, firstBody)
		require.Equal(t, "sha256:demo", first.Trailer.Get("X-Charge-Checksum"))
		again, againBody := sendH2(t, c, s.url+"/trailers", `{"amount":5000}`, "Idempotency-Key", key)
		require.Equal(t, 1, s.executions(t, key))
		require.Equal(t, first.StatusCode, again.StatusCode, againBody)
		require.Equal(t, firstBody, againBody)
		require.Equal(t, "true", again.Header.Get("Idempotent-Replayed"))
		require.Equal(t, comparable(first.Header), comparable(again.Header))
		require.Equal(t, first.Trailer, again.Trailer)
		require.EqualValues(t, 1, s.metric(t, `idemproxy_replay_requests_total{result="served"}`))
		require.EqualValues(t, 1, s.metric(t, `idemproxy_requests_total{outcome="replayed"}`))
		keys, err := s.redis.Client(t).Keys(t.Context(), "*:replay:*").Result()
		require.NoError(t, err)
		require.Empty(t, keys, "the token was used once and is gone")
		t.Logf("first %d %q trailer %v; retry %d %q trailer %v", first.StatusCode, firstBody, first.Trailer, again.StatusCode, againBody, again.Trailer)
		var lines []accessLine
		testenv.WaitFor(t, 30*time.Second, "two access-log lines", func() bool {
			lines = s.accessLog("/trailers")
			return len(lines) >= 2
		})
		require.Equal(t, "replayed", lines[1].Outcome, "the access log says replayed")
		require.Equal(t, "via_upstream", lines[1].Details, "served by the replay endpoint, an upstream")
		for _, l := range s.envoy.Lines() {
			require.NotContains(t, l, key, "the key is never logged")
		}
		token := regexp.MustCompile(`[0-9a-f]{32}\.[0-9a-f]{32}`)
		require.False(t, token.MatchString(s.idemproxy.Output()), "no replay token in idemproxy's log")
		require.False(t, token.MatchString(strings.Join(s.envoy.Lines(), "\n")), "nor in Envoy's")
	})
	t.Run("to an HTTP/1.1 client the replay is the response it saw", func(t *testing.T) {
		key := newKey(t)
		send := func() (*http.Response, string) {
			req, err := http.NewRequestWithContext(t.Context(), http.MethodPost, s.url+"/trailers", strings.NewReader(`{"amount":7}`))
			require.NoError(t, err)
			req.Header.Set("Idempotency-Key", key)
			resp, err := s.client.Do(req)
			require.NoError(t, err)
			defer resp.Body.Close()
			b, err := io.ReadAll(resp.Body)
			require.NoError(t, err)
			return resp, string(b)
		}
		first, firstBody := send()
		again, againBody := send()
		require.Equal(t, 1, s.executions(t, key))
		require.Equal(t, 1, again.ProtoMajor)
		require.Equal(t, first.StatusCode, again.StatusCode, againBody)
		require.Equal(t, firstBody, againBody)
		require.Equal(t, "true", again.Header.Get("Idempotent-Replayed"))
		require.Equal(t, comparable(first.Header), comparable(again.Header))
		require.Equal(t, first.Trailer, again.Trailer, "Envoy drops trailers towards HTTP/1.1 both times")
	})
	t.Run("a client's own replay header is removed before the route is chosen", func(t *testing.T) {
		before := s.metric(t, `idemproxy_replay_requests_total{result="no_replay"}`) + s.metric(t, `idemproxy_replay_requests_total{result="served"}`)
		for _, keyed := range []bool{false, true} {
			h := []string{"X-Idemproxy-Replay", "0123456789abcdef0123456789abcdef.0123456789abcdef0123456789abcdef"}
			key := newKey(t)
			if keyed {
				h = append(h, "Idempotency-Key", key)
			}
			resp, body := sendH2(t, c, s.url+"/trailers", `{"amount":1}`, h...)
			require.Equal(t, http.StatusOK, resp.StatusCode, body)
			require.Contains(t, body, `"request_body_bytes":12`, "the backend answered")
			if keyed {
				require.Equal(t, 1, s.executions(t, key))
			}
		}
		after := s.metric(t, `idemproxy_replay_requests_total{result="no_replay"}`) + s.metric(t, `idemproxy_replay_requests_total{result="served"}`)
		require.Equal(t, before, after, "nothing reached the replay endpoint")
	})
	t.Run("the replay endpoint refuses callers without the bearer token", func(t *testing.T) {
		resp, body := sendH2(t, c, "http://"+replayAddr+"/trailers", "", "X-Idemproxy-Replay", "0123456789abcdef0123456789abcdef.0123456789abcdef0123456789abcdef")
		require.Equal(t, http.StatusUnauthorized, resp.StatusCode, body)
		resp, body = sendH2(t, c, "http://"+replayAddr+"/trailers", "", "X-Idemproxy-Replay", "0123456789abcdef0123456789abcdef.0123456789abcdef0123456789abcdef",
			"Authorization", "Bearer "+e2eToken)
		require.Equal(t, http.StatusServiceUnavailable, resp.StatusCode, "a made-up token replays nothing: %s", body)
		require.EqualValues(t, 1, s.metric(t, `idemproxy_replay_requests_total{result="unauthenticated"}`))
	})
}

// TestEndToEnd_ReplayHeaderStripped is the fault test of the early header
// mutation: with it removed from envoy.yaml, a client's own
// x-idemproxy-replay picks the replay route, so a keyless request bypasses
// the backend and reaches the replay endpoint (which, since the made-up
// token replays nothing, answers 503); as shipped, the same request reaches
// the backend.
func TestEndToEnd_ReplayHeaderStripped(t *testing.T) {
	t.Parallel()
	const strip = "              - remove: x-idemproxy-replay\n"
	forged := []string{"X-Idemproxy-Replay", "0123456789abcdef0123456789abcdef.0123456789abcdef0123456789abcdef"}
	for name, edits := range map[string][][2]string{"as shipped": nil, "without the strip": {{strip, ""}}} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			s, _ := startReplayStack(t, edits...)
			resp, body := sendH2(t, h2cClient(), s.url+"/trailers", `{"amount":1}`, forged...)
			reached := s.metric(t, `idemproxy_replay_requests_total{result="no_replay"}`)
			t.Logf("%s: status %d, replay endpoint reached %v times", name, resp.StatusCode, reached)
			if edits == nil {
				require.Equal(t, http.StatusOK, resp.StatusCode, body)
				require.Zero(t, reached)
			} else {
				require.Equal(t, http.StatusServiceUnavailable, resp.StatusCode, body)
				require.EqualValues(t, 1, reached, "the forged header chose the replay route")
			}
		})
	}
}

// TestEndToEnd_ReplayRouteMissing: idemproxy with its replay endpoint on
// behind an Envoy without the replay route (an older or hand-written
// config). The re-routed retry then goes to the backend, but on
// processor.ReplayPath and without its body, so it runs nothing there; the
// client gets 500 misconfigured, not the backend's answer, and idemproxy
// logs why. Before re-routed replays carried that path and no body, the
// same retry ran the request a second time (executions 2).
func TestEndToEnd_ReplayRouteMissing(t *testing.T) {
	t.Parallel()
	noRoute := [2]string{"                  - name: x-idemproxy-replay\n", "                  - name: x-no-such-header\n"}
	s, _ := startReplayStack(t, h2Backend, noRoute)
	c := h2cClient()
	key := newKey(t)
	first, firstBody := sendH2(t, c, s.url+"/trailers", `{"amount":5000}`, "Idempotency-Key", key)
	require.Equal(t, http.StatusOK, first.StatusCode, firstBody)
	again, againBody := sendH2(t, c, s.url+"/trailers", `{"amount":5000}`, "Idempotency-Key", key)
	require.Equal(t, 1, s.executions(t, key), "the retry ran nothing at the backend")
	require.Equal(t, http.StatusInternalServerError, again.StatusCode, againBody)
	require.Equal(t, "urn:idemproxy:problem:misconfigured", again.Header.Get("Idempotency-Problem"), againBody)
	require.Empty(t, again.Header.Get("Idempotent-Replayed"))
	require.Zero(t, s.metric(t, `idemproxy_replay_requests_total{result="served"}`), "the endpoint was never reached")
	require.EqualValues(t, 1, s.metric(t, `idemproxy_responses_total{result="replay_misrouted"}`))
	testenv.WaitFor(t, 10*time.Second, "idemproxy's error line", func() bool {
		return strings.Contains(s.idemproxy.Output(), "a replay sent to the replay endpoint was answered by something else")
	})
	var lines []accessLine
	testenv.WaitFor(t, 30*time.Second, "the access-log lines", func() bool {
		lines = s.accessLog("/trailers") // the request's own path, not processor.ReplayPath
		return len(lines) == 2
	})
	require.Equal(t, "idemproxy_misconfigured", lines[1].Details)
	t.Logf("retry: %d %s; access log %+v", again.StatusCode, againBody, lines[1])
}
