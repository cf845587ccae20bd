package processor

// Waiting duplicates (--in-progress=wait): a retry that arrives while the
// first request with its key still runs is held, not refused, and gets the
// first request's answer the moment it exists, exactly as a later retry
// would: the replay, or, when the first request gave its key back, its own
// run. Envoy must not time the held message out, so idemproxy first
// extends Envoy's message timer (override_message_timeout, honoured once
// per message and only up to the filter's max_message_timeout).

import (
	"bytes"
	"context"
	"sync"
	"time"

	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"golang.org/x/sync/singleflight"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/idemproxy/idemproxy/internal/idem"
)

// Watcher tells waiting duplicates when to look at their key again: when
// it was settled (completed, released or marked unknown), and on a slow
// recheck, since a notice can be lost. A prompt carries the time of its
// event: any read begun after it sees the key as the event left it, so all
// of a key's waiters prompted by one event share one read (sharedReads).
// since is when the waiter last looked: a settlement heard after it
// prompts at once. redisstore.Watcher implements it on sharded Pub/Sub.
type Watcher interface {
	Watch(ctx context.Context, key string, since time.Time) (wake <-chan time.Time, stop func(), err error)
}

// waitSlack is the time, past the longest wait, that the final look and
// answer may take before Envoy's extended timer fires.
const waitSlack = time.Second

// A waiter whose read of its key failed looks again after waitRetryFirst,
// doubling up to waitRetryMax: a failover or a reconnect makes Redis calls
// fail for a moment (go-redis even refuses new connections for up to a
// second after a run of failed dials), and a waiter that has already held
// its client should outlast that, not end in a 503 at the first error.
// Once its reads have failed for waitReadGiveUp it is a real outage: the
// 503 then, not at --max-wait, so the client is not held for nothing.
const (
	waitRetryFirst = 50 * time.Millisecond
	waitRetryMax   = time.Second
	waitReadGiveUp = 2 * time.Second
)

// Wait outcomes, the label of idemproxy_waits_total.
const (
	waitReplayed = "replayed" // the first request completed: its replay
	waitAcquired = "acquired" // it gave its key back: this one runs
	waitOther    = "other"    // unknown outcome, not stored, mismatch
	waitTimeout  = "timeout"  // --max-wait passed: 409 in-progress
	waitGone     = "gone"     // the client hung up while waiting
	waitFull     = "full"     // --max-waiters reached: 409 at once
	waitError    = "error"    // reads failed for waitReadGiveUp or until --max-wait, or a failed acquire: 503
)

// waited is how a wait ended: the last look at the key, which decide
// judges as for a request that may not wait again. gone: the stream
// ended, nobody to answer. acquireFailed: the look was an acquire that
// failed, which may have taken the lock all the same.
type waited struct {
	look
	gone, acquireFailed bool
}

// wait holds a duplicate until its key is settled or the wait ends. acq is
// the first look (in progress, with this request's fingerprint), made at
// since.
func (e *exchange) wait(claim idem.Claim, acq idem.Acquisition, since time.Time) waited {
	m := e.srv.metrics
	if n := e.srv.waiters.Add(1); n > int64(e.srv.cfg.MaxWaiters) {
		e.srv.waiters.Add(-1)
		m.waits.WithLabelValues(waitFull).Inc()
		return waited{look: look{acq: acq}}
	}
	m.waiting.Inc()
	start := time.Now()
	defer func() {
		e.srv.waiters.Add(-1)
		m.waiting.Dec()
		m.waitSeconds.Observe(time.Since(start).Seconds())
	}()
	// Extend Envoy's timer for this message before anything else, once.
	if err := e.send(&extprocv3.ProcessingResponse{OverrideMessageTimeout: durationpb.New(e.pol.maxWait + waitSlack)}); err != nil {
		m.waits.WithLabelValues(waitGone).Inc()
		return waited{gone: true} // the stream is gone: nobody to answer
	}
	e.srv.reads.enter(e.req.key)
	defer e.srv.reads.leave(e.req.key)
	w, result := e.waitOn(claim, acq, since)
	m.waits.WithLabelValues(result).Inc()
	return w
}

// waitOn looks at the key whenever it may have changed, until it is
// settled, the wait times out or the client leaves. It returns how the
// wait ended and its idemproxy_waits_total result.
func (e *exchange) waitOn(claim idem.Claim, acq idem.Acquisition, since time.Time) (waited, string) {
	wake, tick, stop := e.watch(since)
	defer stop()
	deadline := time.NewTimer(e.pol.maxWait)
	defer deadline.Stop()
	retry := newRetry()
	defer retry.stop()
	var readErr error          // the last read failed: the key's state is not known
	var failingSince time.Time // when the reads began to fail
	for {
		var event time.Time // the key must be read as it was after this
		select {
		case <-e.ctx.Done():
			return waited{gone: true}, waitGone
		case <-deadline.C:
			if readErr != nil {
				// Redis did not answer until the end: fail closed as
				// any request would, rather than guess "in progress".
				return waited{look: look{err: readErr}}, waitError
			}
			return waited{look: look{acq: acq}}, waitTimeout
		case event = <-wake:
		case event = <-tick:
		case event = <-retry.c():
		}
		next, err := e.srv.reads.peek(e.ctx, e.req.key, event)
		if e.ctx.Err() != nil {
			return waited{gone: true}, waitGone
		}
		if err != nil {
			// Nothing is decided on a failed read, and nothing runs:
			// look again soon, for a while.
			if readErr == nil {
				failingSince = time.Now()
				e.logger().Warn("a waiting duplicate could not read its key; still waiting, looking again shortly", "error", err)
			}
			readErr = err
			if time.Since(failingSince) >= waitReadGiveUp {
				return waited{look: look{err: err}}, waitError
			}
			retry.after()
			continue
		}
		readErr = nil
		retry.reset()
		if e.mayTake(next, claim) {
			// Free (its owner gave it back): race for it as a new
			// request would; one waiter wins, the others wait on.
			e.lock.leaseEnd = time.Now().Add(e.pol.lockTTL)
			if next, err = e.srv.store.Acquire(e.ctx, e.req.key, claim); err != nil {
				// The acquire may have taken the lock all the same.
				return waited{look: look{err: err}, acquireFailed: true}, waitError
			}
		}
		if result := waitEnd(next, claim); result != "" {
			return waited{look: look{acq: next}}, result
		}
		acq = next // still running (or another waiter took it over): wait on
	}
}

// waitEnd is the waits_total result of a look that ends the wait, or ""
// while the key is still in progress with this request's fingerprint.
func waitEnd(acq idem.Acquisition, claim idem.Claim) string {
	switch {
	case acq.State == idem.StateInProgress && bytes.Equal(acq.Fingerprint, claim.Fingerprint):
		return ""
	case acq.State == idem.StateAcquired:
		return waitAcquired
	case acq.State == idem.StateCompleted && acq.Record != nil && acq.Record.BodyStored:
		return waitReplayed
	default:
		return waitOther
	}
}

// waitRetry schedules a waiter's next look after a failed read, backing
// off from waitRetryFirst to waitRetryMax.
type waitRetry struct {
	timer   *time.Timer
	pending bool
	next    time.Duration
}

func newRetry() *waitRetry {
	t := time.NewTimer(time.Hour)
	t.Stop()
	return &waitRetry{timer: t, next: waitRetryFirst}
}

// after schedules the next look and lengthens the one after it.
func (r *waitRetry) after() {
	r.timer.Reset(r.next)
	r.pending = true
	r.next = min(2*r.next, waitRetryMax)
}

// reset forgets the failures: a read succeeded.
func (r *waitRetry) reset() {
	r.timer.Stop()
	r.pending = false
	r.next = waitRetryFirst
}

// c is the channel of the scheduled look; nil (never ready) when none is.
func (r *waitRetry) c() <-chan time.Time {
	if !r.pending {
		return nil
	}
	return r.timer.C
}

func (r *waitRetry) stop() { r.timer.Stop() }

// mayTake says whether a shared look found the key takeable by claim: free,
// or (under --on-unknown=rerun-after-ttl) left by an owner whose lease ran
// out.
func (e *exchange) mayTake(acq idem.Acquisition, claim idem.Claim) bool {
	return acq.State == idem.StateFree || (acq.State == idem.StateUnknown && acq.Expired && claim.Lease.Takeover)
}

// watch registers the waiter with the Watcher. Without one (or when it
// fails) the waiter looks on its own every --wait-recheck (tick).
func (e *exchange) watch(since time.Time) (wake, tick <-chan time.Time, stop func()) {
	if e.srv.watcher != nil {
		wake, stop, err := e.srv.watcher.Watch(e.ctx, e.req.key, since)
		if err == nil {
			return wake, nil, stop
		}
		e.logger().Warn("waiting without completion notices, re-checking every --wait-recheck", "error", err)
	}
	t := time.NewTicker(e.srv.cfg.WaitRecheck)
	return nil, t.C, t.Stop
}

// sharedReads serves the reads of a key's waiters: one read answers every
// waiter whose prompt came before the read began, so the waiters of one
// event cost one round trip per process, however many there are and
// however late each goroutine runs. It keeps a key's last read only while
// the key has waiters.
type sharedReads struct {
	store Store // bounded and observed (timedStore)

	flights singleflight.Group
	mu      sync.Mutex
	keys    map[string]*keyReads
}

type keyReads struct {
	waiters int
	last    *sharedRead // the latest finished read, nil before the first
}

type sharedRead struct {
	began time.Time
	acq   idem.Acquisition
	err   error
}

func newSharedReads(store Store) *sharedReads {
	return &sharedReads{store: store, keys: map[string]*keyReads{}}
}

// enter and leave bracket one waiter of key.
func (r *sharedReads) enter(key string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	k := r.keys[key]
	if k == nil {
		k = &keyReads{}
		r.keys[key] = k
	}
	k.waiters++
}

func (r *sharedReads) leave(key string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if k := r.keys[key]; k != nil {
		if k.waiters--; k.waiters <= 0 {
			delete(r.keys, key)
		}
	}
}

// peek returns key as read after event: the last read if it began after
// event, else the read in flight (if that began after event too) or a new
// one. At most two flights are waited for: one that began after event
// comes at the latest right after the one in flight. The read is not tied
// to one waiter's stream (whose client may leave while the others wait),
// only bounded like any store call; ctx ends this waiter's part in it.
func (r *sharedReads) peek(ctx context.Context, key string, event time.Time) (idem.Acquisition, error) {
	for {
		r.mu.Lock()
		if k := r.keys[key]; k != nil && k.last != nil && !k.last.began.Before(event) {
			last := *k.last
			r.mu.Unlock()
			return last.acq, last.err
		}
		r.mu.Unlock()
		ch := r.flights.DoChan(key, func() (any, error) {
			read := sharedRead{began: time.Now()}
			read.acq, read.err = r.store.Peek(context.WithoutCancel(ctx), key)
			r.mu.Lock()
			if k := r.keys[key]; k != nil {
				k.last = &read
			}
			r.mu.Unlock()
			return read, nil
		})
		select {
		case <-ctx.Done():
			return idem.Acquisition{}, ctx.Err()
		case res := <-ch:
			if read := res.Val.(sharedRead); !read.began.Before(event) {
				return read.acq, read.err
			}
			// That read began before this waiter's event: another.
		}
	}
}
