package main

import (
	"net/http"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/idemproxy/idemproxy/internal/testenv/redistopo"
)

// TestRun_replayEndpoint: with --replay-addr the replay endpoint listens,
// answers a token that replays nothing with 503, and stops with run.
func TestRun_replayEndpoint(t *testing.T) {
	rs := redistopo.Start(t)
	logs, done, cancel := runInBackground(t, env{}.get, "--grpc-addr", "127.0.0.1:0", "--admin-addr", "127.0.0.1:0",
		"--replay-addr", "127.0.0.1:0", "--redis-url", rs.URL(), "--shutdown-grace", "1s")
	addr := logAddr(t, logs, done, "replay endpoint listening")
	req, err := http.NewRequestWithContext(t.Context(), http.MethodPost, "http://"+addr+"/charge", nil)
	require.NoError(t, err)
	req.Header.Set("x-idemproxy-replay", "0123456789abcdef0123456789abcdef.0123456789abcdef0123456789abcdef")
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	resp.Body.Close()
	require.Equal(t, http.StatusServiceUnavailable, resp.StatusCode)

	cancel()
	select {
	case err := <-done:
		require.NoError(t, err)
		done <- nil // for the cleanup
	case <-time.After(waitFor):
		t.Fatal("run did not return after its context ended")
	}
	_, err = http.DefaultClient.Do(req.Clone(t.Context()))
	require.Error(t, err, "the replay port is closed")
}
