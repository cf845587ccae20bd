// Package storetest is the Store conformance suite: one table of behaviours
// that every implementation of processor.Store must show. It runs against
// redisstore on a real Redis and against internal/memstore, the in-memory
// store the processor's tests and idembench run on, so the store they trust
// cannot drift from the real one.
package storetest

import (
	"crypto/rand"
	"encoding/hex"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/idemproxy/idemproxy/internal/idem"
	"github.com/idemproxy/idemproxy/processor"
)

// Subject is one fresh, empty store and the way to let time pass for it:
// a real sleep for a real store, a clock step for one in memory.
type Subject struct {
	// Store is the interface as its consumer declares it: the suite tests
	// processor.Store itself, not a copy that could drift from it. (The
	// processor's own tests therefore cannot import this package: they run
	// on internal/memstore, which it covers.)
	Store processor.Store
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
func grant(t *testing.T, s processor.Store, key, fp string, l idem.Lease) (string, int64) {
	t.Helper()
	c := claim(t, fp, l)
	acq, err := s.Acquire(t.Context(), key, c)
	require.NoError(t, err)
	require.Equal(t, idem.StateAcquired, acq.State, "%s should be free", key)
	require.Positive(t, acq.Fence)
	return c.Token, acq.Fence
}

// look acquires key for a stranger and returns what it found.
func look(t *testing.T, s processor.Store, key, fp string, l idem.Lease) idem.Acquisition {
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
