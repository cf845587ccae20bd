package redisstore

import (
	"crypto/rand"
	"encoding/hex"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"

	"github.com/idemproxy/idemproxy/internal/idem"
	"github.com/idemproxy/idemproxy/internal/testenv/redistopo"
)

// newTestStore starts a Redis for one test and returns a store on it and a
// client for looking at what the store wrote.
func newTestStore(t *testing.T) (*Store, *redis.Client, *redistopo.Server) {
	t.Helper()
	srv := redistopo.Start(t)
	c := srv.Client(t)
	return New(c, Options{}), c, srv
}

// token returns a fresh owner token.
func token(t *testing.T) string {
	t.Helper()
	var b [16]byte
	_, err := rand.Read(b[:])
	require.NoError(t, err)
	return hex.EncodeToString(b[:])
}

// snapshot returns the fields and remaining TTL of the record for key.
func snapshot(t *testing.T, s *Store, c *redis.Client, key string) (map[string]string, time.Duration) {
	t.Helper()
	fields, err := c.HGetAll(t.Context(), s.RedisKey(key)).Result()
	require.NoError(t, err)
	ttl, err := c.PTTL(t.Context(), s.RedisKey(key)).Result()
	require.NoError(t, err)
	return fields, ttl
}

// binaryBytes holds every byte value, so it is not valid UTF-8 and holds NUL.
func binaryBytes() []byte {
	b := make([]byte, 256)
	for i := range b {
		b[i] = byte(255 - i)
	}
	return b
}

// sampleRecord is a response with repeated headers and a binary body.
func sampleRecord() idem.Record {
	return idem.Record{
		Fingerprint: []byte("\x00fp\xff"),
		Status:      201,
		Headers: []idem.Header{
			{Name: "set-cookie", Value: "a=1"},
			{Name: "content-type", Value: "application/octet-stream"},
			{Name: "set-cookie", Value: "b=2"},
		},
		Body:       binaryBytes(),
		BodyStored: true,
	}
}

func TestStore_Acquire(t *testing.T) {
	t.Parallel()
	s, c, _ := newTestStore(t)
	const lockTTL = 10 * time.Second

	t.Run("free key is acquired as an in-progress record", func(t *testing.T) {
		tok := token(t)
		acq, err := s.Acquire(t.Context(), "free", claim(tok, []byte("\x00fp"), lockTTL))
		require.NoError(t, err)
		require.Equal(t, idem.Acquisition{State: idem.StateAcquired, Fence: 1}, acq)

		fields, ttl := snapshot(t, s, c, "free")
		created, err := strconv.ParseInt(fields["ct"], 10, 64)
		require.NoError(t, err)
		require.EqualValues(t, lockTTL.Milliseconds(), leaseEnd(t, fields)-created, "the lease ends lockTTL after the grant")
		delete(fields, "ct")
		delete(fields, "lx")
		require.Equal(t, map[string]string{"st": "p", "tok": tok, "fp": "\x00fp", "fence": "1", "sc": "api.example"}, fields)
		require.Greater(t, ttl, time.Hour-time.Second, "the record outlives its lease: held for the hold")
		require.LessOrEqual(t, ttl, time.Hour)
	})

	t.Run("held key reports the holder's fingerprint and remaining lock", func(t *testing.T) {
		_, err := s.Acquire(t.Context(), "held", claim(token(t), []byte("first"), lockTTL))
		require.NoError(t, err)

		acq, err := s.Acquire(t.Context(), "held", claim(token(t), []byte("second"), time.Hour))
		require.NoError(t, err)
		require.Equal(t, idem.StateInProgress, acq.State)
		require.Equal(t, []byte("first"), acq.Fingerprint)
		require.Greater(t, acq.LockTTL, time.Duration(0))
		require.LessOrEqual(t, acq.LockTTL, lockTTL)
		require.Nil(t, acq.Record)
	})

	t.Run("the owner acquiring again gets its own grant back", func(t *testing.T) {
		// Tokens are per request, so the same token twice is a retry of
		// one acquire whose reply was lost (go-redis retries a command
		// on a broken connection, as in a failover). Answering "in
		// progress" would refuse a request that never ran, and leave its
		// lock to turn into an unknown outcome.
		tok := token(t)
		first, err := s.Acquire(t.Context(), "again", claim(tok, nil, lockTTL))
		require.NoError(t, err)
		acq, err := s.Acquire(t.Context(), "again", claim(tok, nil, lockTTL))
		require.NoError(t, err)
		require.Equal(t, idem.StateAcquired, acq.State)
		require.Equal(t, first.Fence, acq.Fence)
	})

	t.Run("completed key returns the full stored record", func(t *testing.T) {
		tok := token(t)
		_, err := s.Acquire(t.Context(), "done", claim(tok, []byte("\x00fp\xff"), lockTTL))
		require.NoError(t, err)
		rec := sampleRecord()
		require.NoError(t, s.Complete(t.Context(), "done", tok, rec, time.Hour))

		acq, err := s.Acquire(t.Context(), "done", claim(token(t), []byte("other"), lockTTL))
		require.NoError(t, err)
		require.Equal(t, idem.StateCompleted, acq.State)
		require.Equal(t, rec.Fingerprint, acq.Fingerprint)
		require.Equal(t, &rec, acq.Record)
	})

	t.Run("completed key without a stored body says so", func(t *testing.T) {
		tok := token(t)
		_, err := s.Acquire(t.Context(), "big", claim(tok, []byte("fp"), lockTTL))
		require.NoError(t, err)
		rec := idem.Record{Fingerprint: []byte("fp"), Status: 200, Body: []byte("dropped")}
		require.NoError(t, s.Complete(t.Context(), "big", tok, rec, time.Hour))

		acq, err := s.Acquire(t.Context(), "big", claim(token(t), nil, lockTTL))
		require.NoError(t, err)
		require.Equal(t, idem.StateCompleted, acq.State)
		require.False(t, acq.Record.BodyStored)
		require.Nil(t, acq.Record.Body)
		require.Empty(t, acq.Record.Headers)
		require.Equal(t, 200, acq.Record.Status)
	})

	t.Run("exactly one of many concurrent callers acquires", func(t *testing.T) {
		const callers = 64
		states := make(chan idem.State, callers)
		errs := make(chan error, callers)
		var wg sync.WaitGroup
		for range callers {
			tok := token(t)
			wg.Go(func() {
				acq, err := s.Acquire(t.Context(), "race", claim(tok, []byte(tok), lockTTL))
				errs <- err
				states <- acq.State
			})
		}
		wg.Wait()
		close(states)
		close(errs)
		for err := range errs {
			require.NoError(t, err)
		}
		count := map[idem.State]int{}
		for st := range states {
			count[st]++
		}
		require.Equal(t, map[idem.State]int{
			idem.StateAcquired:   1,
			idem.StateInProgress: callers - 1,
		}, count)
	})

	t.Run("a record stored by another program is a corrupt record", func(t *testing.T) {
		require.NoError(t, c.HSet(t.Context(), s.RedisKey("alien"), "st", "c", "fp", "x").Err())
		_, err := s.Acquire(t.Context(), "alien", claim(token(t), nil, lockTTL))
		require.ErrorIs(t, err, ErrCorruptRecord)
	})
}

func TestStore_Acquire_arguments(t *testing.T) {
	t.Parallel()
	// A nil client proves the arguments are refused before Redis is used.
	s := New(nil, Options{})
	t.Run("a hold shorter than the lease is refused", func(t *testing.T) {
		_, err := s.Acquire(t.Context(), "k", idem.Claim{Token: "tok", Lease: idem.Lease{TTL: time.Minute, Hold: time.Second}})
		require.ErrorIs(t, err, ErrInvalidArgument)
		require.ErrorIs(t, s.Renew(t.Context(), "k", "tok", idem.Lease{TTL: time.Minute}), ErrInvalidArgument)
	})
	for name, ttl := range map[string]time.Duration{"zero": 0, "negative": -time.Second} {
		t.Run(name+" lock TTL is refused", func(t *testing.T) {
			_, err := s.Acquire(t.Context(), "k", claim("tok", nil, ttl))
			require.ErrorIs(t, err, ErrInvalidArgument)
			require.ErrorIs(t, s.Renew(t.Context(), "k", "tok", lease(ttl)), ErrInvalidArgument)
			require.ErrorIs(t, s.Complete(t.Context(), "k", "tok", idem.Record{}, ttl), ErrInvalidArgument)
		})
	}
	t.Run("empty token is refused", func(t *testing.T) {
		_, err := s.Acquire(t.Context(), "k", claim("", nil, time.Second))
		require.ErrorIs(t, err, ErrInvalidArgument)
		require.ErrorIs(t, s.Renew(t.Context(), "k", "", lease(time.Second)), ErrInvalidArgument)
		require.ErrorIs(t, s.Complete(t.Context(), "k", "", idem.Record{}, time.Second), ErrInvalidArgument)
		require.ErrorIs(t, s.Release(t.Context(), "k", ""), ErrInvalidArgument)
	})
}

func TestMillis(t *testing.T) {
	t.Run("whole milliseconds are kept", func(t *testing.T) {
		require.Equal(t, int64(1500), millis(1500*time.Millisecond))
	})
	t.Run("fractions round up so at least 1 ms", func(t *testing.T) {
		require.Equal(t, int64(1), millis(time.Nanosecond))
		require.Equal(t, int64(2), millis(1001*time.Microsecond))
	})
}

func TestStore_RedisKey(t *testing.T) {
	s := New(nil, Options{})
	t.Run("same key gives the same redis key", func(t *testing.T) {
		require.Equal(t, s.RedisKey("a\x00b"), s.RedisKey("a\x00b"))
	})
	t.Run("different keys give different redis keys", func(t *testing.T) {
		require.NotEqual(t, s.RedisKey("a"), s.RedisKey("b"))
	})
	t.Run("key is prefixed, hashed and hash-tagged", func(t *testing.T) {
		secret := strings.Repeat("secret-", 1000)
		rk := s.RedisKey(secret)
		require.True(t, strings.HasPrefix(rk, DefaultPrefix+"{"), rk)
		require.True(t, strings.HasSuffix(rk, "}"), rk)
		require.Len(t, rk, len(DefaultPrefix)+34)
		require.NotContains(t, rk, "secret")
		_, err := hex.DecodeString(rk[len(DefaultPrefix)+1 : len(rk)-1])
		require.NoError(t, err)
	})
	t.Run("custom prefix is used", func(t *testing.T) {
		rk := New(nil, Options{Prefix: "app:"}).RedisKey("k")
		require.True(t, strings.HasPrefix(rk, "app:{"), rk)
	})
}

// claim is a claim with the default policy: a lease of lockTTL in a record
// held for at least an hour after it.
func claim(tok string, fp []byte, lockTTL time.Duration) idem.Claim {
	return idem.Claim{Token: tok, Fingerprint: fp, Scope: "api.example", Lease: lease(lockTTL)}
}

// lease is the default policy's lease of lockTTL (held an hour, or longer).
func lease(lockTTL time.Duration) idem.Lease {
	return idem.Lease{TTL: lockTTL, Hold: max(lockTTL, time.Hour)}
}

// takeover is the opt-in rerun-after-ttl lease: the record lives as long
// as its lease, and a lease that ran out frees the key.
func takeover(lockTTL time.Duration) idem.Lease {
	return idem.Lease{TTL: lockTTL, Takeover: true}
}
