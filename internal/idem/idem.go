// Package idem holds the idempotency records and their states, the data the
// processor and the store exchange. It imports nothing of ours, so the store
// builds without gRPC, Envoy's protos or Prometheus, and the Store interface
// stays with its consumer, the processor.
package idem

import (
	"errors"
	"time"
)

// ErrLeaseLost reports that the owner token no longer holds the record: it
// expired, or another request took the key after it expired.
var ErrLeaseLost = errors.New("idem: lease lost")

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
