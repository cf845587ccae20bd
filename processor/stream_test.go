package processor

import (
	"errors"
	"testing"
	"time"

	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

func TestServer_Process_endAfterForward(t *testing.T) {
	// The request went upstream and no response headers were seen: the
	// outcome is unknown, so the key is held (never released) and refused.
	for _, kind := range endKinds {
		t.Run("before the response by "+string(kind), func(t *testing.T) {
			store := newFakeStore()
			srv, reg := newTestServer(t, store, nil)
			out, err := run(t, srv, kind, keyed("POST", "k", true))
			require.NoError(t, err)
			require.Len(t, out, 1)
			require.Equal(t, []string{"acquire", "abandon"}, store.ops(), "held, neither released nor completed")
			e, held := store.entry(keyOf("k"))
			require.True(t, held)
			require.Nil(t, e.rec)
			require.True(t, e.unknown)
			require.False(t, watchdogRunning(srv), "the watchdog stops with the stream")
			require.EqualValues(t, 1, counter(t, reg, "idemproxy_responses_total", "result", resultUnknownOutcome))
		})
	}
	// Once the upstream's status arrived the request ran: a missing body
	// makes the outcome known but not replayable, stored without the body.
	type exchangeMsgs struct {
		request, response []*extprocv3.ProcessingRequest
	}
	cases := map[string]exchangeMsgs{
		"after the response headers": {
			[]*extprocv3.ProcessingRequest{keyed("POST", "k", true)},
			[]*extprocv3.ProcessingRequest{respHeaders(false, ":status", "200")}},
		"during the response body": {
			[]*extprocv3.ProcessingRequest{keyed("POST", "k", false), reqBody("b", true)},
			[]*extprocv3.ProcessingRequest{respHeaders(false, ":status", "200"), respBody("partial", false)}},
	}
	for name, c := range cases {
		reqs := append(append([]*extprocv3.ProcessingRequest{}, c.request...), c.response...)
		for _, kind := range endKinds {
			t.Run(name+" by "+string(kind), func(t *testing.T) {
				store := newFakeStore()
				srv, reg := newTestServer(t, store, nil)
				out, err := run(t, srv, kind, reqs...)
				require.NoError(t, err)
				require.Len(t, out, len(reqs))
				require.Equal(t, []string{"acquire", "complete"}, store.ops())
				e, held := store.entry(keyOf("k"))
				require.True(t, held)
				require.NotNil(t, e.rec)
				require.Equal(t, 200, e.rec.Status)
				require.False(t, e.rec.BodyStored)
				require.True(t, e.rec.Incomplete)
				require.Empty(t, e.rec.Body, "no partial body is kept")
				require.False(t, watchdogRunning(srv), "the watchdog stops with the stream")
				require.EqualValues(t, 1, counter(t, reg, "idemproxy_responses_total", "result", resultStoredIncomplete))

				retry, err := run(t, srv, endEOF, c.request...)
				require.NoError(t, err)
				p, _ := requireProblem(t, retry[len(retry)-1], 409, "response-not-stored")
				require.Contains(t, p.Detail, "status 200")
				require.Contains(t, p.Detail, "never reached the proxy in full")
			})
		}
	}
}

func TestServer_Process_endBeforeAcquire(t *testing.T) {
	for _, kind := range endKinds {
		t.Run("ended by "+string(kind), func(t *testing.T) {
			store := newFakeStore()
			srv, _ := newTestServer(t, store, nil)
			out, err := run(t, srv, kind, keyed("POST", "k", false))
			require.NoError(t, err)
			require.Len(t, out, 1)
			require.Empty(t, store.callsOf(""))
		})
	}
	t.Run("with no message at all", func(t *testing.T) {
		store := newFakeStore()
		srv, _ := newTestServer(t, store, nil)
		out, err := run(t, srv, endCanceled)
		require.NoError(t, err)
		require.Empty(t, out)
		require.Empty(t, store.callsOf(""))
	})
}

func TestServer_Process_sendFailsAfterAcquire(t *testing.T) {
	tests := []struct {
		name string
		reqs []*extprocv3.ProcessingRequest
		fail int
	}{
		{"continue of the headers", []*extprocv3.ProcessingRequest{keyed("POST", "k", true)}, 1},
		{"continue of the body", []*extprocv3.ProcessingRequest{keyed("POST", "k", false), reqBody("b", true)}, 2},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			store := newFakeStore()
			srv, reg := newTestServer(t, store, nil)
			st := newFakeStream(t.Context())
			st.failSendAt = tc.fail
			s := serveStream(t, srv, st)
			for _, r := range tc.reqs {
				s.send(r)
			}
			require.NoError(t, s.wait())

			// The CONTINUE never reached Envoy: the request is not upstream.
			require.Equal(t, []string{"acquire", "release"}, store.ops())
			calls := store.callsOf("")
			require.Equal(t, calls[0].token, calls[1].token)
			require.Error(t, st.ctx.Err())
			require.NoError(t, calls[1].ctxErr, "release must not run on the dead stream's context")
			require.True(t, calls[1].hasDeadline, "release must have its own timeout")
			_, held := store.entry(keyOf("k"))
			require.False(t, held)
			require.False(t, watchdogRunning(srv))
			require.EqualValues(t, 1, counter(t, reg, "idemproxy_responses_total", "result", resultReleasedEarly))
		})
	}
}

func TestServer_Process_recvError(t *testing.T) {
	store := newFakeStore()
	srv, _ := newTestServer(t, store, nil)
	s := serve(t, srv)
	requireContinue(t, s.roundTrip(keyed("POST", "k", true)))
	broken := status.Error(codes.Unavailable, "transport is closing")
	s.st.in <- streamItem{err: broken}
	require.ErrorIs(t, s.wait(), broken)
	require.Equal(t, []string{"acquire", "abandon"}, store.ops(), "the request may be upstream: held, no release")
}

func TestServer_Process_protocolViolations(t *testing.T) {
	tests := []struct {
		name string
		reqs []*extprocv3.ProcessingRequest
	}{
		{"message without a request", []*extprocv3.ProcessingRequest{{}}},
		{"request headers twice", []*extprocv3.ProcessingRequest{keyed("POST", "k", false), keyed("POST", "k", false)}},
		{"streamed request body", []*extprocv3.ProcessingRequest{keyed("POST", "k", false), reqBody("part", false)}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			store := newFakeStore()
			srv, _ := newTestServer(t, store, nil)
			s := serve(t, srv)
			for _, r := range tc.reqs {
				s.send(r)
			}
			err := s.wait()
			require.Equal(t, codes.InvalidArgument, status.Code(err), "got %v", err)
			require.Len(t, s.st.out, len(tc.reqs)-1, "every valid message before got its reply")
			require.Empty(t, store.callsOf(""))
		})
	}
}

func TestServer_Process_oddButValidMessages(t *testing.T) {
	tests := []struct {
		name  string
		req   *extprocv3.ProcessingRequest
		check func(*testing.T, *extprocv3.ProcessingResponse)
	}{
		{"body before headers", reqBody("x", true), requireContinue},
		{"response headers without a lock", respHeaders(false, ":status", "200"), func(t *testing.T, r *extprocv3.ProcessingResponse) {
			require.NotNil(t, r.GetResponseHeaders())
			require.Equal(t, "NONE", r.GetModeOverride().GetResponseBodyMode().String())
		}},
		{"response body without a lock", respBody("x", true), requireContinue},
		{"request trailers", &extprocv3.ProcessingRequest{Request: &extprocv3.ProcessingRequest_RequestTrailers{}},
			func(t *testing.T, r *extprocv3.ProcessingResponse) { require.NotNil(t, r.GetRequestTrailers()) }},
		{"response trailers", &extprocv3.ProcessingRequest{Request: &extprocv3.ProcessingRequest_ResponseTrailers{
			ResponseTrailers: &extprocv3.HttpTrailers{}}},
			func(t *testing.T, r *extprocv3.ProcessingResponse) { require.NotNil(t, r.GetResponseTrailers()) }},
		{"nil request headers", &extprocv3.ProcessingRequest{Request: &extprocv3.ProcessingRequest_RequestHeaders{}},
			func(t *testing.T, r *extprocv3.ProcessingResponse) { requireSkipRest(t, r.GetModeOverride()) }},
		{"request headers without a header map", &extprocv3.ProcessingRequest{Request: &extprocv3.ProcessingRequest_RequestHeaders{
			RequestHeaders: &extprocv3.HttpHeaders{EndOfStream: true}}},
			func(t *testing.T, r *extprocv3.ProcessingResponse) { requireSkipRest(t, r.GetModeOverride()) }},
		{"nil response headers", &extprocv3.ProcessingRequest{Request: &extprocv3.ProcessingRequest_ResponseHeaders{}},
			func(t *testing.T, r *extprocv3.ProcessingResponse) { require.NotNil(t, r.GetResponseHeaders()) }},
		{"nil request body", &extprocv3.ProcessingRequest{Request: &extprocv3.ProcessingRequest_RequestBody{}}, requireContinue},
		{"nil response body", &extprocv3.ProcessingRequest{Request: &extprocv3.ProcessingRequest_ResponseBody{}}, requireContinue},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			store := newFakeStore()
			srv, _ := newTestServer(t, store, nil)
			out, err := run(t, srv, endEOF, tc.req)
			require.NoError(t, err)
			require.Len(t, out, 1)
			tc.check(t, out[0])
			require.Empty(t, store.callsOf(""))
		})
	}
}

func TestServer_Process_nilHeadersAfterAcquire(t *testing.T) {
	// Response headers without :status cannot be stored: release the key.
	store := newFakeStore()
	srv, _ := newTestServer(t, store, nil)
	out, err := run(t, srv, endEOF, keyed("POST", "k", true),
		&extprocv3.ProcessingRequest{Request: &extprocv3.ProcessingRequest_ResponseHeaders{}})
	require.NoError(t, err)
	require.Len(t, out, 2)
	require.Equal(t, "NONE", out[1].GetModeOverride().GetResponseBodyMode().String())
	require.Equal(t, []string{"acquire", "release"}, store.ops())
}

func TestServer_Process_releaseErrorIsSwallowed(t *testing.T) {
	store := newFakeStore()
	store.failOn("release", errors.New("redis: i/o timeout"))
	srv, reg := newTestServer(t, store, func(c *Config) { c.FinalizeTimeout, c.FinalizeUntilLease = 300*time.Millisecond, false })
	out, err := run(t, srv, endEOF, keyed("POST", "k", true), respHeaders(false, ":status", "429"))
	require.NoError(t, err)
	require.Len(t, out, 2, "the client's answer does not wait for the store")
	ops := store.ops()
	require.Equal(t, "acquire", ops[0])
	require.Greater(t, len(ops), 2, "retried after the stream until the finalize timeout")
	for _, op := range ops[1:] {
		require.Equal(t, "release", op)
	}
	// Every attempt after the first is a retry.
	require.EqualValues(t, len(ops)-2, counter(t, reg, "idemproxy_store_retries_total", "op", "release"))
}

func TestServer_Process_settleRetries(t *testing.T) {
	for _, tc := range []struct {
		name string
		op   string
		msgs []*extprocv3.ProcessingRequest
		end  endKind
	}{
		{"a store that fails once still stores the response", "complete",
			[]*extprocv3.ProcessingRequest{keyed("POST", "k", true), respHeaders(true, ":status", "200")}, endEOF},
		{"a release that fails once still frees the key", "release",
			[]*extprocv3.ProcessingRequest{keyed("POST", "k", true), respHeaders(false, ":status", "429")}, endEOF},
		{"an abandon that fails once still holds the key", "abandon",
			[]*extprocv3.ProcessingRequest{keyed("POST", "k", true)}, endCanceled},
	} {
		t.Run(tc.name, func(t *testing.T) {
			store := newFakeStore()
			store.failTimes(tc.op, errRedisDown, 2)
			srv, reg := newTestServer(t, store, nil)
			_, err := run(t, srv, tc.end, tc.msgs...)
			require.NoError(t, err)
			require.Len(t, store.callsOf(tc.op), 3, "two failures, then success")
			require.EqualValues(t, 2, counter(t, reg, "idemproxy_store_retries_total", "op", tc.op))
			e, held := store.entry(keyOf("k"))
			switch tc.op {
			case "complete":
				require.True(t, held)
				require.NotNil(t, e.rec)
			case "release":
				require.False(t, held)
			case "abandon":
				require.True(t, e.unknown)
			}
		})
	}
	t.Run("a failed acquire releases the lock Redis may have taken after all", func(t *testing.T) {
		store := newFakeStore()
		store.failOn("acquire", errRedisDown)
		srv, _ := newTestServer(t, store, nil)
		_, err := run(t, srv, endEOF, keyed("POST", "k", true))
		require.NoError(t, err)
		rel := store.callsOf("release")
		require.Len(t, rel, 1)
		require.Equal(t, store.callsOf("acquire")[0].token, rel[0].token, "only our own token's lock")
	})
}
