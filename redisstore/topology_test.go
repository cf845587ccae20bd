package redisstore

import (
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"
)

// TestConnect_options: idemproxy's timeouts and handshake settings reach
// every topology's client, and a cluster URL with one address still makes
// a cluster client (UniversalClient would make a plain one).
func TestConnect_options(t *testing.T) {
	for _, mode := range []Mode{ModeStandalone, ModeCluster, ModeSentinel} {
		t.Run(string(mode), func(t *testing.T) {
			url := "rediss://app:secret@127.0.0.1:7000?"
			if mode == ModeSentinel {
				url += "master_name=m"
			}
			topo, err := Connect(ConnectOptions{Mode: mode, URL: url, Timeout: 700 * time.Millisecond})
			require.NoError(t, err)
			t.Cleanup(func() { _ = topo.Close() })
			require.Equal(t, mode, topo.Mode())
			var o *redis.Options
			switch c := topo.Client().(type) {
			case *redis.ClusterClient:
				require.Equal(t, ModeCluster, mode)
				co := c.Options()
				require.Equal(t, []string{"127.0.0.1:7000"}, co.Addrs)
				o = &redis.Options{ReadTimeout: co.ReadTimeout, DialTimeout: co.DialTimeout, Protocol: co.Protocol,
					DisableIdentity: co.DisableIdentity, DialerRetries: co.DialerRetries, TLSConfig: co.TLSConfig,
					Username: co.Username, Password: co.Password, ContextTimeoutEnabled: co.ContextTimeoutEnabled}
			case *redis.Client:
				require.NotEqual(t, ModeCluster, mode)
				o = c.Options()
			}
			require.Equal(t, 700*time.Millisecond, o.ReadTimeout)
			require.Equal(t, 700*time.Millisecond, o.DialTimeout)
			require.Equal(t, 2, o.Protocol)
			require.True(t, o.DisableIdentity)
			require.Equal(t, 1, o.DialerRetries)
			require.True(t, o.ContextTimeoutEnabled)
			require.NotNil(t, o.TLSConfig, "rediss:// is TLS in every mode")
			if mode != ModeSentinel {
				require.Equal(t, "app", o.Username, "the ACL user")
			}
			if mode != ModeStandalone {
				n := topo.node("127.0.0.1:7001").Options()
				require.Equal(t, 700*time.Millisecond, n.ReadTimeout, "node and sentinel clients time out alike")
				require.Same(t, o.TLSConfig, n.TLSConfig, "and use the same TLS settings")
			}
		})
	}
}
