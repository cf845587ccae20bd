package redisstore

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
)

// Subscriber opens sharded Pub/Sub connections: a *redis.Client or a
// *redis.ClusterClient (which routes a shard channel to its slot's node).
type Subscriber interface {
	SSubscribe(ctx context.Context, channels ...string) *redis.PubSub
}

// Watcher tells duplicates waiting for a key (--in-progress=wait) the
// moment the key is settled: the scripts that complete, release or abandon
// a record publish on its shard channel, and one Pub/Sub connection per
// Redis primary carries the channels of every key waited on, whatever the
// number of waiters. Pub/Sub may drop a message (a reconnect, a failover,
// a slot moved away, which unsubscribes its channels); the waiters' own
// slow re-check covers that.
type Watcher struct {
	sub   Subscriber
	store *Store
	log   *slog.Logger
	ctx   context.Context // ends the receiving goroutines

	mu      sync.Mutex
	nodes   map[string]*watchConn                 // primary address ("" outside a cluster) -> its connection
	waiters map[string]map[chan struct{}]struct{} // channel -> waiting
	via     map[string]*watchConn                 // channel -> the connection it is subscribed on
	wg      sync.WaitGroup                        // the receivers
}

// watchConn is one primary's sharded Pub/Sub connection.
type watchConn struct{ ps *redis.PubSub }

// NewWatcher returns a Watcher for the store's keys. sub opens the Pub/Sub
// connections outside a cluster; on a cluster each primary's own client
// does, since a shard channel can only be subscribed to on its slot's node.
// Connections open with the first wait on them; ctx ends them (Close waits
// for that).
func (s *Store) NewWatcher(ctx context.Context, sub Subscriber, log *slog.Logger) *Watcher {
	return &Watcher{sub: sub, store: s, log: log, ctx: ctx,
		nodes: map[string]*watchConn{}, waiters: map[string]map[chan struct{}]struct{}{}, via: map[string]*watchConn{}}
}

// channel is key's shard channel, as the scripts name it.
func (w *Watcher) channel(key string) string {
	return w.store.RedisKey(key) + settledSuffix
}

// Watch registers a waiter for key. settled receives (at most once per
// message) when the key was completed, released or abandoned; stop ends
// the wait and must be called. fresh says the channel had no waiter in
// this process yet: a settlement between the caller's last look and the
// subscription may have been missed, so the caller looks once more.
func (w *Watcher) Watch(ctx context.Context, key string) (settled <-chan struct{}, fresh bool, stop func(), err error) {
	ch := w.channel(key)
	c := make(chan struct{}, 1)
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.ctx.Err() != nil {
		return nil, false, nil, fmt.Errorf("redisstore: watch: %w", w.ctx.Err())
	}
	set, known := w.waiters[ch]
	if !known {
		if err := w.subscribeLocked(ctx, ch); err != nil {
			return nil, false, nil, err
		}
		set = map[chan struct{}]struct{}{}
		w.waiters[ch] = set
	}
	set[c] = struct{}{}
	return c, !known, func() { w.unwatch(ch, c) }, nil
}

// subscribeLocked adds ch to its primary's Pub/Sub connection, opening it
// (and its receiver) on first use; w.mu is held.
func (w *Watcher) subscribeLocked(ctx context.Context, ch string) error {
	addr, sub := "", w.sub
	if w.store.cluster != nil {
		c, err := w.store.cluster.MasterForKey(ctx, ch)
		if err != nil {
			return fmt.Errorf("redisstore: watch: the primary of a key: %w", w.store.seen(err))
		}
		addr, sub = c.Options().Addr, c
	}
	conn := w.nodes[addr]
	if conn == nil {
		// SSubscribe on a new PubSub only queues the channel; the
		// connection and the subscription are made by its receiver.
		conn = &watchConn{ps: sub.SSubscribe(w.ctx, ch)}
		w.nodes[addr] = conn
		w.via[ch] = conn
		w.wg.Add(1)
		go w.receive(conn.ps)
		return nil
	}
	sctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	if err := conn.ps.SSubscribe(sctx, ch); err != nil {
		return fmt.Errorf("redisstore: watch: %w", err)
	}
	w.via[ch] = conn
	return nil
}

// unwatch drops one waiter, and the channel with its last one.
func (w *Watcher) unwatch(ch string, c chan struct{}) {
	w.mu.Lock()
	defer w.mu.Unlock()
	set := w.waiters[ch]
	delete(set, c)
	if len(set) > 0 || set == nil {
		return
	}
	delete(w.waiters, ch)
	conn := w.via[ch]
	delete(w.via, ch)
	if conn != nil && w.ctx.Err() == nil {
		ctx, cancel := context.WithTimeout(w.ctx, time.Second)
		defer cancel()
		if err := conn.ps.SUnsubscribe(ctx, ch); err != nil {
			// Harmless: a message for it finds no waiter.
			w.log.Debug("unsubscribing a settled key failed", "error", err)
		}
	}
}

// receive hands each message to the key's waiters until ctx ends.
func (w *Watcher) receive(ps *redis.PubSub) {
	defer w.wg.Done()
	msgs := ps.Channel()
	for {
		select {
		case <-w.ctx.Done():
			_ = ps.Close()
			return
		case m, ok := <-msgs:
			if !ok {
				return
			}
			w.mu.Lock()
			for c := range w.waiters[m.Channel] {
				select {
				case c <- struct{}{}:
				default: // already told
				}
			}
			w.mu.Unlock()
		}
	}
}

// Close waits for the receivers to stop; the context given to NewWatcher
// must have ended.
func (w *Watcher) Close() { w.wg.Wait() }
