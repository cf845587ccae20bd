package processor

import (
	"context"
	"time"

	"github.com/idemproxy/idemproxy/internal/idem"
)

// Store persists idempotency records. It is defined here, where it is
// consumed; redisstore implements it. Every method is one atomic step in the
// backing store, and only the owner token given to Acquire may renew,
// complete or release the record it created.
type Store interface {
	// Acquire creates an in-progress record for key owned by token, expiring
	// after lockTTL, unless a record exists; then it reports that record.
	Acquire(ctx context.Context, key, token string, fingerprint []byte, lockTTL time.Duration) (idem.Acquisition, error)
	// Renew extends the lock to lockTTL. idem.ErrLeaseLost when token no
	// longer owns it.
	Renew(ctx context.Context, key, token string, lockTTL time.Duration) error
	// Complete replaces the in-progress record by rec, kept for retention.
	// idem.ErrLeaseLost when token no longer owns it: nothing is written then.
	Complete(ctx context.Context, key, token string, rec idem.Record, retention time.Duration) error
	// Release deletes the in-progress record. idem.ErrLeaseLost when token
	// no longer owns it: nothing is deleted then.
	Release(ctx context.Context, key, token string) error
	// Abandon marks the in-progress record "outcome unknown" and keeps it
	// for hold: the request may have run, so retries must not run it again.
	// idem.ErrLeaseLost when token no longer owns it.
	Abandon(ctx context.Context, key, token string, hold time.Duration) error
}
