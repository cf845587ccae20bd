package redisstore

import (
	"errors"
	"fmt"
	"net"

	"github.com/redis/go-redis/v9"

	"github.com/idemproxy/idemproxy/internal/idem"
)

// refusedPrefixes are the error replies with which Redis refuses a script
// before it writes anything: out of memory (a script's first write is
// refused, and Redis lets a script that has written go on writing, so
// none is half done), a read-only replica, no script, a node still
// loading or busy with another script, a primary that lost its link, a
// cluster that is down, and the ACL and authentication refusals.
var refusedPrefixes = []string{"OOM", "READONLY", "NOSCRIPT", "LOADING", "BUSY", "MASTERDOWN",
	"MISCONF", "CLUSTERDOWN", "NOPERM", "NOAUTH", "WRONGPASS", "NOREPLICAS"}

// refusedOutright reports whether err says the call wrote nothing: Redis
// refused it with an error reply, or it was never sent (no connection
// could be dialled: go-redis's command retries are off, noRetries, so no
// earlier attempt went out either). Then no lock exists to give back. A
// timeout or a connection broken after the call was written is not: the
// call may have run.
func refusedOutright(err error) bool {
	var op *net.OpError
	if errors.As(err, &op) && op.Op == "dial" {
		return true
	}
	var rerr redis.Error
	if !errors.As(err, &rerr) {
		return false
	}
	for _, p := range refusedPrefixes {
		if redis.HasErrorPrefix(rerr, p) {
			return true
		}
	}
	return false
}

// notTaken wraps an acquire's err with idem.ErrNotTaken when Redis refused
// it outright, so the processor neither releases a lock that does not
// exist nor warns about one.
func notTaken(op string, err error) error {
	if refusedOutright(err) {
		return fmt.Errorf("redisstore: %s: %w: %w", op, idem.ErrNotTaken, err)
	}
	return fmt.Errorf("redisstore: %s: %w", op, err)
}
