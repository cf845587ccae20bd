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
)

// ReplayHeader carries a replay token from idemproxy's reply to Envoy's
// route selection and to the replay endpoint.
const ReplayHeader = "x-idemproxy-replay"

// DefaultReplayTTL is how long a replay token lives unless
// Options.ReplayTTL says otherwise: Envoy uses it within milliseconds.
const DefaultReplayTTL = 10 * time.Second

// Replays issues replay tokens (redisstore.Store implements it).
type Replays interface {
	// IssueReplay returns a single-use token that replays key's completed
	// record within ttl.
	IssueReplay(ctx context.Context, key string, ttl time.Duration) (string, error)
}

// viaEndpoint turns v, a replay that only the endpoint can serve (or any
// replay, with Config.ReplayAllViaEndpoint), into
// the verdict that re-routes the request there with a fresh token; in
// shadow mode no token is issued (the request goes upstream). Without a
// replay endpoint the response cannot be replayed: 409 response-not-stored.
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
	case e.pol.shadow():
		return v
	}
	ctx, cancel := context.WithTimeout(e.ctx, e.srv.cfg.StoreTimeout)
	defer cancel()
	start := time.Now()
	token, err := e.srv.replays.IssueReplay(ctx, e.req.key, e.srv.replayTTL)
	e.srv.metrics.observeStore("issue_replay", start, err)
	if err != nil {
		// The record was there a moment ago: Redis failed, or an operator
		// deleted the key. Nothing runs; a retry decides again.
		return storeDown().logged(slog.LevelError, "store failed issuing a replay token; request refused (fail-closed)", "error", err)
	}
	v.token = token
	return v
}

// rerouted is the CONTINUE of phase p that sends the request to the replay
// endpoint with token.
func rerouted(p phase, token string) *extprocv3.ProcessingResponse {
	return withCommon(p.cont(), &extprocv3.CommonResponse{ClearRouteCache: true, HeaderMutation: &extprocv3.HeaderMutation{
		SetHeaders: []*corev3.HeaderValueOption{{Header: &corev3.HeaderValue{Key: ReplayHeader, RawValue: []byte(token)}}}}})
}
