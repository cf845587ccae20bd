package envoy

import (
	"fmt"
	"net/http"
	"os"
	"strings"
	"sync"
	"testing"

	"github.com/stretchr/testify/require"
)

// luaFilter is the Lua filter's entry in envoy.yaml's http_filters, cut
// out to run as Istio and Envoy Gateway do (they have no such filter).
func luaFilter(t *testing.T) string {
	t.Helper()
	raw, err := os.ReadFile("envoy.yaml")
	require.NoError(t, err)
	cfg := string(raw)
	start := strings.Index(cfg, "          - name: envoy.filters.http.lua\n")
	end := strings.Index(cfg, "          - name: envoy.filters.http.ext_proc\n")
	require.Positive(t, start)
	require.Greater(t, end, start)
	return cfg[start:end]
}

// fetch sends one keyed request with c and reads the response.
func fetch(t *testing.T, c *http.Client, method, url, key string) (*http.Response, string) {
	t.Helper()
	return sendWith(t, c, method, url, "", "Idempotency-Key", key)
}

// TestEndToEnd_ReplayPaths measures whether replays should all be served
// by the replay endpoint (--replay-all-via-endpoint) rather than as
// immediate responses: for the replays Envoy rewrites in local replies
// (an empty body with a Content-Type, a body without one, HEAD), over
// HTTP/1.1 and HTTP/2, with the shipped Lua filter and without it (as in
// Istio and Envoy Gateway), it compares each replay's status,
// Content-Type, Content-Length and body with the first response's. The
// endpoint path must be faithful in every case; the immediate path without
// the Lua filter shows the rewriting it exists for.
func TestEndToEnd_ReplayPaths(t *testing.T) {
	t.Parallel()
	cases := []struct{ name, method, path string }{
		{"empty 201 with Content-Type", "POST", "/status?code=201&body=&type=application/json"},
		{"body without Content-Type", "POST", "/status?code=200&body=hello"},
		{"body with Content-Type", "POST", "/status?code=201&body=%7B%7D&type=application/vnd.api%2Bjson"},
		{"HEAD with Content-Type", "HEAD", "/status?code=200&body=&type=text/csv"},
	}
	var mu sync.Mutex
	var table []string
	for _, path := range []string{"immediate", "endpoint"} {
		for _, lua := range []bool{true, false} {
			t.Run(fmt.Sprintf("%s, Lua filter %v", path, lua), func(t *testing.T) {
				t.Parallel()
				var edits [][2]string
				if !lua {
					edits = append(edits, [2]string{luaFilter(t), ""})
				}
				args := []string{"--replay-addr", "127.0.0.1:0"}
				if path == "endpoint" {
					args = append(args, "--replay-all-via-endpoint")
				}
				s, _ := startReplayStackArgs(t, args, edits...)
				for _, client := range []string{"HTTP/1.1", "HTTP/2"} {
					c := s.client
					if client == "HTTP/2" {
						c = h2cClient()
					}
					for _, tc := range cases {
						key := newKey(t)
						first, firstBody := fetch(t, c, tc.method, s.url+tc.path, key)
						again, againBody := fetch(t, c, tc.method, s.url+tc.path, key)
						require.Equal(t, "true", again.Header.Get("Idempotent-Replayed"), "%s %s: %d %s", client, tc.name, again.StatusCode, againBody)
						require.Equal(t, 1, s.executions(t, key))
						sameType := fmt.Sprint(first.Header.Values("Content-Type")) == fmt.Sprint(again.Header.Values("Content-Type"))
						sameLen := first.Header.Get("Content-Length") == again.Header.Get("Content-Length")
						same := first.StatusCode == again.StatusCode && firstBody == againBody && sameType
						mu.Lock()
						table = append(table, fmt.Sprintf("| %s | %v | %s | %s | %v | %v (%q vs %q) | %v (%q vs %q) |", path, lua, client, tc.name, same,
							sameType, first.Header.Values("Content-Type"), again.Header.Values("Content-Type"),
							sameLen, first.Header.Get("Content-Length"), again.Header.Get("Content-Length")))
						mu.Unlock()
						if path == "endpoint" {
							require.True(t, same, "%s %s: the endpoint replays what the client saw first: %v vs %v", client, tc.name, first.Header, again.Header)
						}
						if path == "immediate" && !lua && tc.name == "empty 201 with Content-Type" {
							require.False(t, sameType, "without the Lua filter Envoy drops an empty local reply's Content-Type")
						}
					}
				}
			})
		}
	}
	t.Cleanup(func() {
		t.Log("| path | Lua | client | case | faithful | same Content-Type | same Content-Length |")
		for _, row := range table {
			t.Log(row)
		}
	})
}
