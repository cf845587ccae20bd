package redisstore

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
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

// clusterKeys returns n keys whose records cover every primary of the
// cluster, and which primary serves each.
func clusterKeys(t *testing.T, s *Store, cl *redistopo.Cluster, n int) map[string]string {
	t.Helper()
	keys := map[string]string{}
	for i := range n {
		k := fmt.Sprintf("key-%d", i)
		p, err := cl.PrimaryForKey(t.Context(), s.RedisKey(k))
		require.NoError(t, err)
		keys[k] = p.Addr
	}
	return keys
}

// TestStore_cluster runs the store on a real Redis Cluster (3 primaries, 3
// replicas), without and with durable writes: every script keeps its keys
// in one slot (no CROSSSLOT, the fence counter included), keys spread over
// every primary complete and replay, a listing walks every primary, and
// operators inspect and delete by key or id.
func TestStore_cluster(t *testing.T) {
	t.Parallel()
	cl := redistopo.NewCluster(t)
	cc := cl.Client(t)
	for _, replicas := range []int{0, 1} {
		t.Run(fmt.Sprintf("min replicas %d", replicas), func(t *testing.T) {
			s := New(cc, Options{Prefix: fmt.Sprintf("c%d:", replicas), MinReplicas: replicas, ReplicaTimeout: time.Second})
			require.NotNil(t, s.cluster, "a cluster client is used per primary")
			keys := clusterKeys(t, s, cl, 30)
			primaries := map[string]bool{}
			for k, addr := range keys {
				primaries[addr] = true
				tok := acquired(t, s, k, time.Minute)
				require.NoError(t, s.Complete(t.Context(), k, tok, sampleRecord(), time.Hour), k)
				acq, err := s.Acquire(t.Context(), k, claim(token(t), sampleRecord().Fingerprint, time.Minute))
				require.NoError(t, err)
				require.Equal(t, idem.StateCompleted, acq.State)
				require.Equal(t, sampleRecord().Body, acq.Record.Body, "replayed byte for byte")
				info, err := s.Inspect(t.Context(), k)
				require.NoError(t, err)
				require.EqualValues(t, 1, info.LastFence, "the fence counter shares the record's slot")
			}
			require.Len(t, primaries, 3, "the keys cover every primary")
			for _, k := range []string{"held-1", "held-2", "held-3", "held-4"} {
				acquired(t, s, k, time.Minute)
			}

			seen, pages := map[string]string{}, 0
			opts := ListOptions{Limit: 5}
			for {
				pages++
				require.Less(t, pages, 100)
				page, err := s.List(t.Context(), opts)
				require.NoError(t, err)
				for _, k := range page.Keys {
					seen[k.ID] = k.State
				}
				if page.Cursor == "0" {
					break
				}
				require.Contains(t, page.Cursor, "@", "a cluster cursor names its primary")
				opts.Cursor = page.Cursor
			}
			require.Len(t, seen, 34, "every record on every primary is listed")
			require.Equal(t, "in_progress", seen[s.id(s.RedisKey("held-3"))])

			deleted, err := s.DeleteID(t.Context(), s.id(s.RedisKey("held-3")))
			require.NoError(t, err)
			require.True(t, deleted)
			deleted, err = s.Delete(t.Context(), "held-4")
			require.NoError(t, err)
			require.True(t, deleted)
			info, err := s.Inspect(t.Context(), "held-4")
			require.NoError(t, err)
			require.False(t, info.Exists)
			_, err = s.List(t.Context(), ListOptions{Cursor: "12"})
			require.ErrorIs(t, err, ErrBadCursor, "a standalone cursor on a cluster")
		})
	}

	t.Run("replay tokens issued by acquires are taken on every primary", func(t *testing.T) {
		for _, replicas := range []int{0, 1} {
			s := New(cc, Options{Prefix: fmt.Sprintf("replay%d:", replicas), MinReplicas: replicas, ReplicaTimeout: time.Second})
			for k := range clusterKeys(t, s, cl, 12) {
				want := completeWithTrailers(t, s, k)
				acq, err := s.Acquire(t.Context(), k, askingClaim(t, false))
				require.NoError(t, err, "the token key shares the record's slot: no CROSSSLOT")
				require.Equal(t, idem.StateCompleted, acq.State)
				rec, err := s.TakeReplay(t.Context(), acq.ReplayToken)
				require.NoError(t, err, k)
				require.Equal(t, want.TrailerHeaders, rec.TrailerHeaders)
			}
		}
	})

	t.Run("each WAIT runs on the primary that ran its script", func(t *testing.T) {
		s := New(cc, Options{Prefix: "wait:", MinReplicas: 1, ReplicaTimeout: time.Second})
		for _, n := range cl.Running() {
			require.NoError(t, n.Client(t).ConfigResetStat(t.Context()).Err())
		}
		for k := range clusterKeys(t, s, cl, 30) {
			tok := acquired(t, s, k, time.Minute)
			require.NoError(t, s.Complete(t.Context(), k, tok, sampleRecord(), time.Hour))
		}
		total := 0
		for _, n := range cl.Running() {
			stats := commandCalls(t, n.Client(t))
			require.Equal(t, stats["evalsha"]+stats["eval"], stats["wait"], "node %s", n.Addr)
			total += stats["wait"]
		}
		require.Equal(t, 60, total, "one WAIT per acquire and per completion")
	})

	t.Run("waiters on every primary hear of their key's settlement", func(t *testing.T) {
		s := New(cc, Options{Prefix: "watch:"})
		ctx, cancel := context.WithCancel(t.Context())
		w := s.NewWatcher(ctx, cc, slog.New(slog.NewTextHandler(io.Discard, nil)), WatcherOptions{Recheck: time.Hour})
		defer func() { cancel(); w.Close() }()
		keys := clusterKeys(t, s, cl, 12)
		type watched struct {
			tok     string
			settled <-chan time.Time
		}
		all := map[string]watched{}
		for k := range keys {
			tok := acquired(t, s, k, time.Minute)
			waitedOn(t, s, k)
			settled, stop, err := w.Watch(t.Context(), k, time.Now())
			require.NoError(t, err)
			defer stop()
			require.True(t, promptedWithin(settled, 5*time.Second),
				"the subscription is confirmed: a shard channel is subscribed on its slot's primary (elsewhere MOVED)")
			all[k] = watched{tok, settled}
		}
		w.mu.Lock()
		conns := len(w.conns)
		w.mu.Unlock()
		require.Equal(t, 3, conns, "one Pub/Sub connection per primary")
		for k, addr := range keys {
			ch := s.RedisKey(k) + settledSuffix
			node := redis.NewClient(&redis.Options{Addr: addr})
			testenv.WaitFor(t, 5*time.Second, "the subscription on "+addr, func() bool {
				n, err := node.PubSubShardNumSub(t.Context(), ch).Result()
				return err == nil && n[ch] == 1
			})
			require.NoError(t, node.Close())
		}
		for k, x := range all {
			require.NoError(t, s.Complete(t.Context(), k, x.tok, sampleRecord(), time.Hour))
			require.True(t, promptedWithin(x.settled, 5*time.Second), "no notice for %s on %s", k, keys[k])
		}
	})

	t.Run("durable writes after SCRIPT FLUSH on every node", func(t *testing.T) {
		s := New(cc, Options{Prefix: "flush:", MinReplicas: 1, ReplicaTimeout: time.Second})
		for _, n := range cl.Running() {
			require.NoError(t, n.Client(t).ScriptFlush(t.Context()).Err())
		}
		for k := range clusterKeys(t, s, cl, 10) {
			tok := acquired(t, s, k, time.Minute)
			require.NoError(t, s.Complete(t.Context(), k, tok, sampleRecord(), time.Hour))
		}
	})
}

// TestStore_clusterRedirects moves slots under a cluster client whose slot
// map is stale: the durable writes follow MOVED to the new primary, and
// ASK while a slot is being migrated; batched calls follow MOVED too.
func TestStore_clusterRedirects(t *testing.T) {
	t.Parallel()
	cl := redistopo.NewCluster(t)
	cc := cl.Client(t)
	ctx := t.Context()
	s := New(cc, Options{Prefix: "moved:", MinReplicas: 1, ReplicaTimeout: time.Second})
	bc := cl.Client(t)
	batched := New(bc, Options{Prefix: "moved-batched:", Batching: Batching{Writers: 1}})
	t.Cleanup(batched.Close)
	// Load the slot maps, then change the cluster behind the clients' backs.
	acquired(t, s, "warm", time.Minute)
	acquired(t, batched, "warm", time.Minute)

	t.Run("MOVED after a reshard", func(t *testing.T) {
		primaries, err := cl.Primaries(ctx)
		require.NoError(t, err)
		from, to := primaries[0], primaries[1]
		require.NoError(t, cl.Reshard(ctx, from, to, 50))
		for _, st := range []struct {
			s  *Store
			cc *redis.ClusterClient
		}{{s, cc}, {batched, bc}} {
			// Keys in the moved slots: the client still sends them to from.
			moved := 0
			for i := 0; moved < 5 && i < 5000; i++ {
				k := fmt.Sprintf("m-%d", i)
				p, err := cl.PrimaryForKey(ctx, st.s.RedisKey(k))
				require.NoError(t, err)
				c, err := st.cc.MasterForKey(ctx, st.s.RedisKey(k))
				require.NoError(t, err)
				if p.Addr != to.Addr || c.Options().Addr != from.Addr {
					continue
				}
				moved++
				tok := acquired(t, st.s, k, time.Minute)
				require.NoError(t, st.s.Complete(ctx, k, tok, sampleRecord(), time.Hour))
				acq, err := st.s.Peek(ctx, k)
				require.NoError(t, err)
				require.Equal(t, idem.StateCompleted, acq.State)
			}
			require.Positive(t, moved, "some keys were sent to the old primary and redirected")
		}
	})

	t.Run("ASK while a slot migrates", func(t *testing.T) {
		k := "ask-key"
		tok := acquired(t, s, k, time.Minute)
		src, err := cl.PrimaryForKey(ctx, s.RedisKey(k))
		require.NoError(t, err)
		primaries, err := cl.Primaries(ctx)
		require.NoError(t, err)
		dst := primaries[0]
		if dst.Addr == src.Addr {
			dst = primaries[1]
		}
		slot := redisKeySlot(t, src, s.RedisKey(k))
		srcID, err := cl.NodeID(ctx, src)
		require.NoError(t, err)
		dstID, err := cl.NodeID(ctx, dst)
		require.NoError(t, err)
		setSlot := func(c *redis.Client, args ...any) {
			require.NoError(t, c.Do(ctx, append([]any{"cluster", "setslot", slot}, args...)...).Err())
		}
		setSlot(dst.Client(t), "importing", srcID)
		setSlot(src.Client(t), "migrating", dstID)
		host, port, err := net.SplitHostPort(dst.Addr)
		require.NoError(t, err)
		require.NoError(t, src.Client(t).Migrate(ctx, host, port, s.RedisKey(k), 0, 5*time.Second).Err())

		// The record moved, its slot not yet: the source answers ASK.
		require.NoError(t, s.Complete(ctx, k, tok, sampleRecord(), time.Hour))

		// Reading the record and its fence, split over two nodes, is
		// refused until the slot has moved whole: a transient error.
		_, err = s.Acquire(ctx, k, claim(token(t), sampleRecord().Fingerprint, time.Minute))
		require.ErrorContains(t, err, "TRYAGAIN")
		require.NotErrorIs(t, err, idem.ErrLeaseLost)

		require.NoError(t, src.Client(t).Migrate(ctx, host, port, s.RedisKey(k)+fenceSuffix, 0, 5*time.Second).Err())
		for _, c := range []*redis.Client{dst.Client(t), src.Client(t)} {
			setSlot(c, "node", dstID)
		}
		// The client still sends the slot to src, which now answers MOVED.
		acq, err := s.Acquire(ctx, k, claim(token(t), sampleRecord().Fingerprint, time.Minute))
		require.NoError(t, err)
		require.Equal(t, idem.StateCompleted, acq.State)
	})
}

func redisKeySlot(t *testing.T, srv *redistopo.Server, key string) int64 {
	t.Helper()
	n, err := srv.Client(t).ClusterKeySlot(context.WithoutCancel(t.Context()), key).Result()
	require.NoError(t, err)
	return n
}

// commandCalls reads INFO commandstats: calls per command.
func commandCalls(t *testing.T, c *redis.Client) map[string]int {
	t.Helper()
	info, err := c.Info(t.Context(), "commandstats").Result()
	require.NoError(t, err)
	calls := map[string]int{}
	for _, line := range strings.Split(info, "\n") {
		name, rest, ok := strings.Cut(strings.TrimSpace(line), ":calls=")
		if !ok {
			continue
		}
		n, _ := strconv.Atoi(strings.SplitN(rest, ",", 2)[0])
		calls[strings.TrimPrefix(name, "cmdstat_")] = n
	}
	return calls
}
