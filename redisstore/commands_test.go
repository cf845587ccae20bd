package redisstore

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/idemproxy/idemproxy/internal/idem"
)

// TestScripts_commandsPerOperation counts the Redis commands each script
// runs (INFO commandstats counts those called from Lua), per operation, on
// the paths that matter: the cost in Redis CPU of a new key, a replay and
// a duplicate. A change that adds one must say so here.
func TestScripts_commandsPerOperation(t *testing.T) {
	t.Parallel()
	s, c, _ := newTestStore(t)
	fp := sampleRecord().Fingerprint
	// measure runs op and returns the commands it ran inside its script,
	// by name.
	measure := func(op func()) map[string]int {
		t.Helper()
		require.NoError(t, c.ConfigResetStat(t.Context()).Err())
		op()
		calls := commandCalls(t, c)
		for _, outside := range []string{"config|resetstat", "evalsha", "eval", "info"} {
			delete(calls, outside)
		}
		return calls
	}
	// Load the scripts, so no NOSCRIPT fallback is counted.
	tok := acquired(t, s, "warm", time.Minute)
	require.NoError(t, s.Complete(t.Context(), "warm", tok, sampleRecord(), time.Hour))
	tok = acquired(t, s, "warm-2", time.Minute)
	require.NoError(t, s.Renew(t.Context(), "warm-2", tok, lease(time.Minute)))
	require.NoError(t, s.Release(t.Context(), "warm-2", tok))
	tok = acquired(t, s, "warm-3", time.Minute)
	require.NoError(t, s.Abandon(t.Context(), "warm-3", tok, time.Hour))
	_, err := s.Peek(t.Context(), "warm-3")
	require.NoError(t, err)

	acquire := func(key string, wait bool) idem.Acquisition {
		cl := claim(token(t), fp, time.Minute)
		cl.Wait = wait
		acq, err := s.Acquire(t.Context(), key, cl)
		require.NoError(t, err)
		return acq
	}
	var owner string
	cases := []struct {
		name string
		op   func()
		want map[string]int
	}{
		{"acquire, new key", func() {
			cl := claim(token(t), fp, time.Minute)
			owner = cl.Token
			acq, err := s.Acquire(t.Context(), "k", cl)
			require.NoError(t, err)
			require.Equal(t, idem.StateAcquired, acq.State)
		}, map[string]int{"hmget": 1, "time": 1, "incr": 1, "pexpire": 2, "hset": 1}},
		{"acquire, in progress (409)", func() {
			require.Equal(t, idem.StateInProgress, acquire("k", false).State)
		}, map[string]int{"hmget": 1, "time": 1}},
		{"renew", func() {
			require.NoError(t, s.Renew(t.Context(), "k", owner, lease(time.Minute)))
		}, map[string]int{"hmget": 1, "time": 1, "hset": 1, "pexpire": 1}},
		{"complete, nobody waits", func() {
			require.NoError(t, s.Complete(t.Context(), "k", owner, sampleRecord(), time.Hour))
		}, map[string]int{"hmget": 1, "del": 1, "hset": 1, "pexpire": 1}},
		{"acquire, completed (replay)", func() {
			require.Equal(t, idem.StateCompleted, acquire("k", false).State)
		}, map[string]int{"hmget": 1}},
		{"acquire, completed, a replay token asked for (replay through the endpoint)", func() {
			cl := claim(token(t), fp, time.Minute)
			cl.Replay = idem.ReplayAsk{TTL: time.Second, All: true}
			acq, err := s.Acquire(t.Context(), "k", cl)
			require.NoError(t, err)
			require.NotEmpty(t, acq.ReplayToken)
		}, map[string]int{"hmget": 1, "set": 1}},
		{"acquire, in progress, the caller waits", func() {
			owner = acquired(t, s, "w", time.Minute)
			require.NoError(t, c.ConfigResetStat(t.Context()).Err())
			require.Equal(t, idem.StateInProgress, acquire("w", true).State)
		}, map[string]int{"hmget": 1, "time": 1, "hset": 1}},
		{"complete, waited on", func() {
			require.NoError(t, s.Complete(t.Context(), "w", owner, sampleRecord(), time.Hour))
		}, map[string]int{"hmget": 1, "del": 1, "hset": 1, "pexpire": 1, "spublish": 1}},
		{"peek, completed", func() {
			acq, err := s.Peek(t.Context(), "w")
			require.NoError(t, err)
			require.Equal(t, idem.StateCompleted, acq.State)
		}, map[string]int{"hmget": 1}},
		{"peek, in progress (marks it waited on)", func() {
			acquired(t, s, "p", time.Minute)
			require.NoError(t, c.ConfigResetStat(t.Context()).Err())
			acq, err := s.Peek(t.Context(), "p")
			require.NoError(t, err)
			require.Equal(t, idem.StateInProgress, acq.State)
		}, map[string]int{"hmget": 1, "time": 1, "hset": 1}},
		{"peek, free", func() {
			acq, err := s.Peek(t.Context(), "nothing")
			require.NoError(t, err)
			require.Equal(t, idem.StateFree, acq.State)
		}, map[string]int{"hmget": 1}},
		{"release", func() {
			tok := acquired(t, s, "r", time.Minute)
			require.NoError(t, c.ConfigResetStat(t.Context()).Err())
			require.NoError(t, s.Release(t.Context(), "r", tok))
		}, map[string]int{"hmget": 1, "del": 1}},
		{"abandon", func() {
			tok := acquired(t, s, "a", time.Minute)
			require.NoError(t, c.ConfigResetStat(t.Context()).Err())
			require.NoError(t, s.Abandon(t.Context(), "a", tok, time.Hour))
		}, map[string]int{"hmget": 1, "hset": 1, "hdel": 1, "pexpire": 1}},
	}
	total := map[string]int{}
	for _, tc := range cases {
		got := measure(tc.op)
		require.Equal(t, tc.want, got, tc.name)
		n := 0
		for _, v := range got {
			n += v
		}
		total[tc.name] = n
	}
	t.Logf("commands inside the scripts: new key %d (acquire %d + complete %d), replay %d, duplicate %d",
		total["acquire, new key"]+total["complete, nobody waits"], total["acquire, new key"],
		total["complete, nobody waits"], total["acquire, completed (replay)"], total["acquire, in progress (409)"])
}
