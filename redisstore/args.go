package redisstore

import (
	"fmt"
	"time"

	"github.com/idemproxy/idemproxy/internal/idem"
)

// checkLease validates a lease and returns it and the in-progress record's
// key TTL in milliseconds: the hold (--retention), so the record outlives
// a crashed owner, or with takeover the lease itself, as the previous
// version did. Takeover is --on-unknown=rerun-after-ttl (processor's
// Config.RerunAfterTTL; ARGV[6] of acquire.lua).
func checkLease(op, token string, l idem.Lease) (lease, keyTTL int64, err error) {
	if lease, err = checkArgs(op, token, "lease", l.TTL); err != nil {
		return 0, 0, err
	}
	if l.Takeover {
		return lease, lease, nil
	}
	if l.Hold < l.TTL {
		return 0, 0, fmt.Errorf("%w: %s: hold %v is shorter than the lease %v", ErrInvalidArgument, op, l.Hold, l.TTL)
	}
	return lease, millis(l.Hold), nil
}

// checkArgs validates a call and converts its TTL to whole milliseconds,
// rounded up and at least 1: PEXPIRE with 0 would delete the key at once.
// An empty token is refused because it would let any empty token match.
func checkArgs(op, token, what string, ttl time.Duration) (int64, error) {
	if token == "" {
		return 0, fmt.Errorf("%w: %s: empty token", ErrInvalidArgument, op)
	}
	if ttl <= 0 {
		return 0, fmt.Errorf("%w: %s: %s %v is not positive", ErrInvalidArgument, op, what, ttl)
	}
	return millis(ttl), nil
}

// millis converts a positive duration to milliseconds, rounding up so a
// lock or retention is never shorter than asked.
func millis(d time.Duration) int64 {
	ms := int64(d / time.Millisecond)
	if d%time.Millisecond != 0 {
		ms++
	}
	return ms
}

// owned maps the 1/0 reply of the owner-checked scripts to an error.
func owned(op string, n int64, err error) error {
	switch {
	case err != nil:
		return fmt.Errorf("redisstore: %s: %w", op, err)
	case n == 0:
		return fmt.Errorf("redisstore: %s: %w", op, idem.ErrLeaseLost)
	case n == 1:
		return nil
	default:
		return fmt.Errorf("%w: %s: unexpected reply %d", ErrCorruptRecord, op, n)
	}
}
