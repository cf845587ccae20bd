package envoy

import (
	"context"
	"net/http"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/idemproxy/idemproxy/internal/testenv"
	"github.com/idemproxy/idemproxy/redisstore"
)

// TestEndToEnd_GracefulShutdown: SIGTERM while a request is upstream lets it
// finish and store its response, then idemproxy exits cleanly.
func TestEndToEnd_GracefulShutdown(t *testing.T) {
	t.Parallel()
	s := startStack(t, "--shutdown-grace", "10s")
	key := newKey(t)
	first := s.goDo("POST", "/slow?delay=1500ms", "", "Idempotency-Key", key)
	testenv.WaitFor(t, 5*time.Second, "the request to reach the backend", func() bool { return s.executions(t, key) == 1 })

	require.NoError(t, s.idemproxy.Signal(syscall.SIGTERM))
	r := await(t, first, 15*time.Second, "the request in flight across SIGTERM")
	require.Equal(t, http.StatusOK, r.status, "%s", r.body)
	select {
	case <-s.idemproxy.Done():
		require.NoError(t, s.idemproxy.Err(), "idemproxy exits 0 after a graceful stop")
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
