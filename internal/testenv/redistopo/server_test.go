package redistopo

import (
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"
)

func TestStart(t *testing.T) {
	t.Run("server answers on its address and URL", func(t *testing.T) {
		srv := Start(t)
		require.NoError(t, srv.Client(t).Ping(t.Context()).Err())

		opts, err := redis.ParseURL(srv.URL())
		require.NoError(t, err)
		require.Equal(t, srv.Addr, opts.Addr)
	})
	t.Run("extra arguments reach the server", func(t *testing.T) {
		srv := Start(t, "--maxmemory-policy", "noeviction")
		got, err := srv.Client(t).ConfigGet(t.Context(), "maxmemory-policy").Result()
		require.NoError(t, err)
		require.Equal(t, "noeviction", got["maxmemory-policy"])
	})
}

func TestServer_Stop(t *testing.T) {
	t.Run("stopped server refuses connections and stopping twice is fine", func(t *testing.T) {
		srv := Start(t)
		srv.Stop()
		srv.Stop()
		require.Error(t, Ping(srv.Addr))
	})
}

func TestServer_Restart(t *testing.T) {
	t.Run("restarted server is on the same port and empty", func(t *testing.T) {
		srv := Start(t)
		addr := srv.Addr
		c := srv.Client(t)
		require.NoError(t, c.Set(t.Context(), "k", "v", 0).Err())
		srv.Restart(t)
		require.Equal(t, addr, srv.Addr)
		require.Eventually(t, func() bool {
			n, err := c.Exists(t.Context(), "k").Result()
			return err == nil && n == 0
		}, 5*time.Second, 10*time.Millisecond)
	})
}
