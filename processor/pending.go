package processor

// Pending completions: a response seen in full whose completion the store
// did not take within --finalize-timeout (Redis down or cut off). Giving
// up would leave its key "in progress" until the lease ends and then "an
// unknown outcome" for the retention, though the response is known. So it
// is kept and retried in the background: with its body until the lease
// would end (renewed meanwhile, so the key stays in progress and ours), a
// retry then gets the replay; after that without its body, as the status
// alone (409 response-not-stored), until the record's hold ends. Memory is
// bounded by --max-pending-completions and --max-pending-completion-bytes,
// time by the lease and the hold, and every goroutine by the server's
// lifetime: Drain settles what is left as well as it can.

import (
	"context"
	"log/slog"
	"sync"
	"time"

	"github.com/idemproxy/idemproxy/internal/idem"
)

// Results of idemproxy_pending_completions_total.
const (
	pendingStored     = "stored"      // the response, body and all
	pendingStatusOnly = "status_only" // the status alone (response-not-stored)
	pendingLeaseLost  = "lease_lost"  // the record was no longer ours
	pendingGaveUp     = "gave_up"     // nothing written by the end of the hold or the drain
	pendingRefused    = "refused"     // not kept: --max-pending-completions was reached
	pendingBodyDrop   = "body_dropped"
)

// pending is one kept completion.
type pending struct {
	key, token string
	rec        idem.Record // with its body until the body phase ends
	retention  time.Duration
	lease      idem.Lease
	leaseEnd   time.Time // when the lease ends unless renewed
	received   time.Time // when the response was seen in full
	bytes      int64     // what it holds against the cap
	log        *slog.Logger
	// statusOnly: the body is given up, only the status is written.
	statusOnly bool
	// afterLease says what the key reads as once its lease ends with
	// nothing written (exchange.afterLease).
	afterLease string
}

// keeper holds the pending completions of a server.
type keeper struct {
	life     context.Context // the server's lifetime: its end is the drain
	maxCount int
	maxBytes int64
	metrics  *Metrics

	mu       sync.Mutex
	draining bool // Drain began: no goroutine is started any more
	count    int
	bytes    int64
	keys     map[string]int // key -> status received, for duplicates' answers
	wg       sync.WaitGroup
}

func newKeeper(life context.Context, maxCount int, maxBytes int64, m *Metrics) *keeper {
	return &keeper{life: life, maxCount: maxCount, maxBytes: maxBytes, metrics: m, keys: map[string]int{}}
}

// storing is the status of key's response, received and being stored by
// this process; 0 when none is.
func (k *keeper) storing(key string) int {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.keys[key]
}

// admit reserves room for p: false when --max-pending-completions is
// reached. Over the bytes cap p is kept without its body (its status
// alone can then be written). inline says the drain has begun: the caller
// settles p itself, at once, rather than on a goroutine Drain no longer
// waits for.
func (k *keeper) admit(p *pending) (ok, inline bool) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.count >= k.maxCount {
		return false, false
	}
	if !k.draining {
		k.wg.Add(1)
	}
	p.bytes = int64(len(p.rec.Body))
	for _, h := range p.rec.Headers {
		p.bytes += int64(len(h.Name) + len(h.Value))
	}
	if k.bytes+p.bytes > k.maxBytes {
		p.dropBody()
		p.bytes = 0
	}
	k.count++
	k.bytes += p.bytes
	k.keys[p.key] = p.rec.Status
	k.gauges()
	return true, k.draining
}

// shrink gives back what p held beyond its status, once its body is dropped.
func (k *keeper) shrink(p *pending) {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.bytes -= p.bytes
	p.bytes = 0
	k.gauges()
}

// forget ends p's stay.
func (k *keeper) forget(p *pending, result string) {
	k.mu.Lock()
	k.count--
	k.bytes -= p.bytes
	delete(k.keys, p.key)
	k.gauges()
	k.mu.Unlock()
	k.metrics.pending.WithLabelValues(result).Inc()
}

// gauges publishes the counts; k.mu is held.
func (k *keeper) gauges() {
	k.metrics.pendingNow.Set(float64(k.count))
	k.metrics.pendingBytes.Set(float64(k.bytes))
}

// dropBody turns p into its status alone: what is written when the
// response itself cannot be.
// A response that had no replayable body anyway (cut mid-body, trailers,
// over --max-body-bytes) keeps saying why.
func (p *pending) dropBody() {
	p.statusOnly = true
	p.rec.Body, p.rec.Headers = nil, nil
	if p.rec.BodyStored {
		p.rec.BodyStored, p.rec.StoreFailed = false, true
	}
}

// Drain settles the pending completions at shutdown: each makes its last
// attempt now (the body if its lease has not ended, else the status), and
// Drain waits for them until ctx ends (--shutdown-grace). It reports how
// many were still pending when ctx ended; each logs what became of it.
func (s *Server) Drain(ctx context.Context) int {
	s.stopKeeping()
	s.pending.mu.Lock()
	s.pending.draining = true
	s.pending.mu.Unlock()
	done := make(chan struct{})
	go func() { s.pending.wg.Wait(); close(done) }()
	select {
	case <-done:
		return 0
	case <-ctx.Done():
		s.pending.mu.Lock()
		defer s.pending.mu.Unlock()
		if s.pending.count > 0 {
			s.log.Error("shutdown grace over with completions still making their last attempts; what is not written by the time the process exits is lost, "+
				"and each logs what became of it while it can", "pending", s.pending.count)
		}
		return s.pending.count
	}
}
