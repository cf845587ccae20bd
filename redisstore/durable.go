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
// A script that wrote nothing is checked the same way, against an offset
// that may end with the REPLCONF GETACK of this connection's previous
// WAIT, which a replica's ack does not cover. Redis 7.0's WAIT asks for a
// fresh ack then; Valkey 8.1's answers at once (the connection has nothing
// unacknowledged), so until the replicas' next periodic ack (each second)
// such a call is reported unreplicated: the safe side, the caller retries
// (docs/redis-topologies.md, "Valkey").
//
// The pipeline runs on a plain client of the key's primary, never through
// a ClusterClient's own pipeline: go-redis v9.23 sends the keyless WAIT of
// such a pipeline to the primaries in turn, so two times in three it
// counts the replicas of a connection that wrote nothing and succeeds
// without proving anything (seen on a real cluster); and after a MOVED it
// re-sends only the redirected script, without its WAIT. A TxPipeline is
// no better: WAIT inside MULTI does not block and answers 0. So the whole
// pipeline is sent again by exec (exec.go) after a redirect or a NOSCRIPT.
//
// Which writes wait is the scripts' durability (scripts.go) read with the
// options in one place, Store.waits.

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"

	"github.com/redis/go-redis/v9"

	"github.com/idemproxy/idemproxy/internal/idem"
)

// result is a script's reply and, for a write that waited for replicas,
// how far it was replicated.
type result struct {
	reply *redis.Cmd
	// waited says the write waited for replicas; the fields below are
	// about that wait.
	waited bool
	acked  int64
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

// waits says whether sc's write waits for replicas: the one place the
// options that ask for it are read.
func (s *Store) waits(sc *script) bool {
	switch sc.durability {
	case durableWrite, durableGrant:
		return s.allReplicas || s.minReplicas > 0
	case durableDelete:
		return s.allReplicas
	}
	return false
}

// unreplicated reports whether the write needs an ErrUnreplicated.
func (s *Store) unreplicated(r result) error {
	switch {
	case !r.waited:
		return nil
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

// execDurable runs c on a plain client of its key's primary, followed in
// the same pipeline by WAIT (and with AllReplicas by INFO replication
// before and after WAIT). A write that could not be made durable (no view,
// a required replica offline) is refused when it grants a lock, else
// written alone and reported unreplicated.
func (s *Store) execDurable(ctx context.Context, c call) (result, error) {
	n, addr, err := s.primaryFor(ctx, c.keys[0])
	if err != nil {
		return result{}, err
	}
	pl, perr := s.planDurable(addr)
	if perr == nil {
		perr = pl.offlineErr()
	}
	r := route{node: n}
	if perr != nil {
		if c.script.durability == durableGrant {
			return result{}, fmt.Errorf("%w: %w: %w", idem.ErrNotTaken, idem.ErrUnreplicated, perr)
		}
		// Nothing to wait for that could succeed: write alone, and say so.
		cmd := s.send(ctx, &r, c, nil)
		if err := cmd.Err(); err != nil && !errors.Is(err, redis.Nil) {
			return result{}, s.seen(err)
		}
		return result{reply: cmd, waited: true, unplanned: perr}, nil
	}
	chk := replicaCheck{plan: pl, count: s.minReplicas, timeout: millis(s.replicaTimeout)}
	if pl != nil {
		chk.count = pl.wait
	}
	cmd := s.send(ctx, &r, c, chk.add)
	if err := cmd.Err(); err != nil && !errors.Is(err, redis.Nil) {
		return result{}, s.seen(err)
	}
	return chk.result(cmd, s.knownNodes), nil
}

// replicaCheck is what a durable write sends after its script, in the same
// pipeline (the file's header says why): with a plan (AllReplicas) INFO
// replication, WAIT and INFO replication again; without, WAIT alone.
type replicaCheck struct {
	plan    *plan // nil: WAIT's count decides
	count   int
	timeout int64 // ms
	// The replies of the last attempt.
	after, acked *redis.StringCmd
	wait         *redis.Cmd
}

// add queues the check on pipe, after the script.
func (w *replicaCheck) add(ctx context.Context, pipe redis.Pipeliner) {
	if w.plan != nil {
		w.after = pipe.Info(ctx, "replication")
	}
	// WAIT is not in go-redis's Pipeliner; its reply is the number of
	// replicas that have every write this connection made.
	w.wait = pipe.Do(ctx, "wait", w.count, w.timeout)
	if w.plan != nil {
		w.acked = pipe.Info(ctx, "replication")
	}
}

// result reads the check's replies; known lists the replicas the view
// knows (Store.knownNodes).
func (w *replicaCheck) result(reply *redis.Cmd, known func() []replicaNode) result {
	n, err := w.wait.Int64()
	res := result{reply: reply, waited: true, acked: n, waitErr: err}
	if w.plan == nil || err != nil {
		return res
	}
	if err := errors.Join(w.after.Err(), w.acked.Err()); err != nil {
		res.waitErr = err
		return res
	}
	res.missing = w.plan.missing(w.after.Val(), w.acked.Val(), known())
	return res
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
