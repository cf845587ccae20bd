package processor

import (
	"context"
	"errors"
	"time"
)

// Store persists idempotency records. It is defined here, where it is
// consumed; redisstore implements it. Every method is one atomic step in the
// backing store, and only the owner token given to Acquire may renew,
// complete or release the record it created.
type Store interface {
	// Acquire creates an in-progress record for key owned by token, expiring
	// after lockTTL, unless a record exists; then it reports that record.
	Acquire(ctx context.Context, key, token string, fingerprint []byte, lockTTL time.Duration) (Acquisition, error)
	// Renew extends the lock to lockTTL. ErrLeaseLost when token no longer owns it.
	Renew(ctx context.Context, key, token string, lockTTL time.Duration) error
	// Complete replaces the in-progress record by rec, kept for retention.
	// ErrLeaseLost when token no longer owns it: nothing is written then.
	Complete(ctx context.Context, key, token string, rec Record, retention time.Duration) error
	// Release deletes the in-progress record. ErrLeaseLost when token no
	// longer owns it: nothing is deleted then.
	Release(ctx context.Context, key, token string) error
	// Abandon marks the in-progress record "outcome unknown" and keeps it
	// for hold: the request may have run, so retries must not run it again.
	// ErrLeaseLost when token no longer owns it.
	Abandon(ctx context.Context, key, token string, hold time.Duration) error
}

// ErrLeaseLost reports that the owner token no longer holds the record: it
// expired, or another request took the key after it expired.
var ErrLeaseLost = errors.New("processor: lease lost")

// State is the state of a key as Acquire found it.
type State int

const (
	// StateAcquired means the caller now owns a new in-progress record.
	StateAcquired State = iota + 1
	// StateInProgress means another owner holds the key.
	StateInProgress
	// StateCompleted means the key holds a stored response.
	StateCompleted
	// StateUnknown means an earlier request with the key may have run, but
	// its outcome was never seen (held with --on-unknown=hold).
	StateUnknown
)

// String names the state for logs.
func (s State) String() string {
	switch s {
	case StateAcquired:
		return "acquired"
	case StateInProgress:
		return "in_progress"
	case StateCompleted:
		return "completed"
	case StateUnknown:
		return "outcome_unknown"
	default:
		return "unknown"
	}
}

// Acquisition is the result of Acquire.
type Acquisition struct {
	State State
	// Fingerprint of the request that created the existing record
	// (StateInProgress, StateCompleted).
	Fingerprint []byte
	// LockTTL is the remaining lock time of an in-progress record.
	LockTTL time.Duration
	// Record is the stored response (StateCompleted only).
	Record *Record
	// Fence is the fencing token of this grant (StateAcquired only): it
	// grows with every grant of the key, so a backend can refuse a request
	// whose lease was lost to a newer one.
	Fence int64
}

// Record is a completed response as stored for replay.
type Record struct {
	Fingerprint []byte
	Status      int
	// Headers in the order the upstream sent them; repeated names repeat.
	Headers []Header
	Body    []byte
	// BodyStored is false when the body was larger than the stored-body cap:
	// the key is completed, but its response cannot be replayed.
	BodyStored bool
}

// Header is one response header line.
type Header struct {
	Name  string
	Value string
}
