package redisstore

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
)

// Subscriber opens sharded Pub/Sub connections: a *redis.Client (also a
// Sentinel failover client). On a cluster the Watcher uses each primary's
// own client instead, since a shard channel can only be subscribed to on
// the node that serves its slot.
type Subscriber interface {
	SSubscribe(ctx context.Context, channels ...string) *redis.PubSub
}

// DefaultWatchRecheck is WatcherOptions.Recheck when it is not set.
const DefaultWatchRecheck = time.Second

// WatcherOptions tune a Watcher.
type WatcherOptions struct {
	// Recheck is how often every waiter is told to look again whether or
	// not a notice came: Pub/Sub may drop a message (a reconnect, a
	// failover, a slot moved away), and this bounds how long a lost one
	// can hold a waiter. Default DefaultWatchRecheck.
	Recheck time.Duration
}

// Watcher tells duplicates waiting for a key (--in-progress=wait) when to
// look at the key again: the moment the key is settled (the scripts that
// complete, release or abandon a record publish on its shard channel), the
// moment a subscription becomes active (a settlement before it was not
// heard), and every Recheck. One Pub/Sub connection per Redis primary
// carries the channels of every key waited on, and the prompts of all of a
// key's waiters come at the same moment, so a caller can serve them with
// one read per key (processor does), whatever the number of waiters.
type Watcher struct {
	sub     Subscriber
	store   *Store
	log     *slog.Logger
	ctx     context.Context // ends the goroutines
	recheck time.Duration

	mu      sync.Mutex
	started bool                     // the recheck goroutine runs
	conns   map[string]*redis.PubSub // primary address ("" outside a cluster) -> its connection
	chans   map[string]*watched      // channel -> its waiters
	wg      sync.WaitGroup           // every goroutine of the watcher
}

// watched is one key's channel in this process.
type watched struct {
	waiters map[chan time.Time]struct{}
	// ps is the connection the channel is subscribed on; nil while it is
	// not (Redis unsubscribed it when its slot moved): the recheck
	// subscribes it again.
	ps *redis.PubSub
	// notice is when the last settlement notice arrived, so a waiter who
	// registers just after it still hears of it.
	notice time.Time
}

// NewWatcher returns a Watcher for the store's keys. sub opens the Pub/Sub
// connection outside a cluster. Connections open with the first wait on
// them; ctx ends them and the recheck (Close waits for that).
func (s *Store) NewWatcher(ctx context.Context, sub Subscriber, log *slog.Logger, opts WatcherOptions) *Watcher {
	if opts.Recheck <= 0 {
		opts.Recheck = DefaultWatchRecheck
	}
	return &Watcher{sub: sub, store: s, log: log, ctx: ctx, recheck: opts.Recheck,
		conns: map[string]*redis.PubSub{}, chans: map[string]*watched{}}
}

// channel is key's shard channel, as the scripts name it.
func (w *Watcher) channel(key string) string {
	return w.store.RedisKey(key) + settledSuffix
}

// Watch registers a waiter for key. wake receives a prompt whenever the
// waiter should look at the key again: the time of the event, so a read
// begun after it is fresh enough (one pending prompt at most, the latest);
// stop ends the wait and must be called. since is when the caller last
// looked (before its store call began): a notice that arrived after it
// prompts at once.
func (w *Watcher) Watch(ctx context.Context, key string, since time.Time) (wake <-chan time.Time, stop func(), err error) {
	ch := w.channel(key)
	c := make(chan time.Time, 1)
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.ctx.Err() != nil {
		return nil, nil, fmt.Errorf("redisstore: watch: %w", w.ctx.Err())
	}
	if !w.started {
		w.started = true
		w.wg.Add(1)
		go w.rechecks()
	}
	st := w.chans[ch]
	if st == nil {
		st = &watched{waiters: map[chan time.Time]struct{}{}}
		ps, err := w.subscribeLocked(ctx, ch)
		if err != nil {
			return nil, nil, err
		}
		st.ps = ps
		w.chans[ch] = st
	}
	st.waiters[c] = struct{}{}
	if !st.notice.IsZero() && !st.notice.Before(since) {
		c <- st.notice
	}
	return c, func() { w.unwatch(ch, c) }, nil
}

// subscribeLocked subscribes ch on its primary's connection, opening it
// (and its receiver) on first use; w.mu is held. The subscription is
// active when Redis confirms it, which the receiver turns into a prompt.
func (w *Watcher) subscribeLocked(ctx context.Context, ch string) (*redis.PubSub, error) {
	addr, sub := "", w.sub
	if w.store.cluster != nil {
		c, err := w.store.cluster.MasterForKey(ctx, ch)
		if err != nil {
			return nil, fmt.Errorf("redisstore: watch: the primary of a key: %w", w.store.seen(err))
		}
		addr, sub = c.Options().Addr, c
	}
	if ps := w.conns[addr]; ps != nil {
		sctx, cancel := context.WithTimeout(ctx, time.Second)
		defer cancel()
		if err := ps.SSubscribe(sctx, ch); err != nil {
			return nil, fmt.Errorf("redisstore: watch: %w", err)
		}
		return ps, nil
	}
	// A new PubSub connects and subscribes in its receiver; a Redis
	// that is down is retried there, and the recheck covers the wait.
	ps := sub.SSubscribe(w.ctx, ch)
	w.conns[addr] = ps
	w.wg.Add(1)
	go w.receive(ps)
	return ps, nil
}

// unwatch drops one waiter, and the channel with its last one.
func (w *Watcher) unwatch(ch string, c chan time.Time) {
	w.mu.Lock()
	defer w.mu.Unlock()
	st := w.chans[ch]
	if st == nil {
		return
	}
	delete(st.waiters, c)
	if len(st.waiters) > 0 {
		return
	}
	delete(w.chans, ch)
	if st.ps != nil && w.ctx.Err() == nil {
		ctx, cancel := context.WithTimeout(w.ctx, time.Second)
		defer cancel()
		if err := st.ps.SUnsubscribe(ctx, ch); err != nil {
			// Harmless: a message for it finds no waiter.
			w.log.Debug("unsubscribing a settled key failed", "error", err)
		}
	}
}

// promptLocked tells every waiter of st to look at the key as it is after
// at; w.mu is held (it is the only sender). A prompt still pending is
// replaced: the waiter must read after the latest event.
func promptLocked(st *watched, at time.Time) {
	for c := range st.waiters {
		select {
		case <-c:
		default:
		}
		c <- at
	}
}

// receive turns one connection's messages into prompts until ctx ends.
func (w *Watcher) receive(ps *redis.PubSub) {
	defer w.wg.Done()
	msgs := ps.ChannelWithSubscriptions()
	for {
		select {
		case <-w.ctx.Done():
			_ = ps.Close()
			return
		case m, ok := <-msgs:
			if !ok {
				return
			}
			w.handle(ps, m)
		}
	}
}

// handle acts on one message of ps: a notice or a confirmed subscription
// prompts the channel's waiters; an unsubscription Redis made itself (the
// slot moved to another node) leaves the channel to the recheck.
func (w *Watcher) handle(ps *redis.PubSub, m any) {
	w.mu.Lock()
	defer w.mu.Unlock()
	switch m := m.(type) {
	case *redis.Message:
		if st := w.chans[m.Channel]; st != nil {
			st.notice = time.Now()
			promptLocked(st, st.notice)
		}
	case *redis.Subscription:
		st := w.chans[m.Channel]
		if st == nil || st.ps != ps {
			return // ours, for a channel no longer waited on
		}
		switch m.Kind {
		case "ssubscribe":
			promptLocked(st, time.Now())
		case "sunsubscribe":
			st.ps = nil
			promptLocked(st, time.Now())
		}
	}
}

// rechecks prompts every waiter each Recheck, and subscribes again the
// channels Redis unsubscribed.
func (w *Watcher) rechecks() {
	defer w.wg.Done()
	t := time.NewTicker(w.recheck)
	defer t.Stop()
	for {
		select {
		case <-w.ctx.Done():
			return
		case <-t.C:
		}
		w.mu.Lock()
		now := time.Now()
		for ch, st := range w.chans {
			promptLocked(st, now)
			if st.ps == nil {
				ps, err := w.subscribeLocked(w.ctx, ch)
				if err != nil {
					w.log.Debug("subscribing a waited-on key again failed", "error", err)
					continue
				}
				st.ps = ps
			}
		}
		w.mu.Unlock()
	}
}

// Close waits for the watcher's goroutines to stop; the context given to
// NewWatcher must have ended.
func (w *Watcher) Close() { w.wg.Wait() }
