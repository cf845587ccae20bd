package memstore

import (
	"context"
	"time"
)

// Watch tells the caller when key is settled (processor.Watcher):
// Complete, Release and Abandon prompt the key's watchers, as redisstore's
// scripts publish on the key's channel, and a settlement at or after since
// (the wall clock, the caller's last look) prompts at once. stop ends the
// watch.
func (s *Store) Watch(_ context.Context, key string, since time.Time) (<-chan time.Time, func(), error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	c := make(chan time.Time, 1)
	s.watchers[key] = append(s.watchers[key], c)
	if t, ok := s.settledAt[key]; ok && !t.Before(since) {
		c <- t
	}
	return c, func() { s.unwatch(key, c) }, nil
}

func (s *Store) unwatch(key string, c chan time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	ws := s.watchers[key]
	for i, w := range ws {
		if w == c {
			s.watchers[key] = append(ws[:i], ws[i+1:]...)
			break
		}
	}
	if len(s.watchers[key]) == 0 {
		delete(s.watchers, key)
	}
}

// Recheck prompts every watcher of every key, as redisstore's Watcher's
// slow timer does: a waiter whose notice was lost looks again.
func (s *Store) Recheck() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for key := range s.watchers {
		s.prompt(key)
	}
}

// Watching is how many watchers key has.
func (s *Store) Watching(key string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.watchers[key])
}

// LoseNotices makes settlements go unannounced while lose holds, as a
// Pub/Sub message lost on the way: only Recheck prompts the watchers then.
func (s *Store) LoseNotices(lose bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.quiet = lose
}

// settled announces key's settlement; s.mu is held.
func (s *Store) settled(key string) {
	if s.quiet {
		return
	}
	s.settledAt[key] = time.Now()
	s.prompt(key)
}

// prompt wakes key's watchers, one notice pending each at most; s.mu is
// held.
func (s *Store) prompt(key string) {
	now := time.Now()
	for _, c := range s.watchers[key] {
		select {
		case <-c:
		default:
		}
		c <- now
	}
}
