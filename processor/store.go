package processor

import (
	"context"
	"time"

	"github.com/idemproxy/idemproxy/internal/idem"
)

// Store persists idempotency records. It is defined here, where it is
// consumed; redisstore implements it. Every method is one atomic step in the
// backing store, and only the owner token of the claim given to Acquire may
// renew, complete or release the record it created.
type Store interface {
	// Acquire creates an in-progress record for key, owned by c.Token and
	// leased for c.Lease, unless a record exists; then it reports that
	// record. A record whose lease ran out without its owner giving it up
	// is an unknown outcome (idem.StateUnknown with Expired), unless
	// c.Lease.Takeover lets the claim take it over.
	Acquire(ctx context.Context, key string, c idem.Claim) (idem.Acquisition, error)
	// Renew extends the lease. idem.ErrLeaseLost when token no longer owns
	// the record.
	Renew(ctx context.Context, key, token string, lease idem.Lease) error
	// Complete replaces the in-progress record by rec, kept for retention.
	// A repeated call by the token that completed it succeeds, writing
	// nothing (a retry whose first try was written). idem.ErrLeaseLost when
	// token no longer owns it: nothing is written then.
	Complete(ctx context.Context, key, token string, rec idem.Record, retention time.Duration) error
	// Release deletes the in-progress record. idem.ErrLeaseLost when token
	// no longer owns it: nothing is deleted then.
	Release(ctx context.Context, key, token string) error
	// Peek reports the record that holds key as Acquire would, without
	// taking it: idem.StateFree when none does. Waiting duplicates use it
	// (one read shared by a key's waiters, which also makes sure the key's
	// settlement is announced), and the scope migration
	// (--scope-legacy-until), for the previous version's keys.
	Peek(ctx context.Context, key string) (idem.Acquisition, error)
	// Abandon marks the in-progress record "outcome unknown" and keeps it
	// for hold: the request may have run, so retries must not run it again.
	// idem.ErrLeaseLost when token no longer owns it.
	Abandon(ctx context.Context, key, token string, hold time.Duration) error
}

// StoreGate says whether the store may be trusted with a key at all. A
// non-nil error refuses the keyed request, whatever --fail-open says: the
// store answers, but it could lose what it is given (an evicting Redis:
// 503 store-unavailable), or it lost what it was given (an
// idem.ErrStoreReset: 503 store-reset), so nothing may run on its word.
type StoreGate interface {
	Usable(key string) error
}

// timedStore is the Store as the processor calls it: every call bounded
// by the store timeout (--redis-timeout, well under Envoy's message
// timeout, so the client gets our 503, not Envoy's 504) and its latency
// and result observed by operation. Callers choose only the context the
// call lives in: the stream's, or one detached from it.
type timedStore struct {
	store   Store
	timeout time.Duration
	metrics *Metrics
}

var _ Store = timedStore{}

// call bounds ctx by the store timeout, runs f in it and observes it as op.
func (t timedStore) call(ctx context.Context, op string, f func(context.Context) error) error {
	ctx, cancel := context.WithTimeout(ctx, t.timeout)
	defer cancel()
	start := time.Now()
	err := f(ctx)
	t.metrics.observeStore(op, start, err)
	return err
}

func (t timedStore) Acquire(ctx context.Context, key string, c idem.Claim) (acq idem.Acquisition, err error) {
	err = t.call(ctx, "acquire", func(ctx context.Context) (err error) {
		acq, err = t.store.Acquire(ctx, key, c)
		return err
	})
	return acq, err
}

func (t timedStore) Renew(ctx context.Context, key, token string, lease idem.Lease) error {
	return t.call(ctx, "renew", func(ctx context.Context) error { return t.store.Renew(ctx, key, token, lease) })
}

func (t timedStore) Complete(ctx context.Context, key, token string, rec idem.Record, retention time.Duration) error {
	return t.call(ctx, "complete", func(ctx context.Context) error { return t.store.Complete(ctx, key, token, rec, retention) })
}

func (t timedStore) Release(ctx context.Context, key, token string) error {
	return t.call(ctx, "release", func(ctx context.Context) error { return t.store.Release(ctx, key, token) })
}

func (t timedStore) Peek(ctx context.Context, key string) (acq idem.Acquisition, err error) {
	err = t.call(ctx, "peek", func(ctx context.Context) (err error) {
		acq, err = t.store.Peek(ctx, key)
		return err
	})
	return acq, err
}

func (t timedStore) Abandon(ctx context.Context, key, token string, hold time.Duration) error {
	return t.call(ctx, "abandon", func(ctx context.Context) error { return t.store.Abandon(ctx, key, token, hold) })
}
