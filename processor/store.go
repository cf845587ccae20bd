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

// StoreGate says whether the store may be trusted with keys at all. A
// non-nil error refuses every keyed request with 503 store-unavailable,
// whatever --fail-open says: the store answers, but it could lose what it
// is given (an evicting Redis), so nothing may run on its word.
type StoreGate interface {
	Usable() error
}
