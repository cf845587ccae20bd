package redisstore

// The one way a script reaches Redis. Every Store method that runs a script
// calls exec, which picks the route:
//
//   - a write that waits for replicas (Store.waits): alone, on a plain
//     client of its key's primary, in one pipeline with WAIT (durable.go);
//   - with Batching: queued for the writers of its key's primary (outside a
//     cluster, the store's only ones), sent in one pipeline with the calls
//     queued beside it (batch.go);
//   - else alone, through the store's client (a cluster client finds the
//     key's primary, and follows redirects, itself).
//
// Whatever the route, what Redis answers instead of running the script is
// handled in one place, Store.again: NOSCRIPT (a restart, a failover or
// SCRIPT FLUSH emptied the script cache: sent again as EVAL, which runs and
// caches it), TRYAGAIN (a slot in migration) and MOVED or ASK (the slot
// moved since the map was loaded). go-redis's Script.Run falls back to
// EVAL only outside a pipeline, and a plain client of one node follows no
// redirect, so both are done here, the same way for every route. (The
// health check's store-reset markers, up to 16,384 at once, are not a
// Store call: marker_io.go sends them in one pipeline per primary, the
// script loaded first.)

import (
	"context"
	"errors"
	"time"

	"github.com/redis/go-redis/v9"
)

// call is one script with its keys and arguments.
type call struct {
	script *script
	keys   []string
	args   []any
}

// maxRedirects bounds the MOVED and ASK redirects one call follows, as
// go-redis's own default does.
const maxRedirects = 3

// TRYAGAIN backoff: 10, 20, 40, 80 ms, then the error is returned.
const (
	firstTryAgain = 10 * time.Millisecond
	maxTryAgain   = 80 * time.Millisecond
)

// exec runs sc. res.reply is its reply; s.unreplicated(res) says whether a
// write that waited for replicas reached them. err is a failure to run it,
// after which a cluster's slot map reloads (seen).
func (s *Store) exec(ctx context.Context, sc *script, keys []string, args ...any) (result, error) {
	c := call{script: sc, keys: keys, args: args}
	if s.waits(sc) {
		return s.execDurable(ctx, c)
	}
	r, err := s.route(ctx, keys[0])
	if err != nil {
		return result{}, s.seen(err)
	}
	cmd := s.send(ctx, &r, c, nil)
	if err := cmd.Err(); err != nil && !errors.Is(err, redis.Nil) {
		return result{}, s.seen(err)
	}
	return result{reply: cmd}, nil
}

// execInt is exec for the scripts that answer a number.
func (s *Store) execInt(ctx context.Context, sc *script, keys []string, args ...any) (int64, result, error) {
	res, err := s.exec(ctx, sc, keys, args...)
	if err != nil {
		return 0, res, err
	}
	n, err := res.reply.Int64()
	return n, res, err
}

// execSlice is exec for the scripts that answer a table.
func (s *Store) execSlice(ctx context.Context, sc *script, keys []string, args ...any) ([]any, result, error) {
	res, err := s.exec(ctx, sc, keys, args...)
	if err != nil {
		return nil, res, err
	}
	v, err := res.reply.Slice()
	return v, res, err
}

// route is where a call goes and what Redis's answers taught so far.
type route struct {
	node  Client   // the store's client, or a plain client of one primary
	batch *batcher // node's batching writers, for the first attempt; nil: alone
	// clientRoutes: node is the store's client, which on a cluster finds the
	// primary and follows redirects and TRYAGAIN itself.
	clientRoutes bool
	eval         bool // send EVAL: Redis answered NOSCRIPT
	asking       bool // send ASKING first: the slot is being imported there
	redirects    int
	backoff      time.Duration // before the next TRYAGAIN retry
}

// route is the first route of a call that does not wait for replicas: the
// batcher of its key's primary, or the client when not batching.
func (s *Store) route(ctx context.Context, key string) (route, error) {
	switch {
	case s.batch != nil:
		return route{node: s.client, batch: s.batch}, nil
	case s.perNode:
		n, err := s.cluster.MasterForKey(ctx, key)
		if err != nil {
			break // the cluster client finds it, or says why not
		}
		b := s.batcherFor(n)
		if b == nil {
			return route{}, ErrStoreClosed
		}
		return route{node: n, batch: b}, nil
	}
	return route{node: s.client, clientRoutes: true}, nil
}

// batcherFor is node's batcher, made on first use; nil once closed.
func (s *Store) batcherFor(node *redis.Client) *batcher {
	addr := node.Options().Addr
	s.nodesMu.Lock()
	defer s.nodesMu.Unlock()
	if s.nodeBatch == nil {
		return nil
	}
	b := s.nodeBatch[addr]
	if b == nil {
		b = newBatcher(node, s.batching)
		s.nodeBatch[addr] = b
	}
	return b
}

// send runs c on r until Redis runs it or answers what no retry fixes, and
// returns the script's reply. with, when set, adds commands after the
// script in the same pipeline (WAIT); it is called at each attempt, so
// what it keeps is the last attempt's.
func (s *Store) send(ctx context.Context, r *route, c call, with func(context.Context, redis.Pipeliner)) *redis.Cmd {
	var cmd *redis.Cmd
	if r.batch != nil {
		cmd = r.batch.do(ctx, c)
	} else {
		cmd = r.attempt(ctx, c, with)
	}
	for {
		again, err := s.again(ctx, r, c.keys[0], cmd.Err())
		switch {
		case err != nil:
			return errCmd(ctx, err)
		case !again:
			return cmd
		}
		cmd = r.attempt(ctx, c, with)
	}
}

// attempt sends c once to r.node: alone, or in one pipeline with ASKING
// before it and what with adds after it.
func (r *route) attempt(ctx context.Context, c call, with func(context.Context, redis.Pipeliner)) *redis.Cmd {
	if with == nil && !r.asking {
		return r.script(ctx, r.node, c)
	}
	pipe := r.node.Pipeline()
	if r.asking {
		pipe.Do(ctx, "asking")
	}
	cmd := r.script(ctx, pipe, c)
	if with != nil {
		with(ctx, pipe)
	}
	_, _ = pipe.Exec(ctx) // each command keeps its own result
	return cmd
}

// script queues or sends c on to as EVALSHA, or EVAL after a NOSCRIPT.
func (r *route) script(ctx context.Context, to redis.Scripter, c call) *redis.Cmd {
	if r.eval {
		return c.script.Eval(ctx, to, c.keys, c.args...)
	}
	return c.script.EvalSha(ctx, to, c.keys, c.args...)
}

// again says whether a call whose last attempt answered err is sent again,
// and sets r for it; err is the reason not to, when one arises.
func (s *Store) again(ctx context.Context, r *route, key string, err error) (bool, error) {
	switch {
	case err == nil || errors.Is(err, redis.Nil):
		return false, nil
	case !r.eval && redis.HasErrorPrefix(err, "NOSCRIPT"):
		r.eval = true
		return true, nil
	case r.clientRoutes || s.cluster == nil:
		return false, nil
	case redis.HasErrorPrefix(err, "TRYAGAIN"):
		// A slot in migration, its keys split between two nodes for the
		// moment it takes to move them: again from the start.
		r.backoff = max(r.backoff, firstTryAgain)
		if r.backoff > maxTryAgain || !sleep(ctx, r.backoff) {
			return false, nil
		}
		r.backoff *= 2
		n, _, err := s.primaryFor(ctx, key)
		if err != nil {
			return false, err
		}
		r.node, r.asking = n, false
		return true, nil
	}
	moved, ask, addr := redirection(err)
	if !moved && !ask || r.redirects >= maxRedirects {
		return false, nil
	}
	r.redirects++
	n, err := s.primaryAt(ctx, addr)
	if err != nil {
		return false, err
	}
	r.node, r.asking = n, ask
	return true, nil
}

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
