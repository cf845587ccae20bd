package redistopo

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// TestCluster comes up, serves a write, survives a primary's SIGKILL by
// promoting its replica, and takes the killed node back as a replica.
func TestCluster(t *testing.T) {
	c := NewCluster(t)
	require.Len(t, c.Nodes, 6)
	for _, s := range c.Nodes {
		_, port, _ := splitAddr(s.Addr)
		require.Less(t, port, maxClusterPort, "the bus port is port+10000")
	}
	cc := c.Client(t)
	ctx := t.Context()
	old, err := c.PrimaryForKey(ctx, "{k}1")
	require.NoError(t, err)
	// The write is on the replica before the primary dies. WAIT counts
	// the replicas that acknowledged its own connection's writes: on
	// another connection Valkey 8.1 answers at once, so the SET and the
	// WAIT share one (a pipeline).
	pipe := old.Client(t).Pipeline()
	pipe.Set(ctx, "{k}1", "v1", 0)
	wait := pipe.Do(ctx, "WAIT", 1, time.Second.Milliseconds())
	_, err = pipe.Exec(ctx)
	require.NoError(t, err)
	acked, err := wait.Int64()
	require.NoError(t, err)
	require.EqualValues(t, 1, acked)

	require.NoError(t, c.Kill(ctx, old))
	start := time.Now()
	// Failure detection takes the 1 s node timeout at least.
	require.ErrorContains(t, c.Restart(ctx, old), "would wipe that replica",
		"restarting a primary before its replica took over is refused")
	promoted, err := c.WaitPromoted(ctx, old)
	require.NoError(t, err)
	t.Logf("cluster: %s promoted %v after %s was killed", promoted.Addr, time.Since(start).Round(time.Millisecond), old.Addr)
	require.NotEqual(t, old.Addr, promoted.Addr)
	now, err := c.PrimaryForKey(ctx, "{k}1")
	require.NoError(t, err)
	require.Equal(t, promoted.Addr, now.Addr)
	v, err := promoted.Client(t).Get(ctx, "{k}1").Result()
	require.NoError(t, err)
	require.Equal(t, "v1", v, "the promoted replica serves the key it had replicated")
	// A cluster client routes by the slot map it had; reloaded, it writes again.
	cc.ReloadState(ctx)
	require.Eventually(t, func() bool { return cc.Set(ctx, "{k}2", "v2", 0).Err() == nil },
		10*time.Second, 50*time.Millisecond, "a write through the cluster client after the failover")

	require.NoError(t, c.Restart(ctx, old))
	r, up, err := role(ctx, nil, old.Addr)
	require.NoError(t, err)
	require.Equal(t, "slave", r, "the old primary rejoins as a replica")
	require.True(t, up)
}
