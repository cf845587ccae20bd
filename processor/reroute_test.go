package processor

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/require"

	"github.com/idemproxy/idemproxy/internal/idem"
)

// fakeReplays issues numbered tokens, or fails with err.
type fakeReplays struct {
	mu     sync.Mutex
	issued []string // the keys tokens were issued for
	err    error
}

var _ Replays = (*fakeReplays)(nil)

func (f *fakeReplays) IssueReplay(_ context.Context, key string, ttl time.Duration) (string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.err != nil {
		return "", f.err
	}
	if ttl != DefaultReplayTTL {
		return "", errors.New("unexpected ttl")
	}
	f.issued = append(f.issued, key)
	return "token-" + key, nil
}

// newReplayServer is newTestServer with a replay endpoint's tokens.
func newReplayServer(t *testing.T, store Store, replays Replays, mut func(*Config)) (*Server, *prometheus.Registry) {
	t.Helper()
	return newServerWith(t, store, mut, func(o *Options) { o.Replays = replays })
}

func TestServer_Process_replayViaEndpoint(t *testing.T) {
	first := func(t *testing.T, srv *Server) {
		t.Helper()
		out, err := run(t, srv, endEOF, keyed("POST", "k", true), respHeaders(false, ":status", "200", "content-type", "application/grpc", "trailer", "x-checksum"),
			respBody("data", false), respTrailers())
		require.NoError(t, err)
		require.Len(t, out, 4)
	}
	t.Run("a response with trailers is stored with them and replayed through the endpoint", func(t *testing.T) {
		store, replays := newFakeStore(), &fakeReplays{}
		srv, reg := newReplayServer(t, store, replays, nil)
		first(t, srv)
		e, _ := store.entry(keyOf("k"))
		require.True(t, e.rec.BodyStored)
		require.True(t, e.rec.Trailers)
		require.Equal(t, "data", string(e.rec.Body))
		require.Equal(t, "x-checksum", e.rec.TrailerHeaders[0].Name)
		require.Equal(t, "x-checksum", headerGet(e.rec.Headers, "trailer"), "the announcement goes with the trailers")

		retry, err := run(t, srv, endEOF, keyed("POST", "k", true))
		require.NoError(t, err)
		require.Nil(t, retry[0].GetImmediateResponse(), "not an immediate response")
		common, ok := commonOf(retry[0])
		require.True(t, ok)
		require.True(t, common.GetClearRouteCache())
		set := common.GetHeaderMutation().GetSetHeaders()
		require.Len(t, set, 3)
		require.Equal(t, ReplayHeader, set[0].GetHeader().GetKey())
		require.Equal(t, "token-"+keyOf("k"), string(set[0].GetHeader().GetRawValue()))
		require.Equal(t, ":path", set[1].GetHeader().GetKey())
		require.Equal(t, ReplayPath, string(set[1].GetHeader().GetRawValue()))
		require.Nil(t, common.GetBodyMutation(), "a bodiless request has no body to clear")
		require.EqualValues(t, 1, counter(t, reg, "idemproxy_requests_total", "outcome", outcomeReplayed))
	})
	t.Run("a retry with a body goes without it", func(t *testing.T) {
		store, replays := newFakeStore(), &fakeReplays{}
		srv, _ := newReplayServer(t, store, replays, nil)
		for range 2 {
			out, err := run(t, srv, endEOF, keyed("POST", "kb", false), reqBody(`{"amount":5}`, true),
				respHeaders(false, ":status", "200", "content-type", "application/grpc"), respBody("data", false), respTrailers())
			require.NoError(t, err)
			common, _ := commonOf(out[1])
			if len(replays.issued) == 0 {
				require.Nil(t, common.GetBodyMutation(), "the first request runs as sent")
				continue
			}
			require.True(t, common.GetClearRouteCache())
			require.True(t, common.GetBodyMutation().GetClearBody(), "the re-routed retry carries no body")
		}
	})
	t.Run("the response to a re-routed replay must come from the endpoint", func(t *testing.T) {
		store, replays := newFakeStore(), &fakeReplays{}
		srv, reg := newReplayServer(t, store, replays, nil)
		first(t, srv)
		for _, c := range []struct {
			name    string
			headers []string
			served  bool
		}{
			{"the endpoint's replay", []string{":status", "200", "idempotent-replayed", "true"}, true},
			{"the endpoint's refusal of a spent token", []string{":status", "503", "idempotency-problem", replayUnavailable}, true},
			{"the upstream (no replay route)", []string{":status", "404"}, false},
			{"the endpoint refusing Envoy (no bearer token)", []string{":status", "401", "www-authenticate", "Bearer"}, false},
		} {
			out, err := run(t, srv, endEOF, keyed("POST", "k", true), respHeaders(true, c.headers...))
			require.NoError(t, err, c.name)
			require.Len(t, out, 2, c.name)
			if c.served {
				require.Nil(t, out[1].GetImmediateResponse(), c.name)
				continue
			}
			requireProblem(t, out[1], 500, "misconfigured")
		}
		require.Len(t, replays.issued, 4)
		require.EqualValues(t, 2, counter(t, reg, "idemproxy_responses_total", "result", resultReplayMisrouted))
	})
	t.Run("a token the store cannot issue refuses the retry: 503, nothing runs", func(t *testing.T) {
		store, replays := newFakeStore(), &fakeReplays{}
		srv, _ := newReplayServer(t, store, replays, nil)
		first(t, srv)
		replays.err = errors.New("redis down")
		retry, err := run(t, srv, endEOF, keyed("POST", "k", true))
		require.NoError(t, err)
		requireProblem(t, retry[0], 503, "store-unavailable")
		require.Len(t, store.callsOf("acquire"), 2)
	})
	t.Run("every replay goes through the endpoint with ReplayAllViaEndpoint, none without", func(t *testing.T) {
		for _, all := range []bool{false, true} {
			store, replays := newFakeStore(), &fakeReplays{}
			srv, _ := newReplayServer(t, store, replays, func(c *Config) { c.ReplayAllViaEndpoint = all })
			_, err := run(t, srv, endEOF, keyed("POST", "k", true), respHeaders(false, ":status", "201"), respBody("{}", true))
			require.NoError(t, err)
			retry, err := run(t, srv, endEOF, keyed("POST", "k", true))
			require.NoError(t, err)
			if all {
				common, _ := commonOf(retry[0])
				require.True(t, common.GetClearRouteCache())
				require.Len(t, replays.issued, 1)
			} else {
				require.NotNil(t, retry[0].GetImmediateResponse())
				require.Empty(t, replays.issued)
			}
		}
	})
	t.Run("in shadow mode the retry goes upstream without a token", func(t *testing.T) {
		store, replays := newFakeStore(), &fakeReplays{}
		srv, reg := newReplayServer(t, store, replays, func(c *Config) { c.Mode = ModeShadow })
		first(t, srv)
		retry, err := run(t, srv, endEOF, keyed("POST", "k", true))
		require.NoError(t, err)
		requireContinue(t, retry[0])
		require.Empty(t, replays.issued)
		require.EqualValues(t, 1, counter(t, reg, "idemproxy_shadow_decisions_total", "would", outcomeReplayed))
	})
}

// hasSeries says whether reg has a series of metric name whose label has
// value.
func hasSeries(t *testing.T, reg *prometheus.Registry, name, label, value string) bool {
	t.Helper()
	mfs, err := reg.Gather()
	require.NoError(t, err)
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			for _, lp := range m.GetLabel() {
				if mf.GetName() == name && lp.GetName() == label && lp.GetValue() == value {
					return true
				}
			}
		}
	}
	return false
}

// replayToken is the token a re-routed replay carries.
func replayToken(t *testing.T, out []*extprocv3.ProcessingResponse) string {
	t.Helper()
	common, ok := commonOf(out[0])
	require.True(t, ok)
	require.True(t, common.GetClearRouteCache(), "re-routed")
	set := common.GetHeaderMutation().GetSetHeaders()
	require.Equal(t, ReplayHeader, set[0].GetHeader().GetKey())
	return string(set[0].GetHeader().GetRawValue())
}

// TestServer_Process_replayTokenFromAcquire: the acquire asks for the
// replay token (two round trips for a replay through the endpoint, not
// three), the processor uses the one it got, and issues one itself only
// when it got none.
func TestServer_Process_replayTokenFromAcquire(t *testing.T) {
	trailers := func(t *testing.T, srv *Server, key string) {
		t.Helper()
		_, err := run(t, srv, endEOF, keyed("POST", key, true), respHeaders(false, ":status", "200", "content-type", "application/grpc"),
			respBody("data", false), respTrailers())
		require.NoError(t, err)
	}
	t.Run("a replay with trailers goes with the acquire's token: no IssueReplay, no issue_replay latency", func(t *testing.T) {
		store, replays := newFakeStore(), &fakeReplays{}
		store.issuesReplays = true
		srv, reg := newReplayServer(t, store, replays, nil)
		trailers(t, srv, "k")
		retry, err := run(t, srv, endEOF, keyed("POST", "k", true))
		require.NoError(t, err)
		require.Equal(t, "acquired-"+keyOf("k"), replayToken(t, retry))
		require.Empty(t, replays.issued)
		require.False(t, hasSeries(t, reg, "idemproxy_redis_duration_seconds", "op", "issue_replay"))
		for _, c := range store.callsOf("acquire") {
			require.Equal(t, idem.ReplayAsk{TTL: DefaultReplayTTL}, c.replay, "every acquire asks, trailers only")
		}
		require.EqualValues(t, 1, counter(t, reg, "idemproxy_requests_total", "outcome", outcomeReplayed))
	})
	t.Run("with ReplayAllViaEndpoint every replay goes with the acquire's token, with its ReplayTTL", func(t *testing.T) {
		store, replays := newFakeStore(), &fakeReplays{}
		store.issuesReplays = true
		srv, _ := newServerWith(t, store, func(c *Config) { c.ReplayAllViaEndpoint = true },
			func(o *Options) { o.Replays, o.ReplayTTL = replays, 3*time.Second })
		_, err := run(t, srv, endEOF, keyed("POST", "k", true), respHeaders(false, ":status", "201"), respBody("{}", true))
		require.NoError(t, err)
		retry, err := run(t, srv, endEOF, keyed("POST", "k", true))
		require.NoError(t, err)
		require.Equal(t, "acquired-"+keyOf("k"), replayToken(t, retry))
		require.Empty(t, replays.issued)
		require.Equal(t, idem.ReplayAsk{TTL: 3 * time.Second, All: true}, store.callsOf("acquire")[1].replay)
	})
	t.Run("without a token from the acquire the processor issues one", func(t *testing.T) {
		store, replays := newFakeStore(), &fakeReplays{}
		srv, reg := newReplayServer(t, store, replays, nil)
		trailers(t, srv, "k")
		retry, err := run(t, srv, endEOF, keyed("POST", "k", true))
		require.NoError(t, err)
		require.Equal(t, "token-"+keyOf("k"), replayToken(t, retry))
		require.Equal(t, []string{keyOf("k")}, replays.issued)
		require.EqualValues(t, 1, histogramCount(t, reg, "idemproxy_redis_duration_seconds", "op", "issue_replay"))
	})
	t.Run("no token is asked for without a replay endpoint, nor in shadow mode", func(t *testing.T) {
		for _, c := range []struct {
			name    string
			replays Replays
			mode    Mode
		}{{"no endpoint", nil, ModeEnforce}, {"shadow", &fakeReplays{}, ModeShadow}} {
			store := newFakeStore()
			store.issuesReplays = true
			srv, _ := newServerWith(t, store, func(cfg *Config) { cfg.Mode, cfg.ReplayAllViaEndpoint = c.mode, true },
				func(o *Options) { o.Replays = c.replays })
			trailers(t, srv, "k")
			_, err := run(t, srv, endEOF, keyed("POST", "k", true))
			require.NoError(t, err)
			for _, call := range store.callsOf("acquire") {
				require.Zero(t, call.replay, c.name)
			}
		}
	})
	t.Run("a waiting duplicate's replay (a shared read, no token) gets one from IssueReplay", func(t *testing.T) {
		store, replays := newFakeStore(), &fakeReplays{}
		store.issuesReplays = true
		srv, _ := newServerWith(t, store, func(c *Config) { waitConfig(10 * time.Second)(c); c.ReplayAllViaEndpoint = true },
			func(o *Options) { o.Replays, o.Watcher = replays, store })
		first := serve(t, srv)
		requireContinue(t, first.roundTrip(keyed("POST", "k", true)))
		dup := startWaiter(t, srv, store)
		first.roundTrip(respHeaders(false, ":status", "201"))
		first.roundTrip(respBody("charged", true))
		require.Equal(t, "token-"+keyOf("k"), replayToken(t, []*extprocv3.ProcessingResponse{dup.reply()}))
		require.Equal(t, []string{keyOf("k")}, replays.issued)
		dup.end(endEOF)
		require.NoError(t, dup.wait())
	})
	t.Run("a token issued with a record another fingerprint refuses is never used", func(t *testing.T) {
		store, replays := newFakeStore(), &fakeReplays{}
		store.issuesReplays = true
		srv, _ := newReplayServer(t, store, replays, nil)
		trailers(t, srv, "k")
		out, err := run(t, srv, endEOF, keyed("PUT", "k", true))
		require.NoError(t, err)
		requireProblem(t, out[0], 422, "fingerprint-mismatch")
		require.Empty(t, replays.issued)
	})
}
