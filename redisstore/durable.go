package redisstore

// Durable writes. Replication is asynchronous: a primary acknowledges a
// write before any replica has it, and a failover in that window loses it.
// The two writes a failover must not lose, taking a lock and storing a
// response, are followed by WAIT in the same pipeline on the same
// connection: one round trip says whether the write reached the replicas.
//
// With Options.AllReplicas (the default where Redis fails over) the write
// must reach every replica a failover could promote (view.go): the
// pipeline is the script, INFO replication (the primary's replication
// offset just after the script: nothing of another client runs between
// two commands of one pipeline read together, and if something did, the
// offset is only larger, which errs on the safe side), WAIT for every
// replica the primary had online, and INFO replication again (the offset
// each replica acknowledged). Each required replica must have
// acknowledged the first offset. With Options.MinReplicas alone, WAIT's
// count of any replicas decides (weaker: the replica that has the write
// may not be the one promoted).
//
// The pipeline runs on a plain client of the key's primary, never through
// a ClusterClient's own pipeline: go-redis v9.23 sends the keyless WAIT of
// such a pipeline to the primaries in turn, so two times in three it
// counts the replicas of a connection that wrote nothing and succeeds
// without proving anything (seen on a real cluster); and after a MOVED it
// re-sends only the redirected script, without its WAIT. A TxPipeline is
// no better: WAIT inside MULTI does not block and answers 0. So redirects
// are followed here, and NOSCRIPT too: Script.Run's EVALSHA-to-EVAL
// fallback does not happen inside a pipeline.

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/idemproxy/idemproxy/internal/idem"
)

// Cluster is what a Redis Cluster client offers beyond Client: the primary
// of a key's slot, every primary, and a reload of the slot map.
// *redis.ClusterClient satisfies it; New detects it.
type Cluster interface {
	MasterForKey(ctx context.Context, key string) (*redis.Client, error)
	ForEachMaster(ctx context.Context, fn func(ctx context.Context, c *redis.Client) error) error
	ReloadState(ctx context.Context)
}

// maxRedirects bounds the MOVED and ASK redirects one durable write
// follows, as go-redis's own default does.
const maxRedirects = 3

// TRYAGAIN backoff: 10, 20, 40, 80 ms, then the error is returned.
const (
	firstTryAgain = 10 * time.Millisecond
	maxTryAgain   = 80 * time.Millisecond
)

// sleep waits d unless ctx ends first; it reports whether it waited.
func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

// pipeliner is a client that pipelines on one connection.
type pipeliner interface {
	Pipeline() redis.Pipeliner
}

// durableResult is a script's reply and how far it was replicated.
type durableResult struct {
	reply *redis.Cmd
	acked int64
	// waitErr is WAIT's own failure (the script's reply is still valid):
	// the write happened, but nobody confirmed it reached a replica.
	waitErr error
	// unplanned says why the write had no replicas to wait for (no view,
	// or a required replica offline): it was written, not replicated.
	unplanned error
	// missing are the required replicas that did not acknowledge it
	// (AllReplicas).
	missing []string
}

// unreplicated reports whether the write needs an ErrUnreplicated.
func (s *Store) unreplicated(r durableResult) error {
	switch {
	case r.unplanned != nil:
		return fmt.Errorf("%w: %v", idem.ErrUnreplicated, r.unplanned)
	case r.waitErr != nil:
		return fmt.Errorf("%w: WAIT failed: %v", idem.ErrUnreplicated, r.waitErr)
	case s.allReplicas && len(r.missing) > 0:
		if s.topo != nil {
			s.topo.askRefresh()
		}
		return fmt.Errorf("%w: not acknowledged within %v by the replicas a failover could promote: %s",
			idem.ErrUnreplicated, s.replicaTimeout, strings.Join(r.missing, ", "))
	case !s.allReplicas && r.acked < int64(s.minReplicas):
		return fmt.Errorf("%w: %d of %d replicas within %v", idem.ErrUnreplicated, r.acked, s.minReplicas, s.replicaTimeout)
	}
	return nil
}

// planDurable is what a durable write to the primary at addr must reach.
// A nil plan with a nil error means WAIT's count decides (MinReplicas).
func (s *Store) planDurable(addr string) (*plan, error) {
	if !s.allReplicas {
		return nil, nil
	}
	if s.topo == nil {
		return nil, fmt.Errorf("%w: no topology given", ErrNoView)
	}
	v := s.topo.view.Load()
	if v == nil {
		return nil, fmt.Errorf("%w: not read yet", ErrNoView)
	}
	p, err := v.planFor(s.topo.mode, addr)
	if err != nil {
		s.topo.askRefresh()
		return nil, err
	}
	return &p, nil
}

// canPlan is nil when a durable write to key's primary may succeed: the
// view knows its replicas, and the ones that must acknowledge it were
// online at the last refresh. Else the error says why, as
// idem.ErrUnreplicated.
func (s *Store) canPlan(ctx context.Context, key string) error {
	if !s.allReplicas {
		return nil
	}
	_, addr, err := s.primaryFor(ctx, key)
	if err != nil {
		return nil // the write itself will fail, and say why
	}
	pl, err := s.planDurable(addr)
	if err == nil {
		err = pl.offlineErr()
	}
	if err != nil {
		return fmt.Errorf("%w: %w", idem.ErrUnreplicated, err)
	}
	return nil
}

// offline is why a plan cannot succeed before anything is written: a
// required replica was not online at the last refresh.
func (p *plan) offlineErr() error {
	if p == nil || len(p.offline) == 0 {
		return nil
	}
	return fmt.Errorf("replicas a failover could promote are not connected to the primary: %s", strings.Join(p.offline, ", "))
}

// missing lists the required replicas whose acknowledged offset is below
// the primary's offset right after the write. Any other replica the
// primary lists must have it too, unless known never to be promoted: the
// view may be older than a new replica, or a replica migrated between
// cluster shards.
func (p *plan) missing(after, acked string, known []replicaNode) []string {
	a, b := parseInfo(after), parseInfo(acked)
	if a["role"] != "master" || b["role"] != "master" {
		return []string{"(the node written to is no primary)"}
	}
	offset, err := strconv.ParseInt(a["master_repl_offset"], 10, 64)
	if err != nil {
		return []string{"(no master_repl_offset)"}
	}
	is := func(nodes []replicaNode, addr string, promotable bool) bool {
		return slices.ContainsFunc(nodes, func(n replicaNode) bool {
			return n.promotable == promotable && slices.Contains(n.aliases, addr)
		})
	}
	have := map[string]bool{}
	var out []string
	for _, r := range replicaLines(b) {
		switch {
		case r.offset >= offset:
			have[r.addr] = true
		case is(p.required, r.addr, true), is(known, r.addr, false):
			// required: named below; unpromotable: excused
		default:
			out = append(out, r.addr)
		}
	}
	for _, n := range p.required {
		if !n.in(have) {
			out = append(out, n.name)
		}
	}
	return out
}

// runDurable runs sc on the primary of keys[0] followed by WAIT, in one
// pipeline. A NOSCRIPT (a flushed cache, a promoted replica that never
// loaded the script) is sent again as EVAL, which runs and caches it; a
// MOVED or ASK is followed to the node it names. Other errors are
// returned, and on a cluster make the slot map reload, so the caller's
// next attempt goes to the new primary after a failover.
func (s *Store) runDurable(ctx context.Context, sc *redis.Script, keys []string, args ...any) (durableResult, error) {
	node, addr, err := s.primaryFor(ctx, keys[0])
	if err != nil {
		return durableResult{}, err
	}
	pl, perr := s.planDurable(addr)
	if perr == nil {
		perr = pl.offlineErr()
	}
	if perr != nil {
		// Nothing to wait for that could succeed: write alone, and say so.
		reply := s.runOn(ctx, node, sc, keys, args)
		if err := reply.Err(); err != nil && !errors.Is(err, redis.Nil) {
			return durableResult{}, s.seen(err)
		}
		return durableResult{reply: reply, unplanned: perr}, nil
	}
	count := s.minReplicas
	if pl != nil {
		count = pl.wait
	}
	eval, asking := false, false
	backoff := firstTryAgain
	for redirects := 0; ; {
		pipe := node.Pipeline()
		if asking {
			pipe.Do(ctx, "asking")
		}
		var cmd *redis.Cmd
		if eval {
			cmd = sc.Eval(ctx, pipe, keys, args...)
		} else {
			cmd = sc.EvalSha(ctx, pipe, keys, args...)
		}
		var after, acked *redis.StringCmd
		if pl != nil {
			after = pipe.Info(ctx, "replication")
		}
		// WAIT is not in go-redis's Pipeliner; its reply is the number
		// of replicas that have every write this connection made.
		wait := pipe.Do(ctx, "wait", count, millis(s.replicaTimeout))
		if pl != nil {
			acked = pipe.Info(ctx, "replication")
		}
		_, _ = pipe.Exec(ctx) // each command keeps its own result
		err := cmd.Err()
		if err == nil || errors.Is(err, redis.Nil) {
			n, werr := wait.Int64()
			res := durableResult{reply: cmd, acked: n, waitErr: werr}
			if pl != nil && werr == nil {
				if werr = errors.Join(after.Err(), acked.Err()); werr != nil {
					res.waitErr = werr
				} else {
					res.missing = pl.missing(after.Val(), acked.Val(), s.knownNodes())
				}
			}
			return res, nil
		}
		if !eval && redis.HasErrorPrefix(err, "NOSCRIPT") {
			eval = true
			continue
		}
		if redis.HasErrorPrefix(err, "TRYAGAIN") && backoff <= maxTryAgain && sleep(ctx, backoff) {
			// A slot in migration, its keys split between two nodes for
			// the moment it takes to move them: try again from the start.
			backoff *= 2
			if node, _, err = s.primaryFor(ctx, keys[0]); err != nil {
				return durableResult{}, err
			}
			asking = false
			continue
		}
		moved, ask, addr := redirection(err)
		if (moved || ask) && s.cluster != nil && redirects < maxRedirects {
			redirects++
			if node, err = s.primaryAt(ctx, addr); err != nil {
				return durableResult{}, err
			}
			asking = ask
			continue
		}
		return durableResult{}, s.seen(err)
	}
}

// seen passes err on; on a cluster a failed call also makes the slot map
// reload in the background (go-redis only does so on MOVED and READONLY),
// so after a failover the next attempt goes to the new primary, not the
// dead one.
func (s *Store) seen(err error) error {
	if err != nil && s.cluster != nil && !errors.Is(err, redis.Nil) {
		s.cluster.ReloadState(context.Background())
	}
	return err
}

// primaryFor is the client that serves key and the primary's address:
// the store's client and "", or on a cluster a plain client of the
// primary of key's slot and its address.
func (s *Store) primaryFor(ctx context.Context, key string) (pipeliner, string, error) {
	if s.cluster == nil {
		return s.client, "", nil
	}
	c, err := s.cluster.MasterForKey(ctx, key)
	if err != nil {
		return nil, "", err
	}
	return c, c.Options().Addr, nil
}

// runOn runs a script on node alone (EVALSHA, then EVAL on NOSCRIPT).
func (s *Store) runOn(ctx context.Context, node pipeliner, sc *redis.Script, keys []string, args []any) *redis.Cmd {
	if c, ok := node.(redis.Scripter); ok {
		return sc.Run(ctx, c, keys, args...)
	}
	return sc.Run(ctx, s.client, keys, args...)
}

// knownNodes are every replica node the view knows, promotable or not:
// a replica the primary lists that is not among them is new.
func (s *Store) knownNodes() []replicaNode {
	if s.topo == nil {
		return nil
	}
	v := s.topo.view.Load()
	if v == nil {
		return nil
	}
	known := slices.Clone(v.nodes)
	for _, shard := range v.shards {
		known = append(known, shard...)
	}
	return known
}

// primaryAt returns the client of the primary at addr after reloading the
// slot map (ForEachMaster reloads it before it visits the primaries), so
// a MOVED also updates where later calls go.
func (s *Store) primaryAt(ctx context.Context, addr string) (*redis.Client, error) {
	var (
		mu    sync.Mutex
		found *redis.Client
	)
	err := s.cluster.ForEachMaster(ctx, func(_ context.Context, c *redis.Client) error {
		if c.Options().Addr == addr {
			mu.Lock()
			found = c
			mu.Unlock()
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	if found == nil {
		return nil, fmt.Errorf("redirected to %s, which the cluster does not list as a primary yet", addr)
	}
	return found, nil
}

// redirection parses a "MOVED slot host:port" or "ASK slot host:port" error.
func redirection(err error) (moved, ask bool, addr string) {
	var rerr redis.Error
	if !errors.As(err, &rerr) {
		return false, false, ""
	}
	f := strings.Fields(rerr.Error())
	if len(f) != 3 {
		return false, false, ""
	}
	switch f[0] {
	case "MOVED":
		return true, false, f[2]
	case "ASK":
		return false, true, f[2]
	}
	return false, false, ""
}
