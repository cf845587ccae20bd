// Package storetest is the Store conformance suite: one table of behaviours
// that every implementation of the processor's Store must show. It runs
// against redisstore on a real Redis and against the processor's in-memory
// fake, so the fake the processor's tests trust cannot drift from the real
// store.
package storetest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/idemproxy/idemproxy/internal/idem"
)

// Store is the method set under test; it mirrors processor.Store, which
// this package cannot import (the store's tests would then build gRPC).
type Store interface {
	Acquire(ctx context.Context, key string, c idem.Claim) (idem.Acquisition, error)
	Peek(ctx context.Context, key string) (idem.Acquisition, error)
	Renew(ctx context.Context, key, token string, lease idem.Lease) error
	Complete(ctx context.Context, key, token string, rec idem.Record, retention time.Duration) error
	Release(ctx context.Context, key, token string) error
	Abandon(ctx context.Context, key, token string, hold time.Duration) error
}

// Subject is one fresh, empty store and the way to let time pass for it:
// a real sleep for a real store, a clock step for a fake.
type Subject struct {
	Store Store
	Wait  func(d time.Duration)
}

// Leases short enough for a real Redis to run the suite in a few seconds,
// long enough that the machine's noise never makes a lease run out early.
const (
	leaseTTL = 300 * time.Millisecond
	hold     = 900 * time.Millisecond
	// past waits out a lease or a hold with a margin.
	past = 200 * time.Millisecond
)

var (
	holdLease     = idem.Lease{TTL: leaseTTL, Hold: hold}
	takeoverLease = idem.Lease{TTL: leaseTTL, Takeover: true}
)

// behaviour is one row of the table.
type behaviour struct {
	name string
	run  func(t *testing.T, s Subject)
}

// Run runs every behaviour on a store made by newSubject, one new store
// per behaviour; they run in parallel, since real waits dominate.
func Run(t *testing.T, newSubject func(t *testing.T) Subject) {
	for _, b := range behaviours {
		t.Run(b.name, func(t *testing.T) {
			t.Parallel()
			b.run(t, newSubject(t))
		})
	}
}

// token is a fresh owner token.
func token(t *testing.T) string {
	t.Helper()
	var b [16]byte
	_, err := rand.Read(b[:])
	require.NoError(t, err)
	return hex.EncodeToString(b[:])
}

func claim(t *testing.T, fp string, l idem.Lease) idem.Claim {
	return idem.Claim{Token: token(t), Fingerprint: []byte(fp), Scope: "api.example", Lease: l}
}

// grant acquires key for a new owner and returns its token and fence.
func grant(t *testing.T, s Store, key, fp string, l idem.Lease) (string, int64) {
	t.Helper()
	c := claim(t, fp, l)
	acq, err := s.Acquire(t.Context(), key, c)
	require.NoError(t, err)
	require.Equal(t, idem.StateAcquired, acq.State, "%s should be free", key)
	require.Positive(t, acq.Fence)
	return c.Token, acq.Fence
}

// look acquires key for a stranger and returns what it found.
func look(t *testing.T, s Store, key, fp string, l idem.Lease) idem.Acquisition {
	t.Helper()
	acq, err := s.Acquire(t.Context(), key, claim(t, fp, l))
	require.NoError(t, err)
	return acq
}

func sampleRecord() idem.Record {
	return idem.Record{
		Fingerprint: []byte("fp"), Status: 201,
		Headers: []idem.Header{{Name: "set-cookie", Value: "a=1"}, {Name: "content-type", Value: "application/json"}, {Name: "set-cookie", Value: "b=2"}},
		Body:    []byte("\x00{\"id\":1}\xff"), BodyStored: true,
	}
}
