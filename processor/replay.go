package processor

import (
	"fmt"

	"github.com/idemproxy/idemproxy/internal/idem"
)

// contentTypeStash carries a replay's true Content-Type past Envoy, which
// rewrites it in every local reply (an immediate response is one): it
// drops Content-Type when the body is empty, and adds text/plain when a
// body has none (seen with Envoy 1.40). The Lua filter in the shipped
// envoy.yaml puts the stashed value back, "-" meaning none, and removes the
// stash. It is only sent when Envoy would otherwise change the type.
const contentTypeStash = "x-idemproxy-content-type"

// replayHeaders are the stored headers plus the replay marker, and the
// Content-Type stash where Envoy would alter the type.
func replayHeaders(rec *idem.Record) []idem.Header {
	hs := append(rec.Headers[:len(rec.Headers):len(rec.Headers)], idem.Header{Name: replayedHeader, Value: "true"})
	ct, has := "", false
	for _, h := range rec.Headers {
		if h.Name == "content-type" {
			ct, has = h.Value, true
			break
		}
	}
	switch {
	case len(rec.Body) == 0 && has:
		hs = append(hs, idem.Header{Name: contentTypeStash, Value: ct})
	case len(rec.Body) > 0 && !has:
		hs = append(hs, idem.Header{Name: contentTypeStash, Value: "-"})
	}
	return hs
}

// notStoredDetail tells the client what became of a request that ran but
// whose response cannot be replayed.
func notStoredDetail(rec *idem.Record) string {
	status, why := 0, "its response was too large to store"
	if rec != nil {
		status = rec.Status
		switch {
		case rec.Incomplete:
			why = "its response never reached the proxy in full (the connection broke mid-body, or the response ended with trailers that the proxy does not pass on to idempotency checks)"
		case rec.Trailers:
			why = "its response ended with HTTP trailers, which cannot be replayed without idemproxy's replay endpoint"
		case rec.StoreFailed:
			why = "the idempotency store did not take its response in time (it was unavailable), so only the status was kept"
		}
	}
	return fmt.Sprintf("The request with this idempotency key completed with status %d, but %s; it will not run again.", status, why)
}
