package processor

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/idemproxy/idemproxy/internal/idem"
)

// watchdog renews a held lock every heartbeat until stopped, so a request
// that runs longer than the lock TTL keeps its key. It stops by itself when
// the stream's context ends or the lease is lost.
//
// It is a timer, not a goroutine: most requests finish before their first
// heartbeat, and then the watchdog cost one timer and no goroutine. A
// renewal runs on the timer's own goroutine and re-arms the timer.
type watchdog struct {
	srv        *Server
	ctx        context.Context
	stream     uint64
	key, token string
	pol        policy

	// renewedUntil is when the lease ends after the last successful
	// renewal (unix nanoseconds, our clock); 0 before the first.
	renewedUntil atomic.Int64

	mu         sync.Mutex
	timer      *time.Timer
	done       bool               // stopped, lost, or the stream ended
	cancelTick context.CancelFunc // cancels a renewal in flight
	ticking    sync.WaitGroup     // a renewal in flight
}

func (s *Server) startWatchdog(ctx context.Context, stream uint64, key, token string, p policy) *watchdog {
	w := &watchdog{srv: s, ctx: ctx, stream: stream, key: key, token: token, pol: p}
	s.watchdogs.Add(1)
	w.mu.Lock()
	w.timer = time.AfterFunc(p.heartbeat, w.tick)
	w.mu.Unlock()
	return w
}

// tick renews once and re-arms the timer unless the watchdog is done.
func (w *watchdog) tick() {
	w.mu.Lock()
	if w.done {
		w.mu.Unlock()
		return
	}
	if w.ctx.Err() != nil {
		w.finishLocked()
		w.mu.Unlock()
		return
	}
	ctx, cancel := context.WithCancel(w.ctx)
	w.cancelTick = cancel
	w.ticking.Add(1)
	w.mu.Unlock()

	// Heartbeats are rare (long requests only), so the logger is made here.
	sent := time.Now()
	lost, renewed := w.srv.renew(ctx, w.srv.log.With("stream", w.stream), w.key, w.token, w.pol.lease())
	cancel()
	if renewed {
		w.renewedUntil.Store(sent.Add(w.pol.lockTTL).UnixNano())
	}

	w.mu.Lock()
	w.cancelTick = nil
	switch {
	case w.done:
	case lost:
		w.finishLocked()
	default:
		w.timer.Reset(w.pol.heartbeat)
	}
	w.ticking.Done()
	w.mu.Unlock()
}

// finishLocked marks the watchdog done; w.mu is held.
func (w *watchdog) finishLocked() {
	if !w.done {
		w.done = true
		w.srv.watchdogs.Add(-1)
	}
}

// renew extends the lock once; it reports whether the lease is gone, and
// whether it was extended.
func (s *Server) renew(ctx context.Context, log *slog.Logger, key, token string, lease idem.Lease) (lost, renewed bool) {
	// Bounded like every store call (timedStore), so a slow Redis cannot
	// stall the next heartbeat past the TTL unnoticed.
	err := s.store.Renew(ctx, key, token, lease)
	switch {
	case err == nil:
		s.metrics.renewals.WithLabelValues(renewOK).Inc()
		return false, true
	case errors.Is(err, idem.ErrLeaseLost):
		s.metrics.renewals.WithLabelValues(renewLost).Inc()
		s.metrics.leaseLost.WithLabelValues(stageRenew).Inc()
		log.Warn("lock lease lost while the request was running; its response will not be stored")
		return true, false
	case ctx.Err() != nil:
		return true, false // stopped while renewing: not a failure
	default:
		// Transient: try again at the next heartbeat; the TTL leaves room
		// for TTL/heartbeat - 1 failed renewals.
		s.metrics.renewals.WithLabelValues(renewError).Inc()
		log.Warn("lock renewal failed; retrying at the next heartbeat", "error", err)
		return false, false
	}
}

// leaseEnd is when the lease ends after the last successful renewal;
// zero before the first, and on a nil watchdog.
func (w *watchdog) leaseEnd() time.Time {
	if w == nil {
		return time.Time{}
	}
	if n := w.renewedUntil.Load(); n != 0 {
		return time.Unix(0, n)
	}
	return time.Time{}
}

// stop ends the watchdog and waits for a renewal in flight, so no renewal
// runs afterwards. Safe on a nil watchdog and more than once.
func (w *watchdog) stop() {
	if w == nil {
		return
	}
	w.mu.Lock()
	w.finishLocked()
	w.timer.Stop()
	if w.cancelTick != nil {
		w.cancelTick()
	}
	w.mu.Unlock()
	w.ticking.Wait()
}
