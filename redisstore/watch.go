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
// process carries the channels of every key waited on, whatever the number
// of waiters. Pub/Sub may drop a message (a reconnect, a failover); the
// waiters' own slow re-check covers that.
type Watcher struct {
	sub   Subscriber
	store *Store
	log   *slog.Logger
	ctx    context.Context // ends the receiving goroutine

	mu      sync.Mutex
	ps      *redis.PubSub
	waiters map[string]map[chan struct{}]struct{} // channel -> waiting
	done    chan struct{}                         // closed when the receiver ends
}

// NewWatcher returns a Watcher for the store's keys. The Pub/Sub connection
// opens with the first wait; ctx ends it (Close waits for that).
func (s *Store) NewWatcher(ctx context.Context, sub Subscriber, log *slog.Logger) *Watcher {
	return &Watcher{sub: sub, store: s, log: log, ctx: ctx,
		waiters: map[string]map[chan struct{}]struct{}{}, done: make(chan struct{})}
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

// subscribeLocked adds ch to the Pub/Sub connection, opening it (and its
// receiver) on first use; w.mu is held.
func (w *Watcher) subscribeLocked(ctx context.Context, ch string) error {
	if w.ps == nil {
		w.ps = w.sub.SSubscribe(w.ctx, ch)
		go w.receive(w.ps)
		return nil
	}
	sctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	if err := w.ps.SSubscribe(sctx, ch); err != nil {
		return fmt.Errorf("redisstore: watch: %w", err)
	}
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
	if w.ps != nil && w.ctx.Err() == nil {
		ctx, cancel := context.WithTimeout(w.ctx, time.Second)
		defer cancel()
		if err := w.ps.SUnsubscribe(ctx, ch); err != nil {
			// Harmless: a message for it finds no waiter.
			w.log.Debug("unsubscribing a settled key failed", "error", err)
		}
	}
}

// receive hands each message to the key's waiters until ctx ends.
func (w *Watcher) receive(ps *redis.PubSub) {
	defer close(w.done)
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

// Close waits for the receiver to stop; the context given to NewWatcher
// must have ended.
func (w *Watcher) Close() {
	w.mu.Lock()
	started := w.ps != nil
	w.mu.Unlock()
	if started {
		<-w.done
	}
}
