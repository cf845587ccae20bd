package memstore

import (
	"sync"
	"time"
)

// Entry reports key's live record as the store holds it. The Record is
// shared with the store, which never changes a record it holds, only
// replaces it: read it, do not write it.
func (s *Store) Entry(key string) (Entry, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	e, ok := s.live(key, s.now())
	if !ok {
		return Entry{}, false
	}
	return *e, true
}

// Put stores e under key, whatever held it: a record made elsewhere (the
// tests' other owners and earlier completions). The fence counter is left
// as it is.
func (s *Store) Put(key string, e Entry) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.entries[key] = &e
}

// Edit calls change on every live record, under the store's lock: to
// shape what the store holds as only another process could (an operator,
// a request that took a key over), atomically with the store's own work.
func (s *Store) Edit(change func(key string, e *Entry)) {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.now()
	for key := range s.entries {
		if e, ok := s.live(key, now); ok {
			change(key, e)
		}
	}
}

// Clock is a clock that stands still until Advance moves it: a store on
// it lets leases and holds run out at once, without sleeping. Safe for
// concurrent use.
type Clock struct {
	mu sync.Mutex
	t  time.Time
}

// NewClock returns a Clock standing at t.
func NewClock(t time.Time) *Clock { return &Clock{t: t} }

// Now is the clock's time; pass it to New.
func (c *Clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

// Advance moves the clock on by d.
func (c *Clock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}
