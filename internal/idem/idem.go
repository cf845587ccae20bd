// Package idem holds the idempotency records and their states, the data the
// processor and the store exchange. It imports nothing of ours, so the store
// builds without gRPC, Envoy's protos or Prometheus, and the Store interface
// stays with its consumer, the processor.
package idem

import (
	"errors"
	"time"
)

// ErrLeaseLost reports that the owner token no longer holds the record: an
// operator deleted it, or (only with Lease.Takeover) another request took
// the key after the lease expired.
var ErrLeaseLost = errors.New("idem: lease lost")

// ErrUnreplicated reports a write the primary made but fewer replicas than
// asked for acknowledged in time, so a failover now could lose it. From
// Acquire it means the lock was taken but must not be relied on: the
// request is not forwarded, and the caller releases the lock. From Complete
// it means the response is stored on the primary only: the caller delivers
// it and counts it.
var ErrUnreplicated = errors.New("idem: not acknowledged by enough replicas")

// ErrNotTaken reports an Acquire refused before anything was written
// (the lock could not have been made durable): unlike other failures of
// Acquire, there is no lock to give back.
var ErrNotTaken = errors.New("idem: refused before the lock was written")

// ErrStoreReset reports that the store lost its records (Redis restarted
// without persistence, was flushed, or failed over to a replica without
// the data), so a key it calls free may be one whose completed record was
// lost: nothing may run on its word until an operator acknowledges the
// reset or the retention has passed since it.
var ErrStoreReset = errors.New("idem: the store lost its records (store reset)")

// ErrNoReplay reports a replay token that replays nothing: never issued,
// used already, expired, malformed, or its record is gone.
var ErrNoReplay = errors.New("idem: no such replay")

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
	// its outcome was never seen: its owner gave it up (Abandon), or its
	// lease ran out without a word from the owner (a crash). The key is
	// refused until the record expires or an operator deletes it.
	StateUnknown
	// StateFree means no record holds the key (Peek only).
	StateFree
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
	case StateFree:
		return "free"
	default:
		return "unknown"
	}
}

// Lease says how a request holds a key.
type Lease struct {
	// TTL is how long the owner holds the key without renewing it.
	TTL time.Duration
	// Hold is how long the record outlives its owner's last sign of life
	// (the grant or a renewal): after a crash the key stays refused as an
	// unknown outcome for that long. The retention period.
	Hold time.Duration
	// Takeover is the opt-in old behaviour (--on-unknown=rerun-after-ttl):
	// an expired lease frees the key, so the next request runs, possibly a
	// second time. Without it an expired lease is an unknown outcome.
	Takeover bool
}

// Claim is what a request asks of Acquire.
type Claim struct {
	// Token is the owner token: only it may renew, complete or release.
	Token string
	// Fingerprint binds the key to the request (method, path, body).
	Fingerprint []byte
	// Scope says, for operators, whose key it is: the authority and a hash
	// of the identity, never the client's key itself.
	Scope string
	Lease Lease
	// Wait says the caller will wait for the key if it is in progress:
	// the store then makes sure the key's settlement is announced.
	Wait bool
	// Replay asks for a replay token with a completed record that the
	// replay endpoint is to serve; the zero value asks for none.
	Replay ReplayAsk
}

// ReplayAsk asks Acquire to issue a replay token, as a separate
// IssueReplay would, in the same step that finds a completed record with
// its body stored and the claim's fingerprint (Acquisition.ReplayToken):
// one store round trip fewer for a replay through the replay endpoint.
// A record that is not replayed gets none.
type ReplayAsk struct {
	// TTL is the token's lifetime; 0 asks for no token.
	TTL time.Duration
	// All asks for a token with every such record (the processor's
	// ReplayAllViaEndpoint); otherwise only with one that ended with
	// trailers, which an immediate response cannot replay.
	All bool
}

// Acquisition is the result of Acquire.
type Acquisition struct {
	State State
	// Fingerprint of the request that created the existing record
	// (StateInProgress, StateCompleted, StateUnknown).
	Fingerprint []byte
	// LockTTL is the remaining lease of an in-progress record, or the
	// remaining hold of an unknown outcome.
	LockTTL time.Duration
	// Running is how long an in-progress record has been held, since its
	// grant, on the store's clock: how long the first request has been
	// running (StateInProgress only). 0 when the store cannot say (a
	// record of a version that did not note its grant time).
	Running time.Duration
	// Expired is set with StateUnknown when the lease ran out without its
	// owner giving the key up: the owner crashed or lost Redis for longer
	// than the lease.
	Expired bool
	// Record is the stored response (StateCompleted only).
	Record *Record
	// Fence is the fencing token of this grant (StateAcquired only): it
	// grows with every grant of the key, so a backend can refuse a request
	// whose lease was lost to a newer one.
	Fence int64
	// ReplayToken is the replay token issued for Record when the claim
	// asked for one (Claim.Replay) and Record is one it asked for; "" when
	// none was issued.
	ReplayToken string
}

// Record is a completed response as stored for replay.
type Record struct {
	Fingerprint []byte
	Status      int
	// Headers in the order the upstream sent them; repeated names repeat.
	Headers []Header
	Body    []byte
	// BodyStored is false when the body was not kept: the key is
	// completed, but its response cannot be replayed.
	BodyStored bool
	// Incomplete, Trailers and StoreFailed say why BodyStored is false;
	// with none the body was over the cap. Incomplete: the status and
	// headers arrived, but the body never ended (the client hung up, or
	// the upstream reset mid-body). Trailers: the response ended with HTTP
	// trailers; with BodyStored they are kept in TrailerHeaders (replayed
	// by the replay endpoint, which an immediate response cannot do), and
	// without it, by records of earlier versions, they were not. StoreFailed:
	// the response was seen in full and delivered, but the store did not
	// take it until its lease ended (or the proxy shut down); only its
	// status was written afterwards.
	Incomplete  bool
	Trailers    bool
	StoreFailed bool
	// TrailerHeaders are the response's trailers in the order sent (with
	// Trailers and BodyStored).
	TrailerHeaders []Header
	// UpstreamAttempts is Envoy's attempt count for the stored response
	// (x-envoy-attempt-count) when Envoy retried the request upstream: above
	// 1, an earlier attempt may have run too. 0: one attempt, or not known
	// (records written before the field, or without the count).
	UpstreamAttempts int
}

// Header is one response header line.
type Header struct {
	Name  string
	Value string
}
