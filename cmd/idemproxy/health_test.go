package main

import (
	"net/http"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/idemproxy/idemproxy/internal/testenv"
	"github.com/idemproxy/idemproxy/internal/testenv/redistopo"
)

// TestRun_channelACL: an ACL user without idemproxy's channels is told
// of (one error log naming the fix, a gauge) without being refused, and
// the all-clear follows when the ACL is mended.
func TestRun_channelACL(t *testing.T) {
	rs := redistopo.Start(t)
	admin := rs.Client(t)
	require.NoError(t, admin.Do(t.Context(), "ACL", "SETUSER", "idemproxy", "reset", "on", ">pw", "~idemproxy:*", "+@all").Err())
	logs, done, _ := runInBackground(t, env{}.get, "--grpc-addr", "127.0.0.1:0", "--admin-addr", "127.0.0.1:0",
		"--redis-url", "redis://idemproxy:pw@"+rs.Addr+"/0", "--health-interval", "50ms")
	adminAddr := logAddr(t, logs, done, "admin listening")
	metric := func() float64 {
		return testenv.Metric(t, "http://"+adminAddr+"/metrics", "idemproxy_redis_channels_refused")
	}

	require.Eventually(t, func() bool { return metric() == 1 }, waitFor, poll)
	require.Eventually(t, func() bool {
		return strings.Contains(logs.String(), "may not publish on idemproxy's channels")
	}, waitFor, poll)
	require.Contains(t, logs.String(), "add `&idemproxy:*` to the user's ACL")
	resp, err := http.Get("http://" + adminAddr + "/readyz")
	require.NoError(t, err)
	resp.Body.Close()
	require.Equal(t, http.StatusOK, resp.StatusCode, "not refused for it")

	require.NoError(t, admin.Do(t.Context(), "ACL", "SETUSER", "idemproxy", "&idemproxy:*").Err())
	require.Eventually(t, func() bool { return metric() == 0 }, waitFor, poll)
	require.Eventually(t, func() bool {
		return strings.Contains(logs.String(), "may publish on idemproxy's channels again")
	}, waitFor, poll)
	require.Equal(t, 1, strings.Count(logs.String(), "may not publish on idemproxy's channels"), "logged once")
}
