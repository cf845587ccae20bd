package adminapi

import (
	"context"
	"log/slog"
	"net/http"

	"github.com/idemproxy/idemproxy/redisstore"
)

// ResetGate lists and acknowledges store resets (*redisstore.Gate is one).
type ResetGate interface {
	StoreResets() []redisstore.HeldPrimary
	AckStoreResets(ctx context.Context) ([]redisstore.HeldPrimary, error)
}

// StoreResets serves /admin/v1/store-resets (GET: the Redis primaries
// whose keys are held after a store reset) and /admin/v1/store-resets/ack
// (POST: acknowledge them all, so their keys are served again by every
// idemproxy process). It answers only with the admin bearer token: an
// acknowledgement lets a key completed before the reset run again.
type StoreResets struct {
	Token string // the bearer token (--admin-token)
	Gate  ResetGate
	Log   *slog.Logger
}

// heldList is the body of both endpoints.
type heldList struct {
	Held         []redisstore.HeldPrimary `json:"held"`
	Acknowledged []redisstore.HeldPrimary `json:"acknowledged,omitempty"`
}

// ServeHTTP serves one request on either path.
func (h StoreResets) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if !authorized(w, r, h.Token) {
		return
	}
	switch {
	case r.URL.Path == "/admin/v1/store-resets" && r.Method == http.MethodGet:
		writeJSON(w, http.StatusOK, heldList{Held: nonNil(h.Gate.StoreResets())})
	case r.URL.Path == "/admin/v1/store-resets/ack" && r.Method == http.MethodPost:
		acked, err := h.Gate.AckStoreResets(r.Context())
		if err != nil {
			h.Log.Error("admin: acknowledging store resets failed", "acknowledged", len(acked), "error", err)
			writeProblem(w, http.StatusServiceUnavailable, "store-unavailable", "Idempotency store unavailable",
				"Redis did not take every acknowledgement; GET /admin/v1/store-resets lists the primaries still held. Try again.")
			return
		}
		h.Log.Warn("admin: store resets acknowledged", "primaries", len(acked))
		writeJSON(w, http.StatusOK, heldList{Held: nonNil(h.Gate.StoreResets()), Acknowledged: nonNil(acked)})
	default:
		w.Header().Set("Allow", "GET /admin/v1/store-resets, POST /admin/v1/store-resets/ack")
		writeProblem(w, http.StatusMethodNotAllowed, "admin-bad-request", "Method not allowed",
			"GET /admin/v1/store-resets lists held primaries; POST /admin/v1/store-resets/ack acknowledges them.")
	}
}

// nonNil makes an empty list encode as [], not null.
func nonNil(l []redisstore.HeldPrimary) []redisstore.HeldPrimary {
	if l == nil {
		return []redisstore.HeldPrimary{}
	}
	return l
}
