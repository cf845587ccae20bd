package redisstore

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"

	"github.com/idemproxy/idemproxy/internal/testenv/redistopo"
)

// TestStore_lateAcquire: an acquire that reaches Redis only after its
// caller stopped waiting (here Redis is frozen while the call times out,
// then thawed, so the command sitting in its socket runs late, as one
// retransmitted after a partition does) creates no lock. Without the
// deadline, the same late command creates a lock nobody will renew or
// release, and the key reads as in progress, then unknown, for the whole
// retention, though its request never ran.
func TestStore_lateAcquire(t *testing.T) {
	t.Parallel()
	srv := redistopo.Start(t)
	topo, err := Connect(ConnectOptions{Mode: ModeStandalone, URL: srv.URL(), Timeout: time.Second})
	require.NoError(t, err)
	t.Cleanup(func() { _ = topo.Close() })
	refresh(t, topo) // reads the primary's clock
	withDeadline := New(topo.Client(), Options{Topology: topo})
	without := New(topo.Client(), Options{})
	// Load the script: a late EVALSHA of an unknown script would only be
	// answered NOSCRIPT, which proves nothing.
	acquired(t, without, "warm", time.Minute)

	for _, c := range []struct {
		name   string
		s      *Store
		locked bool
	}{
		{"with the deadline, no lock", withDeadline, false},
		{"without it, a lock nobody holds", without, true},
	} {
		t.Run(c.name, func(t *testing.T) {
			plain := srv.Client(t)
			// The scenario needs the acquire on the wire before the server
			// froze; go-redis may put it behind a new connection's
			// handshake instead, which is then late too and the script is
			// never sent. So it is tried until the script ran late (Redis
			// counted one more call), at most five times.
			for try := range 5 {
				key := fmt.Sprintf("late-%s-%d", c.name, try)
				before := evalshaCalls(t, plain)
				require.NoError(t, topo.Client().Ping(t.Context()).Err()) // a warm connection on top of the pool
				require.NoError(t, srv.Pause())
				ctx, cancel := context.WithTimeout(t.Context(), 200*time.Millisecond)
				_, err := c.s.Acquire(ctx, key, claim(token(t), []byte("fp"), time.Minute))
				cancel()
				require.NoError(t, srv.Resume())
				require.True(t, errors.Is(err, context.DeadlineExceeded) || isTimeout(err), "the caller gave up: %v", err)
				// The server serves what it had read in order: once a
				// command sent now is answered, the late one has run.
				require.NoError(t, plain.Ping(t.Context()).Err())
				if evalshaCalls(t, plain) == before {
					continue // never sent: try again
				}
				n, err := plain.Exists(t.Context(), withDeadline.RedisKey(key)).Result()
				require.NoError(t, err)
				if c.locked {
					require.EqualValues(t, 1, n, "the late acquire created a lock")
				} else {
					require.Zero(t, n, "the late acquire created nothing")
				}
				return
			}
			t.Fatal("in 5 tries the acquire never reached Redis late")
		})
	}
}

// evalshaCalls is how many EVALSHA calls Redis counted.
func evalshaCalls(t *testing.T, c *redis.Client) int {
	t.Helper()
	info, err := c.Info(t.Context(), "commandstats").Result()
	require.NoError(t, err)
	line := parseInfo(info)["cmdstat_evalsha"]
	calls, _, _ := strings.Cut(strings.TrimPrefix(line, "calls="), ",")
	n, _ := strconv.Atoi(calls)
	return n
}

// isTimeout reports a network timeout (go-redis's read deadline).
func isTimeout(err error) bool {
	var te interface{ Timeout() bool }
	return errors.As(err, &te) && te.Timeout()
}
