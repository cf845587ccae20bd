package redisstore

import (
	"context"
	"net"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"

	"github.com/idemproxy/idemproxy/internal/idem"
	"github.com/idemproxy/idemproxy/internal/testenv"
	"github.com/idemproxy/idemproxy/internal/testenv/redistopo"
)

// sentinelTopology connects to st as idemproxy does and reads its view.
func sentinelTopology(t *testing.T, st *redistopo.Sentinel) *Topology {
	t.Helper()
	addrs := st.SentinelAddrs()
	url := "redis://" + addrs[0] + "?master_name=" + redistopo.MasterName
	for _, a := range addrs[1:] {
		url += "&addr=" + a
	}
	topo, err := Connect(ConnectOptions{Mode: ModeSentinel, URL: url, Timeout: time.Second})
	require.NoError(t, err)
	t.Cleanup(func() { _ = topo.Close() })
	refresh(t, topo)
	return topo
}

// refresh reads the topology's facts and view, as the health check does.
func refresh(t *testing.T, topo *Topology) Facts {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Second)
	defer cancel()
	f, err := topo.Refresh(ctx, Probe{Channel: "idemproxy:channel-check"})
	require.NoError(t, err)
	return f
}

// caughtUp waits until primary lists srv as an online replica that has
// acknowledged everything; it may run in a cleanup, where the test's
// context is done.
func caughtUp(t *testing.T, primary, srv *redistopo.Server) {
	t.Helper()
	ctx := context.Background()
	pc := redis.NewClient(&redis.Options{Addr: primary.Addr})
	defer pc.Close()
	testenv.WaitFor(t, 15*time.Second, "the primary lists the replica online and caught up", func() bool {
		info, err := pc.Info(ctx, "replication").Result()
		if err != nil {
			return false
		}
		fields := parseInfo(info)
		offset, _ := strconv.ParseInt(fields["master_repl_offset"], 10, 64)
		for _, r := range replicaLines(fields) {
			if r.addr == srv.Addr && r.state == "online" && r.offset >= offset {
				return true
			}
		}
		return false
	})
}

// TestStore_allReplicas: with AllReplicas a write is durable only once
// every replica a failover could promote has it. A replica that left its
// primary (as one promoted in a flapping partition does, before idemproxy
// is told) is missed, where a count of one replica was satisfied by the
// other and the write was reported durable though the replica that may
// be promoted lacked it.
func TestStore_allReplicas(t *testing.T) {
	t.Parallel()
	st := redistopo.NewSentinel(t)
	topo := sentinelTopology(t, st)
	s := New(topo.Client(), Options{Topology: topo, AllReplicas: true, ReplicaTimeout: 500 * time.Millisecond})
	one := New(topo.Client(), Options{MinReplicas: 1, ReplicaTimeout: 500 * time.Millisecond})
	primary, err := st.Primary(t.Context())
	require.NoError(t, err)
	var replicas []*redistopo.Server
	for _, d := range st.Data {
		if d != primary {
			replicas = append(replicas, d)
		}
	}

	t.Run("every replica has it: durable", func(t *testing.T) {
		tok := acquired(t, s, "all", time.Minute)
		require.NoError(t, s.Complete(t.Context(), "all", tok, sampleRecord(), time.Hour))
		tok = acquired(t, s, "released", time.Minute)
		require.NoError(t, s.Release(t.Context(), "released", tok), "a release every replica confirmed")
		// The second release writes nothing, and is checked against the
		// primary's offset, which includes the REPLCONF GETACK of the
		// first release's WAIT. Redis 7.0's WAIT asks the replicas for a
		// fresh ack even then; Valkey 8.1's returns at once when the
		// connection has nothing unacknowledged, so until the replicas'
		// next periodic ack (each second) the release is reported
		// unreplicated (the safe side: the caller tries again).
		// docs/redis-topologies.md, "Valkey". Wait for that ack here.
		for _, r := range replicas {
			caughtUp(t, primary, r)
		}
		require.ErrorIs(t, s.Release(t.Context(), "released", tok), idem.ErrLeaseLost, "then it is gone")
		for _, r := range replicas {
			n, err := r.Client(t).Exists(t.Context(), s.RedisKey("all")).Result()
			require.NoError(t, err)
			require.EqualValues(t, 1, n, "replica %s has the record", r.Addr)
		}
	})
	t.Run("a replica down: new locks refused at once, completions written and reported", func(t *testing.T) {
		tok := acquired(t, s, "before", time.Minute)
		down := replicas[1]
		down.Stop()
		t.Cleanup(func() {
			require.NoError(t, st.Restart(context.WithoutCancel(t.Context()), down))
			caughtUp(t, primary, down)
		})
		testenv.WaitFor(t, 10*time.Second, "the primary no longer lists the stopped replica", func() bool {
			return slices.Contains(refresh(t, topo).Nodes[0].Offline, down.Addr)
		})
		start := time.Now()
		_, err := s.Acquire(t.Context(), "refused", claim(token(t), []byte("fp"), time.Minute))
		require.ErrorIs(t, err, idem.ErrUnreplicated)
		require.ErrorContains(t, err, "not connected")
		require.Less(t, time.Since(start), 400*time.Millisecond, "without waiting for WAIT's timeout")
		err = s.Complete(t.Context(), "before", tok, sampleRecord(), time.Hour)
		require.ErrorIs(t, err, idem.ErrUnreplicated)
		acq, err := one.Acquire(t.Context(), "before", claim(token(t), sampleRecord().Fingerprint, time.Minute))
		require.NoError(t, err)
		require.Equal(t, idem.StateCompleted, acq.State, "written all the same")
	})
	t.Run("a replica that left its primary is missed; one replica's word is not enough", func(t *testing.T) {
		refresh(t, topo) // the replica stopped above is back
		left := replicas[0]
		require.NoError(t, left.Client(t).Do(t.Context(), "replicaof", "no", "one").Err())
		// Last: the sentinels take it for a primary of its own now, and
		// would reconfigure it while a later step runs.
		_, err := s.Acquire(t.Context(), "flap", claim(token(t), []byte("fp"), time.Minute))
		require.ErrorIs(t, err, idem.ErrUnreplicated)
		require.ErrorContains(t, err, left.Addr, "names the replica that lacks it")

		// Giving the lock back is not done until every promotable replica
		// is past the deletion: the one that left could be promoted with
		// the lock, and hold the key with nobody to settle it.
		tok := token(t)
		_, err = s.Acquire(t.Context(), "flap-release", claim(tok, []byte("fp"), time.Minute))
		require.ErrorIs(t, err, idem.ErrUnreplicated)
		require.ErrorIs(t, s.Release(t.Context(), "flap-release", tok), idem.ErrUnreplicated, "deleted, not confirmed")
		require.ErrorIs(t, s.Release(t.Context(), "flap-release", tok), idem.ErrUnreplicated, "still not confirmed")
		n, err := primary.Client(t).Exists(t.Context(), s.RedisKey("flap-release")).Result()
		require.NoError(t, err)
		require.Zero(t, n, "the primary deleted it at once")

		acq, err := one.Acquire(t.Context(), "flap-one", claim(token(t), []byte("fp"), time.Minute))
		require.NoError(t, err, "WAIT 1: the other replica acknowledged")
		require.Equal(t, idem.StateAcquired, acq.State)
		n, err = left.Client(t).Exists(t.Context(), s.RedisKey("flap-one")).Result()
		require.NoError(t, err)
		require.Zero(t, n, "yet the replica a failover may promote lacks the lock")
	})
}

// TestStore_allReplicasPriorityZero: a replica every sentinel reports with
// replica-priority 0 is never promoted, so it need not acknowledge, and
// its being down refuses nothing.
func TestStore_allReplicasPriorityZero(t *testing.T) {
	t.Parallel()
	st := redistopo.NewSentinel(t)
	primary, err := st.Primary(t.Context())
	require.NoError(t, err)
	var never *redistopo.Server
	for _, d := range st.Data {
		if d != primary {
			never = d
		}
	}
	require.NoError(t, never.Client(t).ConfigSet(t.Context(), "replica-priority", "0").Err())
	// The sentinels read a replica's priority from its INFO, every 10 s.
	testenv.WaitFor(t, 25*time.Second, "every sentinel reports the priority", func() bool {
		for _, sn := range st.Sentinels {
			c := redis.NewSentinelClient(&redis.Options{Addr: sn.Addr})
			list, err := c.Replicas(t.Context(), redistopo.MasterName).Result()
			_ = c.Close()
			if err != nil || !slices.ContainsFunc(list, func(r map[string]string) bool {
				return net.JoinHostPort(r["ip"], r["port"]) == never.Addr && r["slave-priority"] == "0"
			}) {
				return false
			}
		}
		return true
	})
	topo := sentinelTopology(t, st)
	s := New(topo.Client(), Options{Topology: topo, AllReplicas: true, ReplicaTimeout: 500 * time.Millisecond})
	never.Stop()
	t.Cleanup(func() { require.NoError(t, st.Restart(context.WithoutCancel(t.Context()), never)) })
	testenv.WaitFor(t, 10*time.Second, "the primary no longer lists the stopped replica", func() bool {
		info, err := st.Client(t).Info(t.Context(), "replication").Result()
		return err == nil && !strings.Contains(info, "port="+portOf(never.Addr))
	})
	refresh(t, topo)
	tok := acquired(t, s, "k", time.Minute)
	require.NoError(t, s.Complete(t.Context(), "k", tok, sampleRecord(), time.Hour))
}

func portOf(addr string) string {
	_, p, _ := net.SplitHostPort(addr)
	if _, err := strconv.Atoi(p); err != nil {
		return ""
	}
	return p
}
