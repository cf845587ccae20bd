package redisstore

// Durable writes. Replication is asynchronous: a primary acknowledges a
// write before any replica has it, and a failover in that window loses it.
// With Options.MinReplicas > 0 the two writes a failover must not lose,
// taking a lock and storing a response, are followed by WAIT in the same
// pipeline on the same connection: one round trip says whether enough
// replicas have the write.
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

// durableResult is a script's reply and how many replicas acknowledged it.
type durableResult struct {
	reply *redis.Cmd
	acked int64
	// waitErr is WAIT's own failure (the script's reply is still valid):
	// the write happened, but nobody confirmed it reached a replica.
	waitErr error
}

// unreplicated reports whether the write needs an ErrUnreplicated.
func (s *Store) unreplicated(r durableResult) error {
	if r.waitErr != nil {
		return fmt.Errorf("%w: WAIT failed: %v", idem.ErrUnreplicated, r.waitErr)
	}
	if r.acked < int64(s.minReplicas) {
		return fmt.Errorf("%w: %d of %d replicas within %v", idem.ErrUnreplicated, r.acked, s.minReplicas, s.replicaTimeout)
	}
	return nil
}

// runDurable runs sc on the primary of keys[0] followed by WAIT, in one
// pipeline. A NOSCRIPT (a flushed cache, a promoted replica that never
// loaded the script) is sent again as EVAL, which runs and caches it; a
// MOVED or ASK is followed to the node it names. Other errors are
// returned, and on a cluster make the slot map reload, so the caller's
// next attempt goes to the new primary after a failover.
func (s *Store) runDurable(ctx context.Context, sc *redis.Script, keys []string, args ...any) (durableResult, error) {
	node, err := s.primaryFor(ctx, keys[0])
	if err != nil {
		return durableResult{}, err
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
		// WAIT is not in go-redis's Pipeliner; its reply is the number
		// of replicas that have every write this connection made.
		wait := pipe.Do(ctx, "wait", s.minReplicas, millis(s.replicaTimeout))
		_, _ = pipe.Exec(ctx) // each command keeps its own result
		err := cmd.Err()
		if err == nil || errors.Is(err, redis.Nil) {
			acked, werr := wait.Int64()
			return durableResult{reply: cmd, acked: acked, waitErr: werr}, nil
		}
		if !eval && redis.HasErrorPrefix(err, "NOSCRIPT") {
			eval = true
			continue
		}
		if redis.HasErrorPrefix(err, "TRYAGAIN") && backoff <= maxTryAgain && sleep(ctx, backoff) {
			// A slot in migration, its keys split between two nodes for
			// the moment it takes to move them: try again from the start.
			backoff *= 2
			if node, err = s.primaryFor(ctx, keys[0]); err != nil {
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

// primaryFor is the client that serves key: the store's client, or on a
// cluster a plain client of the primary of key's slot.
func (s *Store) primaryFor(ctx context.Context, key string) (pipeliner, error) {
	if s.cluster == nil {
		return s.client, nil
	}
	c, err := s.cluster.MasterForKey(ctx, key)
	if err != nil {
		return nil, err
	}
	return c, nil
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
