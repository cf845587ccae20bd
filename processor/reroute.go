package processor

// Replays served as upstream responses: a stored response that an
// immediate response cannot reproduce (one that ended with trailers) is
// not answered by ext_proc. The request is re-routed instead: the reply
// sets ReplayHeader to a single-use token and clears Envoy's route cache,
// and the shipped configs route a request carrying the header to the
// idemproxy-replay cluster, idemproxy's replay endpoint (package replay),
// which takes the token and writes the stored status, headers, body and
// trailers as they were. Every shipped config removes a client's own
// ReplayHeader before the route is chosen.

import (
	"context"
	"log/slog"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"

	"github.com/idemproxy/idemproxy/internal/idem"
)

// ReplayHeader carries a replay token from idemproxy's reply to Envoy's
// route selection and to the replay endpoint.
const ReplayHeader = "x-idemproxy-replay"

// ReplayPath is the path a re-routed replay goes with, its body cleared.
// The replay endpoint ignores both (the token says what to serve). They
// are for an Envoy without the replay route: the request then reaches the
// upstream as a bodiless request to a path no API serves, never as the
// original request a second time; replayNotServed tells the client.
const ReplayPath = "/.idemproxy/replay"

// OriginalPathHeader carries a re-routed replay's own path for access logs
// (the shipped format logs it in place of ReplayPath). Envoy's own
// x-envoy-original-path is not one ext_proc may set.
const OriginalPathHeader = "x-idemproxy-original-path"

// replayUnavailable is the problem the replay endpoint answers with when
// it cannot serve a token (package replay, in Idempotency-Problem).
const replayUnavailable = problemBase + "replay-unavailable"

// DefaultReplayTTL is how long a replay token lives unless
// Options.ReplayTTL says otherwise: Envoy uses it within milliseconds.
const DefaultReplayTTL = 10 * time.Second

// Replays issues replay tokens (redisstore.Store implements it).
type Replays interface {
	// IssueReplay returns a single-use token that replays key's completed
	// record within ttl.
	IssueReplay(ctx context.Context, key string, ttl time.Duration) (string, error)
}

// replayAsk is what a request's acquire asks for: a replay token with a
// completed record that the replay endpoint is to serve, issued in the
// acquire's round trip (two round trips for such a replay, not three);
// none without a replay endpoint, or in shadow mode, which issues none.
func (e *exchange) replayAsk() idem.ReplayAsk {
	if e.srv.replays == nil || e.pol.shadow() {
		return idem.ReplayAsk{}
	}
	return idem.ReplayAsk{TTL: e.srv.replayTTL, All: e.srv.cfg.ReplayAllViaEndpoint}
}

// viaEndpoint turns v, a replay that only the endpoint can serve (or any
// replay, with Config.ReplayAllViaEndpoint), into the verdict that
// re-routes the request there with a token: the one its acquire issued
// (replayAsk), or else a fresh one (a waiting duplicate's replay, found by
// a shared read, has none); in shadow mode no token is issued (the request
// goes upstream). Without a replay endpoint the response cannot be
// replayed: 409 response-not-stored.
func (e *exchange) viaEndpoint(v verdict) verdict {
	if v.replayed != nil && e.srv.cfg.ReplayAllViaEndpoint && e.srv.replays != nil {
		v.via = v.replayed
	}
	switch {
	case v.via == nil:
		return v
	case e.srv.replays == nil:
		rec := *v.via
		rec.BodyStored = false
		return refusal(outcomeNotStored, probNotStored, notStoredDetail(&rec), "")
	case e.pol.shadow(), v.token != "":
		return v
	}
	ctx, cancel := context.WithTimeout(e.ctx, e.srv.cfg.StoreTimeout)
	defer cancel()
	start := time.Now()
	key := e.req.key
	if v.recordKey != "" {
		key = v.recordKey
	}
	token, err := e.srv.replays.IssueReplay(ctx, key, e.srv.replayTTL)
	e.srv.metrics.observeStore("issue_replay", start, err)
	if err != nil {
		// The record was there a moment ago: Redis failed, or an operator
		// deleted the key. Nothing runs; a retry decides again.
		return storeDown().logged(slog.LevelError, "store failed issuing a replay token; request refused (fail-closed)", "error", err)
	}
	v.token = token
	return v
}

// rerouted is the CONTINUE of phase p that sends the request (path was
// its own) to the replay endpoint with token, on ReplayPath and without
// its body.
func rerouted(p phase, token, path string) *extprocv3.ProcessingResponse {
	common := &extprocv3.CommonResponse{ClearRouteCache: true, HeaderMutation: &extprocv3.HeaderMutation{
		SetHeaders: []*corev3.HeaderValueOption{
			{Header: &corev3.HeaderValue{Key: ReplayHeader, RawValue: []byte(token)}},
			{Header: &corev3.HeaderValue{Key: ":path", RawValue: []byte(ReplayPath)}},
			{Header: &corev3.HeaderValue{Key: OriginalPathHeader, RawValue: []byte(path)}},
		}}}
	if p == phaseBody {
		common.BodyMutation = &extprocv3.BodyMutation{Mutation: &extprocv3.BodyMutation_ClearBody{ClearBody: true}}
		// Envoy refuses (500) a cleared body whose Content-Length says otherwise.
		common.HeaderMutation.SetHeaders = append(common.HeaderMutation.SetHeaders,
			&corev3.HeaderValueOption{Header: &corev3.HeaderValue{Key: "content-length", RawValue: []byte("0")}})
	}
	return withCommon(p.cont(), common)
}

// replayNotServed checks the response to a re-routed replay. The replay
// endpoint marks all it answers after authentication: Idempotent-Replayed
// on a replay, the replay-unavailable problem otherwise. A response
// without either came from elsewhere: Envoy has no replay route (the
// upstream got the bodiless ReplayPath request) or the endpoint refused
// Envoy (401, the route sends no bearer token). The client gets 500
// misconfigured instead of that answer; nil when the endpoint served it.
func (e *exchange) replayNotServed(hs []*corev3.HeaderValue) *extprocv3.ProcessingResponse {
	for _, h := range hs {
		switch v := headerValue(h); h.GetKey() {
		case replayedHeader:
			if v == "true" {
				return nil
			}
		case problemHeader:
			if v == replayUnavailable {
				return nil
			}
		}
	}
	status := responseStatus(hs)
	e.settledAs(resultReplayMisrouted)
	e.logger().Error("a replay sent to the replay endpoint was answered by something else: Envoy has no idemproxy-replay route "+
		"for this request (the upstream got a bodiless "+ReplayPath+" request) or the endpoint refused Envoy; answered 500 misconfigured",
		"status", status, "route", e.req.route)
	r := refused{p: probMisconfigured, detail: "The stored response could not be served: the proxy's replay route is missing or " +
		"misconfigured. The request was not run again."}
	return problemReply(r, e.shape())
}
