package redistopo

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// TestSentinel comes up, serves a write through a Sentinel-aware client,
// fails over after the primary's SIGKILL, and takes the old primary back
// as a replica.
func TestSentinel(t *testing.T) {
	st := NewSentinel(t)
	require.Len(t, st.Data, 3)
	require.Len(t, st.Sentinels, 3)
	ctx := t.Context()
	c := st.Client(t)

	old, err := st.Primary(ctx)
	require.NoError(t, err)
	require.Equal(t, st.Data[0].Addr, old.Addr)
	// WAIT counts acknowledgements of its own connection's writes (on
	// another, Valkey 8.1 answers at once): the SET and the WAIT share one.
	pipe := old.Client(t).Pipeline()
	pipe.Set(ctx, "k", "v1", 0)
	wait := pipe.Do(ctx, "WAIT", 2, time.Second.Milliseconds())
	_, err = pipe.Exec(ctx)
	require.NoError(t, err)
	n, err := wait.Int64()
	require.NoError(t, err)
	require.EqualValues(t, 2, n, "both replicas have the write")

	st.Kill(old)
	start := time.Now()
	require.ErrorContains(t, st.Restart(ctx, old), "would wipe the replicas",
		"restarting the primary before a failover is refused")
	promoted, err := st.WaitFailover(ctx, old)
	require.NoError(t, err)
	t.Logf("sentinel: %s promoted %v after %s was killed", promoted.Addr, time.Since(start).Round(time.Millisecond), old.Addr)
	require.NotEqual(t, old.Addr, promoted.Addr)
	v, err := promoted.Client(t).Get(ctx, "k").Result()
	require.NoError(t, err)
	require.Equal(t, "v1", v, "the promoted replica has the write")
	require.Eventually(t, func() bool { return c.Set(ctx, "k", "v2", 0).Err() == nil },
		10*time.Second, 50*time.Millisecond, "the Sentinel-aware client writes to the new primary")

	require.NoError(t, st.Restart(ctx, old))
	r, up, err := role(ctx, nil, old.Addr)
	require.NoError(t, err)
	require.Equal(t, "slave", r, "the old primary is back as a replica")
	require.True(t, up)
}
