package processor

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"time"
)

// watchdog renews a held lock every heartbeat until stopped, so a request
// that runs longer than the lock TTL keeps its key. It stops by itself when
// the stream's context ends or the lease is lost.
type watchdog struct {
	cancel context.CancelFunc
	done   chan struct{}
	once   sync.Once
}

func (s *Server) startWatchdog(ctx context.Context, log *slog.Logger, key, token string, p policy) *watchdog {
	ctx, cancel := context.WithCancel(ctx)
	w := &watchdog{cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(w.done)
		t := time.NewTicker(p.heartbeat)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
			if lost := s.renew(ctx, log, key, token, p.lockTTL); lost {
				return
			}
		}
	}()
	return w
}

// renew extends the lock once; it reports whether the lease is gone.
func (s *Server) renew(ctx context.Context, log *slog.Logger, key, token string, lockTTL time.Duration) bool {
	// Bounded like every request-path call, so a slow Redis cannot stall
	// the next heartbeat past the TTL unnoticed.
	rctx, cancel := context.WithTimeout(ctx, s.cfg.StoreTimeout)
	defer cancel()
	start := time.Now()
	err := s.store.Renew(rctx, key, token, lockTTL)
	s.metrics.observeStore("renew", start, err)
	switch {
	case err == nil:
		s.metrics.renewals.WithLabelValues(renewOK).Inc()
		return false
	case errors.Is(err, ErrLeaseLost):
		s.metrics.renewals.WithLabelValues(renewLost).Inc()
		s.metrics.leaseLost.WithLabelValues(stageRenew).Inc()
		log.Warn("lock lease lost while the request was running; its response will not be stored")
		return true
	case ctx.Err() != nil:
		return true // stopped while renewing: not a failure
	default:
		// Transient: try again at the next heartbeat; the TTL leaves room
		// for TTL/heartbeat - 1 failed renewals.
		s.metrics.renewals.WithLabelValues(renewError).Inc()
		log.Warn("lock renewal failed; retrying at the next heartbeat", "error", err)
		return false
	}
}

// stop ends the watchdog and waits for it, so no renewal runs afterwards.
// Safe on a nil watchdog and more than once.
func (w *watchdog) stop() {
	if w == nil {
		return
	}
	w.once.Do(func() {
		w.cancel()
		<-w.done
	})
}
