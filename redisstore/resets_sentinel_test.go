package redisstore

import (
	"errors"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/idemproxy/idemproxy/internal/idem"
	"github.com/idemproxy/idemproxy/internal/testenv/redistopo"
)

// TestStoreReset_sentinelEmptyReplica: under Sentinel, both replicas are
// restarted without their data (new pods, say) while the primary is down,
// and the sentinels promote one of them: a failover to a replica that never
// had the data. The process, which read the marker through the old primary,
// finds none on the new one: the completed key is refused, never run again.
func TestStoreReset_sentinelEmptyReplica(t *testing.T) {
	t.Parallel()
	st := redistopo.NewSentinel(t)
	topo := sentinelTopology(t, st)
	m, err := NewMarkers(DefaultPrefix, ModeSentinel)
	require.NoError(t, err)
	p := newResetProcess(t, topo, m, time.Hour, false)
	p.gate.check(t.Context())
	require.NoError(t, p.gate.Usable("k"))
	p.complete(t, "k")

	old, err := st.Primary(t.Context())
	require.NoError(t, err)
	var replicas []*redistopo.Server
	for _, d := range st.Data {
		if d != old {
			replicas = append(replicas, d)
			d.Stop()
		}
	}
	old.Stop()
	for _, r := range replicas {
		r.Restart(t) // empty, a replica of the dead primary
	}
	promoted, err := st.WaitFailover(t.Context(), old)
	require.NoError(t, err)
	n, err := promoted.Client(t).DBSize(t.Context()).Result()
	require.NoError(t, err)
	require.Zero(t, n, "the promoted replica never had the data")

	// Before any health check: the retry is refused by the acquire itself
	// once the client follows the failover (errors until then).
	require.Eventually(t, func() bool {
		state, err := p.retry(t, "k")
		require.NotEqual(t, idem.StateAcquired, state, "never a second run")
		return errors.Is(err, idem.ErrStoreReset)
	}, 20*time.Second, 100*time.Millisecond)
	require.Eventually(t, func() bool {
		p.gate.check(t.Context())
		return p.gate.Usable("k") != nil
	}, 20*time.Second, 100*time.Millisecond, "the health check holds the primary")
	require.ErrorIs(t, p.gate.Usable("k"), idem.ErrStoreReset)
	require.Contains(t, p.logs.String(), "its marker is gone")
	_, err = p.retry(t, "k")
	require.ErrorIs(t, err, idem.ErrStoreReset, "the rewritten marker notes the reset")
}
