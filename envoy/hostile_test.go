package envoy

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// TestEndToEnd_HostileInput sends what a careless or hostile client can:
// malformed keys, bodies at Envoy's buffer limit, too many or too large
// headers. It pins who refuses what (Envoy 1.40 or idemproxy), that none of
// it reaches the backend, and that idemproxy survives. The basic malformed
// keys are in TestEndToEnd's "invalid keys" subtest.
func TestEndToEnd_HostileInput(t *testing.T) {
	t.Parallel()
	up := startManyHeadersUpstream(t)
	s := startStackWith(t, stackConfig{
		// A short lock TTL, for the key that Envoy's 500 leaves locked.
		idemproxyArgs: []string{"--lock-ttl", "2s", "--heartbeat", "500ms"},
		envoyEdits:    up.envoyEdits,
	})
	acquired := func() float64 { return s.metric(t, `idemproxy_requests_total{outcome="acquired"}`) }
	protocolErrors := func() int { return s.envoyStat(t, "http.ingress.downstream_cx_protocol_error") }

	t.Run("malformed keys that Envoy passes on get 400 invalid-key from idemproxy", func(t *testing.T) {
		// Raw header lines: Go's client would trim blanks off the values.
		cases := map[string]string{
			"10 KB long":                           "Idempotency-Key: " + strings.Repeat("k", 10<<10),
			"59 KB long, under Envoy's 60 KiB cap": "Idempotency-Key: " + strings.Repeat("k", 59<<10),
			"a tab inside":                         "Idempotency-Key: a\tb",
			"empty":                                "Idempotency-Key:",
			"only blanks":                          "Idempotency-Key: \t  \t",
			"a quote inside a quoted key":          `Idempotency-Key: "a"b"`,
			"an escape other than quote or backslash": `Idempotency-Key: "a\x"`,
			"a lone quote":                         `Idempotency-Key: "`,
			"obs-text bytes":                       "Idempotency-Key: k\x80\xff",
			"a comma list":                         "Idempotency-Key: a1, b2",
			"quoted and bare forms of two keys":    "Idempotency-Key: \"k1\"\r\nX-Idempotency-Key: k2",
			"one key header valid, its repeat not": "Idempotency-Key: k1\r\nIdempotency-Key: k 1",
		}
		total, acq := s.stats(t).Total, acquired()
		invalid := s.metric(t, `idemproxy_requests_total{outcome="invalid_key"}`)
		for name, lines := range cases {
			r := rawExchange(t, s, rawRequest(s, "POST", lines+"\r\n", ""))
			require.Equal(t, http.StatusBadRequest, r.status, "%s: %s", name, r.body)
			require.Equal(t, problem+"invalid-key", r.problemType(), name)
		}
		require.Equal(t, total, s.stats(t).Total, "no malformed key reached the backend")
		require.Equal(t, acq, acquired(), "no malformed key took a lock")
		require.Equal(t, invalid+float64(len(cases)), s.metric(t, `idemproxy_requests_total{outcome="invalid_key"}`))
	})

	t.Run("control characters in a key make Envoy drop the connection without an answer", func(t *testing.T) {
		// Envoy's HTTP/1 parser refuses NUL, DEL and other controls (Go's
		// client will not even send them). Its 400 goes through ext_proc's
		// response path, and the connection is closed before that ends, so
		// the client sees no response at all.
		total, acq, errs := s.stats(t).Total, acquired(), protocolErrors()
		for _, c := range []string{"\x00", "\x7f", "\x01", "\x1b"} {
			r := rawExchange(t, s, rawRequest(s, "POST", "Idempotency-Key: a"+c+"b\r\n", ""))
			require.Zero(t, r.status, "%q: got %d %s", c, r.status, r.body)
		}
		require.Equal(t, errs+4, protocolErrors())
		require.Equal(t, total, s.stats(t).Total)
		require.Equal(t, acq, acquired())
	})

	t.Run("Envoy deletes a bare CR from a key and ends the header at a bare LF", func(t *testing.T) {
		crKey, lfKey := newKey(t), newKey(t)
		r := rawExchange(t, s, rawRequest(s, "POST", "Idempotency-Key: "+crKey[:4]+"\r"+crKey[4:]+"\r\n", ""))
		require.Equal(t, http.StatusOK, r.status)
		require.True(t, s.do(t, "POST", "/charge", "", "Idempotency-Key", crKey).replayed(), "idemproxy saw the key without the CR")
		r = rawExchange(t, s, rawRequest(s, "POST", "Idempotency-Key: "+lfKey+"\nX-After: 1\r\n", ""))
		require.Equal(t, http.StatusOK, r.status)
		require.Equal(t, 1, s.executions(t, crKey))
		require.Equal(t, 1, s.executions(t, lfKey))
	})

	t.Run("keys at the edges of valid run once and replay", func(t *testing.T) {
		long, twice, forms, quote := strings.Repeat("k", 255), newKey(t), newKey(t), newKey(t)+`"`
		blank := newKey(t)
		first := rawExchange(t, s, rawRequest(s, "POST", "Idempotency-Key: \t "+blank+" \t\r\n", ""))
		require.Equal(t, http.StatusOK, first.status, "blanks around a key are not part of it")
		require.True(t, s.do(t, "POST", "/charge", "", "Idempotency-Key", blank).replayed())
		for name, c := range map[string]struct{ first, again []string }{
			"255 characters":          {[]string{"Idempotency-Key", long}, []string{"X-Idempotency-Key", `"` + long + `"`}},
			"the same key twice":      {[]string{"Idempotency-Key", twice, "Idempotency-Key", twice}, []string{"Idempotency-Key", twice}},
			"quoted and bare at once": {[]string{"Idempotency-Key", `"` + forms + `"`, "X-Idempotency-Key", forms}, []string{"Idempotency-Key", forms}},
			// Bare keys are any visible ASCII, so a stray closing quote is
			// part of the key, not a quoting error.
			"a trailing quote": {[]string{"Idempotency-Key", quote}, []string{"Idempotency-Key", quote}},
		} {
			total := s.stats(t).Total
			first := s.do(t, "POST", "/charge", "", c.first...)
			require.Equal(t, http.StatusOK, first.status, "%s: %s", name, first.body)
			again := s.do(t, "POST", "/charge", "", c.again...)
			require.True(t, again.replayed(), "%s: %d %s", name, again.status, again.body)
			require.Equal(t, string(first.body), string(again.body), name)
			require.Equal(t, total+1, s.stats(t).Total, name)
		}
	})

	t.Run("a keyed body of exactly the 1 MiB buffer limit runs; one byte more is Envoy's 413", func(t *testing.T) {
		const limit = 1 << 20 // per_connection_buffer_limit_bytes in envoy.yaml
		atLimit, over, chunked := newKey(t), newKey(t), newKey(t)
		body := strings.Repeat("b", limit)
		require.Equal(t, http.StatusOK, s.do(t, "POST", "/charge", body, "Idempotency-Key", atLimit).status)
		require.True(t, s.do(t, "POST", "/charge", body, "Idempotency-Key", atLimit).replayed())
		require.Equal(t, 1, s.executions(t, atLimit))

		acq := acquired()
		r := s.do(t, "POST", "/charge", body+"b", "Idempotency-Key", over)
		require.Equal(t, http.StatusRequestEntityTooLarge, r.status)
		require.Empty(t, r.problemType(), "Envoy's own 413")
		r = rawExchange(t, s, rawRequest(s, "POST", "Idempotency-Key: "+chunked+"\r\n", body+"b"))
		require.Equal(t, http.StatusRequestEntityTooLarge, r.status, "without a Content-Length too")
		require.Zero(t, s.executions(t, over))
		require.Zero(t, s.executions(t, chunked))
		require.Equal(t, acq, acquired(), "idemproxy took no lock for them")
		require.Equal(t, http.StatusOK, s.do(t, "POST", "/charge", "{}", "Idempotency-Key", over).status,
			"the refused key is free at once")

		// Without a key ext_proc is off, nothing is buffered, no limit applies.
		require.Equal(t, http.StatusOK, s.do(t, "POST", "/status?code=200", strings.Repeat("b", 2*limit)).status)
	})

	t.Run("many, large and binary headers under Envoy's limits run once and replay", func(t *testing.T) {
		many, big, binary := newKey(t), newKey(t), newKey(t)
		for range 2 {
			// 94 header lines: the most that leaves Envoy room for the fence.
			require.Equal(t, http.StatusOK, rawExchange(t, s, rawRequest(s, "POST", padHeaders(many, 94), "")).status)
			require.Equal(t, http.StatusOK, s.do(t, "POST", "/charge", "", "Idempotency-Key", big, "X-Big", strings.Repeat("v", 50<<10)).status)
			require.Equal(t, http.StatusOK, s.do(t, "POST", "/charge", "", "Idempotency-Key", binary, "X-Bin", "\x80\xfe\xff").status)
		}
		require.True(t, s.do(t, "POST", "/charge", "", "Idempotency-Key", many).replayed())
		for _, k := range []string{many, big, binary} {
			require.Equal(t, 1, s.executions(t, k))
		}
	})

	t.Run("headers that leave Envoy no room for the fence header are refused with 431 before any lock", func(t *testing.T) {
		// Envoy would refuse idemproxy's fence header mutation once the
		// request passes max_headers_count (100, counting the pseudo-headers
		// and the ones Envoy adds) or 60 KiB, and answer 500 after the lock
		// was granted. idemproxy checks the room first.
		rejected := s.envoyStat(t, "http.ingress.ext_proc.rejected_header_mutations")
		acq := s.metric(t, `idemproxy_requests_total{outcome="acquired"}`)
		lines, size := newKey(t), newKey(t)
		for _, req := range [][2]string{
			{lines, rawRequest(s, "POST", padHeaders(lines, 95), "")},
			{size, rawRequest(s, "POST", "Idempotency-Key: "+size+"\r\nX-Big: "+strings.Repeat("v", 61_280)+"\r\n", "")},
		} {
			r := rawExchange(t, s, req[1])
			require.Equal(t, http.StatusRequestHeaderFieldsTooLarge, r.status, "%s", r.body)
			require.Equal(t, problem+"headers-too-large", r.problemType())
			require.Zero(t, s.executions(t, req[0]))
			ok := s.do(t, "POST", "/charge", "", "Idempotency-Key", req[0])
			require.Equal(t, http.StatusOK, ok.status, "the key was never locked: %s", ok.body)
			require.Equal(t, 1, s.executions(t, req[0]))
		}
		require.Equal(t, rejected, s.envoyStat(t, "http.ingress.ext_proc.rejected_header_mutations"))
		require.Equal(t, acq+2, s.metric(t, `idemproxy_requests_total{outcome="acquired"}`), "only the two good retries took a lock")
	})

	t.Run("headers over Envoy's limits make it drop the connection, never 431", func(t *testing.T) {
		total, acq, errs := s.stats(t).Total, acquired(), protocolErrors()
		for name, req := range map[string]string{
			"101 header lines": rawRequest(s, "POST", padHeaders(newKey(t), 101), ""),
			"62 KiB of headers": rawRequest(s, "POST", "Idempotency-Key: "+newKey(t)+"\r\nX-Big: "+
				strings.Repeat("v", 62<<10)+"\r\n", ""),
			"a 62 KiB key": rawRequest(s, "POST", "Idempotency-Key: "+strings.Repeat("k", 62<<10)+"\r\n", ""),
		} {
			r := rawExchange(t, s, req)
			require.Zero(t, r.status, "%s: got %d %s", name, r.status, r.body)
		}
		require.Equal(t, errs+3, protocolErrors())
		require.Equal(t, total, s.stats(t).Total)
		require.Equal(t, acq, acquired())
	})

	t.Run("a response with many headers is replayed with all of them in order", func(t *testing.T) {
		key := newKey(t)
		first := s.do(t, "POST", "/many-headers", "", "Idempotency-Key", key)
		require.Equal(t, http.StatusOK, first.status, "%s", first.body)
		again := s.do(t, "POST", "/many-headers", "", "Idempotency-Key", key)
		require.True(t, again.replayed())
		require.Equal(t, int64(1), up.hits.Load())
		for name, values := range first.header {
			if strings.HasPrefix(name, "X-Many") || name == "X-Repeated" {
				require.Equal(t, values, again.header.Values(name), name)
			}
		}
		require.Len(t, again.header.Values("X-Repeated"), manyHeaderRepeats)
		require.Equal(t, string(first.body), string(again.body))
	})

	select {
	case <-s.idemproxy.Done():
		t.Fatalf("idemproxy exited: %v", s.idemproxy.Err())
	default:
	}
	resp, err := http.Get(s.adminURL + "/healthz")
	require.NoError(t, err)
	resp.Body.Close()
	require.Equal(t, http.StatusOK, resp.StatusCode, "idemproxy is alive after all of it")
	t.Logf("hostile input: backend executions %d, invalid keys %v, Envoy protocol errors %d, rejected fence mutations %d",
		s.stats(t).Total, s.metric(t, `idemproxy_requests_total{outcome="invalid_key"}`), protocolErrors(),
		s.envoyStat(t, "http.ingress.ext_proc.rejected_header_mutations"))
}

// rawRequest writes an HTTP/1.1 request by hand, for header bytes Go's
// client refuses to send and exact header counts. headers are CRLF-ended
// lines; a body is sent chunked.
func rawRequest(s *stack, method, headers, body string) string {
	req := method + " /charge HTTP/1.1\r\nHost: " + strings.TrimPrefix(s.url, "http://") + "\r\n"
	if body == "" {
		return req + "Content-Length: 0\r\n" + headers + "\r\n"
	}
	return req + "Transfer-Encoding: chunked\r\n" + headers + "\r\n" + fmt.Sprintf("%x\r\n%s\r\n0\r\n\r\n", len(body), body)
}

// padHeaders is a key header plus fillers, so that with rawRequest's Host
// and Content-Length the request has exactly lines header lines.
func padHeaders(key string, lines int) string {
	var b strings.Builder
	b.WriteString("Idempotency-Key: " + key + "\r\n")
	for i := range lines - 3 {
		fmt.Fprintf(&b, "X-Pad-%d: v\r\n", i)
	}
	return b.String()
}

// rawExchange sends req on a new connection and reads one response; status
// 0 means Envoy closed the connection without answering.
func rawExchange(t *testing.T, s *stack, req string) reply {
	t.Helper()
	conn, err := net.DialTimeout("tcp", strings.TrimPrefix(s.url, "http://"), 5*time.Second)
	require.NoError(t, err)
	defer conn.Close()
	require.NoError(t, conn.SetDeadline(time.Now().Add(20*time.Second)))
	// Envoy may answer or close before it has read everything.
	go func() { _, _ = io.WriteString(conn, req) }()
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		var ne net.Error
		require.False(t, errors.As(err, &ne) && ne.Timeout(), "Envoy neither answered nor closed: %v", err)
		return reply{}
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	return reply{status: resp.StatusCode, header: resp.Header, body: b}
}

// manyHeaderRepeats is how often the many-headers upstream repeats one name.
const manyHeaderRepeats = 10

type manyHeadersUpstream struct {
	hits       atomic.Int64
	envoyEdits [][2]string
}

// startManyHeadersUpstream serves a response with 80 headers (70 names, one
// of them repeated, values including obs-text bytes) and routes keyed
// /many-headers requests to it: the mock backend has no such response.
func startManyHeadersUpstream(t *testing.T) *manyHeadersUpstream {
	up := &manyHeadersUpstream{}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		up.hits.Add(1)
		for i := range 70 {
			w.Header().Set(fmt.Sprintf("X-Many-%02d", i), fmt.Sprintf("value %d \x80\xff", i))
		}
		for i := range manyHeaderRepeats {
			w.Header().Add("X-Repeated", fmt.Sprintf("line %d", i))
		}
		_, _ = io.WriteString(w, "many headers")
	}), ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = srv.Serve(l) }()
	t.Cleanup(func() { _ = srv.Close() })
	port := l.Addr().(*net.TCPAddr).Port
	up.envoyEdits = [][2]string{
		{"              # Keyed requests: ext_proc stays on. Either header name works.\n",
			"              - match: { prefix: /many-headers, headers: [{ name: idempotency-key, present_match: true }] }\n" +
				"                route: { cluster: many_headers, timeout: 10s }\n" +
				"              # Keyed requests: ext_proc stays on. Either header name works.\n"},
		{"  clusters:\n", fmt.Sprintf("  clusters:\n  - name: many_headers\n    type: STATIC\n    connect_timeout: 1s\n"+
			"    load_assignment:\n      cluster_name: many_headers\n      endpoints:\n      - lb_endpoints:\n"+
			"        - endpoint: { address: { socket_address: { address: 127.0.0.1, port_value: %d } } }\n", port)},
	}
	return up
}
