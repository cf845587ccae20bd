package envoy

import (
	"context"
	"net/http"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/idemproxy/idemproxy/redisstore"
)

// TestEndToEnd_GracefulShutdown: SIGTERM while a request is upstream lets it
// finish and store its response, then idemproxy exits cleanly.
func TestEndToEnd_GracefulShutdown(t *testing.T) {
	s := startStack(t, "--shutdown-grace", "10s")
	key := newKey(t)
	first := make(chan reply, 1)
	go func() { first <- s.do(t, "POST", "/slow?delay=1500ms", "", "Idempotency-Key", key) }()
	waitFor(t, 5*time.Second, "the request to reach the backend", func() bool { return s.executions(t, key) == 1 })

	require.NoError(t, s.idemproxy.cmd.Process.Signal(syscall.SIGTERM))
	r := <-first
	require.Equal(t, http.StatusOK, r.status, "%s", r.body)
	select {
	case <-s.idemproxy.done:
		require.NoError(t, s.idemproxy.err, "idemproxy exits 0 after a graceful stop")
	case <-time.After(10 * time.Second):
		require.FailNow(t, "idemproxy did not exit after SIGTERM")
	}

	// The response was stored before idemproxy went away.
	rdb := s.redis.Client(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	keys, err := rdb.Keys(ctx, redisstore.DefaultPrefix+"{*}").Result() // the record, not its fence counter
	require.NoError(t, err)
	require.Len(t, keys, 1)
	state, err := rdb.HGet(ctx, keys[0], "st").Result()
	require.NoError(t, err)
	require.Equal(t, "c", state, "the record is completed")
}
