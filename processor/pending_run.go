package processor

// The life of one pending completion (pending.go): its body until its
// lease would end, then its status alone until the record's hold ends;
// at the drain, one last attempt of whichever is due.

import (
	"context"
	"errors"
	"time"

	"github.com/idemproxy/idemproxy/internal/idem"
)

// Backoff of a pending completion's status, once its body is given up:
// the hold can be long, and a failing Redis need not be asked often.
const maxStatusBackoff = 5 * time.Second

// keep hands p to a goroutine of its own, tied to the server's lifetime;
// false when --max-pending-completions refuses it (logged here).
func (s *Server) keep(p *pending) bool {
	ok, inline := s.pending.admit(p)
	if !ok {
		s.metrics.pending.WithLabelValues(pendingRefused).Inc()
		p.log.Error("response delivered, but not stored within --finalize-timeout, and not kept for a background retry: "+
			"--max-pending-completions are pending already; nothing more will be written: once its lease ends, "+p.afterLease,
			"status", p.rec.Status, "pending", s.cfg.MaxPendingCompletions, "lease_ends", p.leaseEnd.UTC().Format(time.RFC3339))
		return false
	}
	if p.statusOnly {
		s.metrics.pending.WithLabelValues(pendingBodyDrop).Inc()
		p.log.Warn("response delivered, but not stored within --finalize-timeout; kept for a background retry without its body "+
			"(--max-pending-completion-bytes reached): its status alone will be stored", "status", p.rec.Status)
	} else {
		p.log.Warn("response delivered, but not stored within --finalize-timeout; retrying in the background until its lease would end "+
			"(duplicates reaching this process meanwhile are told it was received)", "status", p.rec.Status,
			"lease_ends", p.leaseEnd.UTC().Format(time.RFC3339))
	}
	if inline {
		s.settlePending(p) // its last attempts: the server's life is over
		return true
	}
	go func() {
		defer s.pending.wg.Done()
		s.settlePending(p)
	}()
	return true
}

// settlePending runs p's two phases and says what became of it.
func (s *Server) settlePending(p *pending) {
	result, err := "", error(nil)
	if !p.statusOnly {
		result, err = s.pendingWrite(p, p.leaseEnd, maxBackoff, true)
	}
	if result == "" {
		p.dropBody()
		s.pending.shrink(p)
		result, err = s.pendingWrite(p, p.received.Add(p.retention), maxStatusBackoff, false)
	}
	if result == "" {
		result = pendingGaveUp
	}
	s.pending.forget(p, result)
	s.pendingLogged(p, result, err)
}

// pendingWrite writes p.rec until it is settled, until, or the drain
// (then once more). It returns the result, "" when nothing was settled,
// and the last error. renew keeps the lease ahead while the body is tried.
func (s *Server) pendingWrite(p *pending, until time.Time, most time.Duration, renew bool) (result string, err error) {
	ctx := context.WithoutCancel(s.pending.life) // each call bounded by the store timeout
	backoff := firstBackoff
	for n := 0; ; n++ {
		if n > 0 {
			s.metrics.retries.WithLabelValues("complete").Inc()
		}
		err = s.store.Complete(ctx, p.key, p.token, p.rec, p.retention)
		switch {
		case err == nil || errors.Is(err, idem.ErrUnreplicated):
			if p.statusOnly {
				return pendingStatusOnly, err
			}
			return pendingStored, err
		case errors.Is(err, idem.ErrLeaseLost):
			return pendingLeaseLost, err
		}
		if renew && time.Until(p.leaseEnd) < p.lease.TTL/2 {
			if rerr := s.store.Renew(ctx, p.key, p.token, p.lease); rerr == nil {
				p.leaseEnd = time.Now().Add(p.lease.TTL)
			}
		}
		if s.pending.life.Err() != nil || !time.Now().Before(until) {
			return "", err
		}
		// Woken early by the drain: one more attempt, then the check above ends it.
		sleep(s.pending.life, min(backoff, time.Until(until)))
		backoff = min(2*backoff, most)
	}
}

// pendingLogged logs what became of p: only what happened.
func (s *Server) pendingLogged(p *pending, result string, err error) {
	took := time.Since(p.received).Round(time.Millisecond).String()
	why := "its lease would have ended"
	if s.pending.life.Err() != nil {
		why = "the proxy shut down"
	}
	switch result {
	case pendingStored:
		p.log.Info("response stored in the background: a retry gets its replay", "status", p.rec.Status, "after", took)
	case pendingStatusOnly:
		p.log.Warn("response delivered, but the store did not take it before "+why+
			"; its status alone is stored: a retry gets 409 response-not-stored naming it, and never runs again",
			"status", p.rec.Status, "after", took)
	case pendingLeaseLost:
		p.log.Warn("response delivered, but when the store answered, the key was no longer ours (an operator deleted it, "+
			"or another request took it over after its lease ended); nothing written", "status", p.rec.Status, "after", took)
	case pendingGaveUp:
		if s.pending.life.Err() != nil {
			p.log.Error("response delivered, but neither it nor its status could be stored before the proxy shut down; nothing written: once its lease ends, "+p.afterLease,
				"status", p.rec.Status, "after", took, "error", err)
			return
		}
		p.log.Error("response delivered, but neither it nor its status could be stored in the retention since it arrived; nothing written",
			"status", p.rec.Status, "after", took, "error", err)
	}
}
