package redisstore

import (
	"context"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/idemproxy/idemproxy/internal/idem"
	"github.com/idemproxy/idemproxy/internal/testenv"
	"github.com/idemproxy/idemproxy/internal/testenv/redistopo"
)

// clusterTopology connects to cl as idemproxy does and reads its view.
func clusterTopology(t *testing.T, cl *redistopo.Cluster) *Topology {
	t.Helper()
	addrs := cl.Addrs()
	topo, err := Connect(ConnectOptions{Mode: ModeCluster, URL: "redis://" + addrs[0] + "?addr=" + strings.Join(addrs[1:], "&addr="), Timeout: time.Second})
	require.NoError(t, err)
	t.Cleanup(func() { _ = topo.Close() })
	refresh(t, topo)
	return topo
}

// TestStore_allReplicasCluster: on a 3+3 cluster every shard's replica
// must acknowledge its primary's writes; a shard whose replica is down
// refuses new locks at once, and the other shards go on.
func TestStore_allReplicasCluster(t *testing.T) {
	t.Parallel()
	cl := redistopo.NewCluster(t)
	topo := clusterTopology(t, cl)
	s := New(topo.Client(), Options{Topology: topo, AllReplicas: true, ReplicaTimeout: 500 * time.Millisecond})
	keys := clusterKeys(t, s, cl, 30)
	for k := range keys {
		tok := acquired(t, s, k, time.Minute)
		require.NoError(t, s.Complete(t.Context(), k, tok, sampleRecord(), time.Hour), k)
	}

	var downShard string
	for _, p := range keys {
		downShard = p
		break
	}
	shard := topo.view.Load().shards[downShard]
	require.Len(t, shard, 1, "one replica per shard")
	var replica *redistopo.Server
	for _, n := range cl.Nodes {
		if slices.Contains(shard[0].aliases, n.Addr) {
			replica = n
		}
	}
	require.NotNil(t, replica, "the view names a node of ours: %v", shard[0].aliases)
	replica.Stop()
	t.Cleanup(func() { require.NoError(t, cl.Restart(context.WithoutCancel(t.Context()), replica)) })
	testenv.WaitFor(t, 10*time.Second, "the primary no longer lists its stopped replica", func() bool {
		for _, n := range refresh(t, topo).Nodes {
			if n.Addr == downShard && len(n.Offline) == 1 {
				return true
			}
		}
		return false
	})
	refused, served := 0, 0
	for k := range keys {
		p, err := cl.PrimaryForKey(t.Context(), s.RedisKey(k+"-new"))
		require.NoError(t, err)
		_, err = s.Acquire(t.Context(), k+"-new", claim(token(t), []byte("fp"), time.Minute))
		if p.Addr == downShard {
			require.ErrorIs(t, err, idem.ErrUnreplicated, "the shard whose replica is down")
			refused++
		} else {
			require.NoError(t, err, "the other shards serve")
			served++
		}
	}
	require.Positive(t, refused)
	require.Positive(t, served)
}

// TestTopology_RefreshNodeCut: a node that answers nothing (frozen, as one
// cut off by a partition is) costs its own answer only: every primary is
// still read within the deadline, whichever node is asked first. (go-redis's
// ForEachMaster first reloads the slot map from a random node, and when
// that is the frozen one, the deadline is spent and every primary fails.)
func TestTopology_RefreshNodeCut(t *testing.T) {
	t.Parallel()
	cl := redistopo.NewCluster(t)
	topo := clusterTopology(t, cl)
	primaries, err := cl.Primaries(t.Context())
	require.NoError(t, err)
	var frozen *redistopo.Server
	for _, n := range cl.Nodes {
		if !slices.Contains(primaries, n) {
			frozen = n
		}
	}
	require.NoError(t, frozen.Pause())
	t.Cleanup(func() { _ = frozen.Resume() })
	for range 5 {
		ctx, cancel := context.WithTimeout(t.Context(), time.Second)
		start := time.Now()
		f, err := topo.Refresh(ctx, Probe{Channel: "idemproxy:channel-check"})
		cancel()
		require.NoError(t, err)
		require.Less(t, time.Since(start), 1500*time.Millisecond)
		serving, down := Serving(f.Nodes)
		require.Len(t, serving, 3, "every primary serves: %v", down)
	}
}
