package processor

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/require"
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
