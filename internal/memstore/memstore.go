// Package memstore is the processor's Store, and its Watcher, in memory:
// the same answers redisstore gives (leases that run out into unknown
// outcomes, takeover, fences that survive their record, completions only
// by the owner, settlements announced to waiters), from a map behind one
// mutex, on a clock the caller chooses.
//
// The processor's tests run on it with a clock they step, and idembench's
// memory scenario (m) serves the processor on it with the wall clock, to
// measure idemproxy's own cost without Redis. The conformance suite in
// internal/storetest holds it to the same table of behaviours as
// redisstore on a real Redis, so neither can drift from the other. It
// imports no testing package: idembench links it.
//
// It forgets everything when the process ends, and drops a record that
// has run out only when the key is next touched: a store for tests and
// measurements, not for keeping anyone's keys.
package memstore

import (
	"bytes"
	"context"
	"sync"
	"time"

	"github.com/idemproxy/idemproxy/internal/idem"
)

// Entry is one key's record as the store holds it.
type Entry struct {
	// Token is the owner's while the key is in progress; "" once it is
	// completed or abandoned.
	Token string
	// CompletedBy is the token that completed it: a retry of that
	// completion succeeds, writing nothing.
	CompletedBy string
	Fingerprint []byte
	Scope       string
	Fence       int64
	// LeaseEnd is when an in-progress lease runs out; Expires when the
	// whole record goes.
	LeaseEnd, Expires time.Time
	// Created is when the key was granted (zero: not known, as a record
	// of a version that did not note it); Acquire reports the time since.
	Created time.Time
	// Record is the stored response, once completed.
	Record *idem.Record
	// Unknown is set once the owner abandoned the key: the outcome is
	// unknown until the record expires.
	Unknown bool
}

// inProgress says whether e is held by an owner, its lease run out or not.
func (e *Entry) inProgress() bool { return e.Record == nil && !e.Unknown }

// Store is an in-memory processor.Store and processor.Watcher. The zero
// value is not usable: call New.
type Store struct {
	now func() time.Time

	mu      sync.Mutex
	entries map[string]*Entry
	fences  map[string]int64 // grows with every grant, survives deletion
	// watchers are prompted when their key is settled (Complete, Release,
	// Abandon), as redisstore's scripts publish on the key's channel.
	watchers  map[string][]chan time.Time
	settledAt map[string]time.Time // wall clock, as the Watcher's notices
	quiet     bool
}

// New returns an empty store on the clock now (nil: the wall clock).
func New(now func() time.Time) *Store {
	if now == nil {
		now = time.Now
	}
	return &Store{now: now, entries: map[string]*Entry{}, fences: map[string]int64{},
		watchers: map[string][]chan time.Time{}, settledAt: map[string]time.Time{}}
}

// Now is the store's clock.
func (s *Store) Now() time.Time { return s.now() }

// Acquire creates an in-progress record for key owned by c.Token, unless a
// live record holds the key: then it reports that record (processor.Store).
func (s *Store) Acquire(ctx context.Context, key string, c idem.Claim) (idem.Acquisition, error) {
	if err := ctx.Err(); err != nil {
		return idem.Acquisition{}, err // as a Redis client: nothing is sent
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.now()
	e, ok := s.live(key, now)
	if ok && !(c.Lease.Takeover && e.inProgress() && !now.Before(e.LeaseEnd)) {
		return report(e, now), nil
	}
	s.fences[key]++
	s.entries[key] = &Entry{Token: c.Token, Fingerprint: bytes.Clone(c.Fingerprint), Scope: c.Scope,
		Fence: s.fences[key], Created: now, LeaseEnd: now.Add(c.Lease.TTL), Expires: now.Add(keyTTL(c.Lease))}
	return idem.Acquisition{State: idem.StateAcquired, Fence: s.fences[key]}, nil
}

// Peek reports the record that holds key as Acquire would, taking nothing:
// idem.StateFree when none does (processor.Store).
func (s *Store) Peek(ctx context.Context, key string) (idem.Acquisition, error) {
	if err := ctx.Err(); err != nil {
		return idem.Acquisition{}, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.now()
	if e, ok := s.live(key, now); ok {
		return report(e, now), nil
	}
	return idem.Acquisition{State: idem.StateFree}, nil
}

// report is what a claimant finds in the live record e.
func report(e *Entry, now time.Time) idem.Acquisition {
	acq := idem.Acquisition{Fingerprint: bytes.Clone(e.Fingerprint)}
	switch {
	case e.Unknown:
		acq.State, acq.LockTTL = idem.StateUnknown, e.Expires.Sub(now)
	case e.Record != nil:
		rec := cloneRecord(*e.Record)
		acq.State, acq.Record = idem.StateCompleted, &rec
	case !now.Before(e.LeaseEnd):
		acq.State, acq.Expired, acq.LockTTL = idem.StateUnknown, true, e.Expires.Sub(now)
	default:
		acq.State, acq.LockTTL = idem.StateInProgress, e.LeaseEnd.Sub(now)
		if !e.Created.IsZero() {
			acq.Running = max(now.Sub(e.Created), 0)
		}
	}
	return acq
}

// Renew extends token's lease on key (processor.Store).
func (s *Store) Renew(ctx context.Context, key, token string, l idem.Lease) error {
	return s.owned(ctx, key, token, false, func(e *Entry, now time.Time) {
		e.LeaseEnd, e.Expires = now.Add(l.TTL), now.Add(keyTTL(l))
	})
}

// Complete replaces token's in-progress record by rec, kept for retention;
// a retry of its owner's completion succeeds, writing nothing
// (processor.Store).
func (s *Store) Complete(ctx context.Context, key, token string, rec idem.Record, retention time.Duration) error {
	stored := cloneRecord(rec)
	if !stored.BodyStored {
		stored.Body = nil
	}
	return s.owned(ctx, key, token, true, func(e *Entry, now time.Time) {
		e.Record, e.Token, e.CompletedBy, e.Expires = &stored, "", token, now.Add(retention)
		s.settled(key)
	})
}

// Release deletes token's in-progress record (processor.Store).
func (s *Store) Release(ctx context.Context, key, token string) error {
	return s.owned(ctx, key, token, false, func(*Entry, time.Time) {
		delete(s.entries, key)
		s.settled(key)
	})
}

// Abandon marks token's in-progress record an unknown outcome, kept for
// hold (processor.Store).
func (s *Store) Abandon(ctx context.Context, key, token string, hold time.Duration) error {
	return s.owned(ctx, key, token, false, func(e *Entry, now time.Time) {
		e.Unknown, e.Token, e.Expires = true, "", now.Add(hold)
		s.settled(key)
	})
}

// owned runs change on key's record, under the lock, if token holds it in
// progress; idem.ErrLeaseLost otherwise. A lease that ran out is still the
// owner's until another claim takes the key over. With completing, a
// record token completed already succeeds, changing nothing: a retried
// Complete whose first try was written.
func (s *Store) owned(ctx context.Context, key, token string, completing bool, change func(e *Entry, now time.Time)) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.now()
	e, ok := s.live(key, now)
	switch {
	case completing && ok && e.Record != nil && e.CompletedBy == token:
		return nil // a retry of its owner's completion: written already
	case !ok || !e.inProgress() || e.Token != token:
		return idem.ErrLeaseLost
	}
	change(e, now)
	return nil
}

// live returns key's record unless it has expired (then it is dropped);
// s.mu is held.
func (s *Store) live(key string, now time.Time) (*Entry, bool) {
	e, ok := s.entries[key]
	if ok && !now.Before(e.Expires) {
		delete(s.entries, key)
		return nil, false
	}
	return e, ok
}

// keyTTL is how long an in-progress record lives: the hold, or only the
// lease with takeover.
func keyTTL(l idem.Lease) time.Duration {
	if l.Takeover {
		return l.TTL
	}
	return l.Hold
}

func cloneRecord(r idem.Record) idem.Record {
	r.Fingerprint = bytes.Clone(r.Fingerprint)
	r.Headers = append([]idem.Header(nil), r.Headers...)
	r.Body = bytes.Clone(r.Body)
	return r
}
