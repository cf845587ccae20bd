package redisstore

import (
	"fmt"
	"net"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/idemproxy/idemproxy/internal/idem"
	"github.com/idemproxy/idemproxy/internal/testenv/redistopo"
)

// TestStoreReset_clusterShard: on a cluster, a marker per slot is written
// once (16384, spread over the primaries); one shard that loses its
// records (its primary and replica restarted without persistence: the
// primary keeps its slots, from nodes.conf, and comes back empty) holds only
// the keys it serves: their retries are refused at once, keys of the other
// shards replay as before, and a process started after the flush tells
// the reset from the other shards' markers. An acknowledgement releases
// the shard.
func TestStoreReset_clusterShard(t *testing.T) {
	t.Parallel()
	cl := redistopo.NewCluster(t)
	topo := clusterTopology(t, cl)
	m, err := NewMarkers(DefaultPrefix, ModeCluster)
	require.NoError(t, err)
	a := newResetProcess(t, topo, m, time.Hour, false)
	primaries, err := cl.Primaries(t.Context())
	require.NoError(t, err)
	before := usedMemoryOf(t, primaries)
	a.gate.check(t.Context())
	require.NoError(t, a.gate.Usable("k"))
	markers := int64(0)
	for _, p := range primaries {
		n, err := p.Client(t).DBSize(t.Context()).Result()
		require.NoError(t, err)
		require.Positive(t, n, "every primary has markers")
		markers += n
	}
	require.EqualValues(t, slotCount, markers, "one marker per slot")
	t.Logf("figures: %d markers take %d bytes of used_memory over the primaries", markers, usedMemoryOf(t, primaries)-before)

	keys := clusterKeys(t, a.store, cl, 30)
	for k := range keys {
		a.complete(t, k)
	}
	var wiped string
	for _, addr := range keys {
		wiped = addr
		break
	}
	restartShardEmpty(t, cl, wiped)
	for k, addr := range keys {
		state, err := a.retry(t, k)
		if addr == wiped {
			require.ErrorIs(t, err, idem.ErrStoreReset, "%s on the wiped shard: refused at once, got %v", k, state)
		} else {
			require.NoError(t, err)
			require.Equal(t, idem.StateCompleted, state, "%s on another shard replays", k)
		}
	}

	// A process started after the flush, before anyone noted it: only the
	// other shards' markers tell it.
	b := newResetProcess(t, topo, m, time.Hour, false)
	b.gate.check(t.Context())
	held := b.gate.StoreResets()
	require.Len(t, held, 1, "a new process notes the reset")
	require.Equal(t, wiped, held[0].Primary)
	require.Contains(t, b.logs.String(), "other primaries have had theirs")

	a.gate.check(t.Context())
	for k, addr := range keys {
		if addr == wiped {
			require.ErrorIs(t, a.gate.Usable(k), idem.ErrStoreReset, k)
		} else {
			require.NoError(t, a.gate.Usable(k), "%s: the other shards keep serving", k)
		}
	}
	held = a.gate.StoreResets()
	require.Len(t, held, 1)
	require.Equal(t, wiped, held[0].Primary)
	require.Equal(t, 1, strings.Count(a.logs.String(), "redis primary lost its records"))

	_, err = a.gate.AckStoreResets(t.Context())
	require.NoError(t, err)
	b.gate.check(t.Context())
	for k, addr := range keys {
		require.NoError(t, b.gate.Usable(k), k)
		if addr == wiped {
			state, err := b.retry(t, k)
			require.NoError(t, err, fmt.Sprintf("%s: the shard's markers were written again", k))
			require.Equal(t, idem.StateAcquired, state)
		}
	}
}

// restartShardEmpty restarts the primary at addr and its replica without
// persistence, the replica stopped first so that no failover can happen:
// the shard comes back with its slots and no data.
func restartShardEmpty(t *testing.T, cl *redistopo.Cluster, addr string) {
	t.Helper()
	var primary, replica *redistopo.Server
	for _, n := range cl.Nodes {
		if n.Addr == addr {
			primary = n
		}
	}
	require.NotNil(t, primary)
	info, err := primary.Client(t).Info(t.Context(), "replication").Result()
	require.NoError(t, err)
	lines := replicaLines(parseInfo(info))
	require.Len(t, lines, 1, "one replica per shard")
	for _, n := range cl.Nodes {
		if _, port, _ := net.SplitHostPort(n.Addr); strings.HasSuffix(lines[0].addr, ":"+port) {
			replica = n
		}
	}
	require.NotNil(t, replica)
	replica.Stop()
	primary.Restart(t)
	replica.Restart(t)
	require.NoError(t, cl.WaitHealthy(t.Context()))
	n, err := primary.Client(t).DBSize(t.Context()).Result()
	require.NoError(t, err)
	require.Zero(t, n, "the shard came back empty")
}

// usedMemoryOf sums used_memory over servers.
func usedMemoryOf(t *testing.T, servers []*redistopo.Server) int64 {
	t.Helper()
	var sum int64
	for _, s := range servers {
		info, err := s.Client(t).Info(t.Context(), "memory").Result()
		require.NoError(t, err)
		n, err := strconv.ParseInt(parseInfo(info)["used_memory"], 10, 64)
		require.NoError(t, err)
		sum += n
	}
	return sum
}
