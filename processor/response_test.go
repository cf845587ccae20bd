package processor

import (
	"errors"
	"fmt"
	"strconv"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"google.golang.org/protobuf/proto"

	"github.com/idemproxy/idemproxy/internal/idem"

	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
)

var errRedisDown = errors.New("redis: connection refused")

func TestServer_Process_storesStreamedResponse(t *testing.T) {
	store := newFakeStore()
	srv, reg := newTestServer(t, store, nil)
	s := serve(t, srv)

	requireContinue(t, s.roundTrip(keyed("POST", "k", false)))
	requireContinue(t, s.roundTrip(reqBody("amount=10", true)))
	requireContinue(t, s.roundTrip(respHeaders(false,
		":status", "200",
		"content-type", "application/json",
		"set-cookie", "session=secret",
		"date", "Mon, 01 Jan 2024 00:00:00 GMT",
		"content-length", "17",
		"connection", "keep-alive, x-hop",
		"x-hop", "1",
		"x-envoy-upstream-service-time", "3",
		"x-a", "1",
		"x-a", "2",
	)))
	// STREAMED chunks are pipelined; each gets an unmodified reply.
	for _, chunk := range []*extprocv3.ProcessingRequest{respBody(`{"id":`, false), respBody(`"ch_1"}`, false), respBody("", true)} {
		s.send(chunk)
	}
	for range 3 {
		r := s.reply()
		require.True(t, proto.Equal(&extprocv3.BodyResponse{}, r.GetResponseBody()), "want an empty BodyResponse, got %v", r)
		require.Nil(t, r.GetModeOverride())
	}

	require.Equal(t, []string{"acquire", "complete"}, store.ops())
	done := store.callsOf("complete")[0]
	require.Equal(t, keyOf("k"), done.key)
	require.Equal(t, store.callsOf("acquire")[0].token, done.token)
	require.Equal(t, idem.Record{
		Fingerprint: fingerprint("POST", "/charge?x=1", []byte("amount=10")),
		Status:      200,
		Headers:     []idem.Header{{Name: "content-type", Value: "application/json"}, {Name: "x-a", Value: "1"}, {Name: "x-a", Value: "2"}},
		Body:        []byte(`{"id":"ch_1"}`),
		BodyStored:  true,
	}, done.rec)
	require.EqualValues(t, 1, counter(t, reg, "idemproxy_responses_total", "result", resultStored))

	s.end(endCanceled)
	require.NoError(t, s.wait())
	require.Equal(t, []string{"acquire", "complete"}, store.ops(), "the end after a stored response changes nothing")

	// The retry is replayed from the record.
	out, err := run(t, srv, endEOF, keyed("POST", "k", false), reqBody("amount=10", true))
	require.NoError(t, err)
	ir, hs := immediateOf(t, out[1])
	require.EqualValues(t, 200, ir.GetStatus().GetCode())
	require.Equal(t, `{"id":"ch_1"}`, string(ir.GetBody()))
	require.Equal(t, "true", headerGet(hs, "idempotent-replayed"))
}

func TestServer_Process_responseHeadersEndStream(t *testing.T) {
	store := newFakeStore()
	srv, _ := newTestServer(t, store, nil)
	out, err := run(t, srv, endCanceled, keyed("DELETE", "k", true), respHeaders(true, ":status", "204", "x-id", "7"))
	require.NoError(t, err)
	require.Len(t, out, 2)
	requireContinue(t, out[1])
	require.Equal(t, []string{"acquire", "complete"}, store.ops())
	rec := store.callsOf("complete")[0].rec
	require.Equal(t, 204, rec.Status)
	require.True(t, rec.BodyStored)
	require.Empty(t, rec.Body)
	require.Equal(t, []idem.Header{{Name: "x-id", Value: "7"}}, rec.Headers)
}

func TestServer_Process_releasesNoStoreStatus(t *testing.T) {
	for _, code := range []string{"429", "408", "425"} {
		t.Run("status "+code, func(t *testing.T) {
			store := newFakeStore()
			srv, reg := newTestServer(t, store, nil)
			out, err := run(t, srv, endEOF, keyed("POST", "k", true), respHeaders(false, ":status", code))
			require.NoError(t, err)
			require.Len(t, out, 2)
			require.NotNil(t, out[1].GetResponseHeaders())
			mode := out[1].GetModeOverride()
			require.NotNil(t, mode)
			require.Equal(t, "NONE", mode.GetResponseBodyMode().String())
			require.Equal(t, "SEND", mode.GetRequestHeaderMode().String())
			require.Equal(t, "SEND", mode.GetResponseHeaderMode().String())
			require.Equal(t, "BUFFERED", mode.GetRequestBodyMode().String())
			require.Equal(t, "SKIP", mode.GetRequestTrailerMode().String())
			require.Equal(t, "SKIP", mode.GetResponseTrailerMode().String())

			require.Equal(t, []string{"acquire", "release"}, store.ops())
			rel := store.callsOf("release")[0]
			require.Equal(t, store.callsOf("acquire")[0].token, rel.token)
			_, held := store.entry(keyOf("k"))
			require.False(t, held, "the client may retry at once")
			require.EqualValues(t, 1, counter(t, reg, "idemproxy_responses_total", "result", resultReleasedStatus))
		})
	}
}

func TestServer_Process_bodyOverCap(t *testing.T) {
	store := newFakeStore()
	srv, reg := newTestServer(t, store, func(c *Config) { c.MaxStoredBody = 10 })
	out, err := run(t, srv, endCanceled,
		keyed("POST", "k", true),
		respHeaders(false, ":status", "201"),
		respBody("hello ", false), respBody("world ", false), respBody("again", true))
	require.NoError(t, err)
	require.Len(t, out, 5)
	for _, r := range out[2:] {
		require.True(t, proto.Equal(&extprocv3.BodyResponse{}, r.GetResponseBody()), "the client still gets every chunk")
	}
	require.Equal(t, []string{"acquire", "complete"}, store.ops())
	rec := store.callsOf("complete")[0].rec
	require.Equal(t, 201, rec.Status)
	require.False(t, rec.BodyStored)
	require.Empty(t, rec.Body)
	require.EqualValues(t, 1, counter(t, reg, "idemproxy_responses_total", "result", resultStoredNoBody))

	// The retry learns why it cannot be replayed.
	out, err = run(t, srv, endEOF, keyed("POST", "k", true))
	require.NoError(t, err)
	p, _ := requireProblem(t, out[0], 409, "response-not-stored")
	require.Contains(t, p.Detail, "201")
}

func TestServer_Process_completesOnDetachedContext(t *testing.T) {
	store := newFakeStore()
	srv, _ := newTestServer(t, store, nil)
	s := serve(t, srv)
	requireContinue(t, s.roundTrip(keyed("POST", "k", true)))
	requireContinue(t, s.roundTrip(respHeaders(false, ":status", "200")))
	// Envoy resets the side stream as soon as the last chunk is out.
	s.st.in <- streamItem{req: respBody("done", true), cancelFirst: true}
	require.NoError(t, s.wait())

	done := store.callsOf("complete")
	require.Len(t, done, 1)
	require.NoError(t, done[0].ctxErr, "complete must not run on the canceled stream context")
	require.True(t, done[0].hasDeadline, "complete must have its own timeout")
	require.Equal(t, "done", string(done[0].rec.Body))
}

func TestServer_Process_completeLeaseLost(t *testing.T) {
	store := newFakeStore()
	srv, reg := newTestServer(t, store, nil)
	s := serve(t, srv)
	requireContinue(t, s.roundTrip(keyed("POST", "k", true)))
	store.steal(keyOf("k"))
	requireContinue(t, s.roundTrip(respHeaders(true, ":status", "200")))
	s.end(endEOF)
	require.NoError(t, s.wait())

	e, ok := store.entry(keyOf("k"))
	require.True(t, ok)
	require.Equal(t, "thief", e.token, "the new owner's record is not overwritten")
	require.Nil(t, e.rec)
	require.EqualValues(t, 1, counter(t, reg, "idemproxy_leases_lost_total", "stage", stageDone))
	require.EqualValues(t, 1, counter(t, reg, "idemproxy_responses_total", "result", resultLeaseLost))
}

func TestServer_Process_completeStoreError(t *testing.T) {
	store := newFakeStore()
	store.failOn("complete", errRedisDown)
	srv, reg := newTestServer(t, store, func(c *Config) { c.FinalizeTimeout, c.FinalizeUntilLease = 300*time.Millisecond, false })
	out, err := run(t, srv, endEOF, keyed("POST", "k", true), respHeaders(true, ":status", "200"))
	require.NoError(t, err)
	requireContinue(t, out[1])
	ops := store.ops()
	require.Equal(t, "acquire", ops[0])
	require.Greater(t, len(ops), 2, "retried until the finalize timeout")
	require.NotContains(t, ops, "release", "no release: the request ran, its lease must run out into an unknown outcome")
	require.EqualValues(t, 1, counter(t, reg, "idemproxy_responses_total", "result", resultStoreError))
}

func TestServer_Process_storesServerErrors(t *testing.T) {
	// A 5xx may come after the side effect (the charge ran, then the
	// backend failed): it is the outcome, stored and replayed, as Stripe and
	// the IETF draft do. Only --no-store-statuses 5xx would re-run it.
	// Envoy says the response is the upstream's by response.code_details
	// or, without the attribute, by x-envoy-upstream-service-time.
	upstream := map[string]func(code string) *extprocv3.ProcessingRequest{
		"code details": func(code string) *extprocv3.ProcessingRequest {
			return withCodeDetails(respHeaders(false, ":status", code), "via_upstream")
		},
		"service time": func(code string) *extprocv3.ProcessingRequest {
			return respHeaders(false, ":status", code, "x-envoy-upstream-service-time", "3")
		},
	}
	for _, code := range []string{"500", "502", "503", "504"} {
		for how, headers := range upstream {
			t.Run("status "+code+" "+how, func(t *testing.T) {
				store := newFakeStore()
				srv, _ := newTestServer(t, store, nil)
				_, err := run(t, srv, endEOF, keyed("POST", "k", true), headers(code), respBody("failed", true))
				require.NoError(t, err)
				require.Equal(t, []string{"acquire", "complete"}, store.ops())
				out, err := run(t, srv, endEOF, keyed("POST", "k", true))
				require.NoError(t, err)
				ir, _ := immediateOf(t, out[0])
				require.Equal(t, code, strconv.Itoa(int(ir.GetStatus().GetCode())), "the replay")
				require.Equal(t, "failed", string(ir.GetBody()))
			})
		}
	}
	t.Run("unless told to release them", func(t *testing.T) {
		store := newFakeStore()
		srv, _ := newTestServer(t, store, func(c *Config) { c.NoStore = MustParseStatusSet("5xx") })
		_, err := run(t, srv, endEOF, keyed("POST", "k", true), respHeaders(false, ":status", "500"))
		require.NoError(t, err)
		require.Equal(t, []string{"acquire", "release"}, store.ops())
	})
}

// TestServer_Process_completeUntilLease: a completion that keeps failing
// past --finalize-timeout (Redis cut off, then back) is kept and retried
// in the background until the key's lease would end, and stored then;
// only --finalize-timeout, it is given up and the key left to read as an
// unknown outcome.
func TestServer_Process_completeUntilLease(t *testing.T) {
	for _, untilLease := range []bool{true, false} {
		t.Run(fmt.Sprintf("until the lease %v", untilLease), func(t *testing.T) {
			store := newFakeStore()
			// Redis is back 600 ms from now: after --finalize-timeout
			// (300 ms), within the lease (1 s).
			store.failUntil("complete", errRedisDown, time.Now().Add(600*time.Millisecond))
			srv, reg := newTestServer(t, store, func(c *Config) {
				c.LockTTL, c.Heartbeat = time.Second, 500*time.Millisecond
				c.FinalizeTimeout, c.FinalizeUntilLease = 300*time.Millisecond, untilLease
			})
			_, err := run(t, srv, endEOF, keyed("POST", "k", true), respHeaders(true, ":status", "200"))
			require.NoError(t, err)
			e, ok := store.entry(keyOf("k"))
			require.True(t, ok)
			if untilLease {
				require.Eventually(t, func() bool {
					e, _ := store.entry(keyOf("k"))
					return e.rec != nil
				}, waitFor, 10*time.Millisecond, "stored once Redis answered, within the lease")
				require.EqualValues(t, 1, counter(t, reg, "idemproxy_responses_total", "result", resultStorePending))
				require.Eventually(t, func() bool {
					return counter(t, reg, "idemproxy_pending_completions_total", "result", pendingStored) == 1
				}, waitFor, 10*time.Millisecond)
			} else {
				require.Nil(t, e.rec, "given up at --finalize-timeout")
				require.EqualValues(t, 1, counter(t, reg, "idemproxy_responses_total", "result", resultStoreError))
			}
		})
	}
}
