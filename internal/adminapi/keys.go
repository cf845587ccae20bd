package adminapi

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"net/http"
	"net/url"
	"strconv"
	"strings"

	"github.com/idemproxy/idemproxy/internal/auth"
	"github.com/idemproxy/idemproxy/processor"
	"github.com/idemproxy/idemproxy/redisstore"
)

// KeyScoper turns a client's key, as its request names it, into the store
// key (*processor.Server is one).
type KeyScoper interface {
	StoreKey(in processor.ScopeInput, rawKey string) (string, error)
}

// KeyStore inspects, deletes and lists records (*redisstore.Store is one).
type KeyStore interface {
	Inspect(ctx context.Context, key string) (redisstore.KeyInfo, error)
	Delete(ctx context.Context, key string) (bool, error)
	InspectID(ctx context.Context, id string) (redisstore.KeyInfo, error)
	DeleteID(ctx context.Context, id string) (bool, error)
	List(ctx context.Context, opts redisstore.ListOptions) (redisstore.ListPage, error)
}

// Keys serves /admin/v1/keys. It answers only with the right bearer
// token: it can clear a key, which allows a re-run.
//
//   - GET or DELETE ?authority=..&key=.. plus the request's identity
//     (authorization=<its Authorization header> or jwt_claim=<the claim>),
//     scheme=https when it came over https, and one parameter per
//     --scope-headers name: one key, as a client's request names it;
//   - GET or DELETE ?id=..: one record by the id a listing shows (client
//     keys are never stored, so a listed record is found by its id);
//   - GET ?state=in_progress,outcome_unknown&cursor=..&limit=..: a page of
//     records (SCAN, never KEYS), without bodies.
type Keys struct {
	Token        string   // the bearer token (--admin-token)
	ScopeHeaders []string // --scope-headers: query parameters of a key's scope
	Scoper       KeyScoper
	Store        KeyStore
	Log          *slog.Logger
}

// ServeHTTP serves one admin request on keys.
func (h Keys) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if !authorized(w, r, h.Token) {
		return
	}
	q := r.URL.Query()
	if q.Get("id") == "" && q.Get("key") == "" && q.Get("authority") == "" && r.Method == http.MethodGet {
		h.list(w, r)
		return
	}
	switch r.Method {
	case http.MethodGet, http.MethodDelete:
	default:
		w.Header().Set("Allow", "GET, DELETE")
		writeProblem(w, http.StatusMethodNotAllowed, "admin-bad-request", "Method not allowed", "Use GET or DELETE.")
		return
	}
	key, id, ok := h.target(w, q)
	if !ok {
		return
	}
	var err error
	if r.Method == http.MethodGet {
		var info redisstore.KeyInfo
		if id != "" {
			info, err = h.Store.InspectID(r.Context(), id)
		} else {
			info, err = h.Store.Inspect(r.Context(), key)
		}
		if err == nil {
			writeJSON(w, http.StatusOK, info)
			return
		}
	} else {
		var deleted bool
		if id != "" {
			deleted, err = h.Store.DeleteID(r.Context(), id)
		} else {
			deleted, err = h.Store.Delete(r.Context(), key)
		}
		if err == nil {
			// The key value is not logged: keys can be secrets.
			h.Log.Warn("admin: key deleted; a retry with it will run again", "authority", q.Get("authority"), "id", id, "deleted", deleted)
			writeJSON(w, http.StatusOK, map[string]bool{"deleted": deleted})
			return
		}
	}
	h.Log.Error("admin: the store failed", "method", r.Method, "error", err)
	writeProblem(w, http.StatusServiceUnavailable, "store-unavailable", "Idempotency store unavailable", "Redis did not answer.")
}

// target reads which record a request names: by id, or by authority, key
// and scope. It answers the client itself when the query is unusable.
func (h Keys) target(w http.ResponseWriter, q url.Values) (key, id string, ok bool) {
	if id = q.Get("id"); id != "" {
		if q.Get("key") != "" || q.Get("authority") != "" {
			writeProblem(w, http.StatusBadRequest, "admin-bad-request", "Bad request", "Give either id, or authority and key.")
			return "", "", false
		}
		if !validID(id) {
			writeProblem(w, http.StatusBadRequest, "admin-bad-request", "Bad request", redisstore.ErrBadID.Error())
			return "", "", false
		}
		return "", id, true
	}
	authority, rawKey := q.Get("authority"), q.Get("key")
	if authority == "" || rawKey == "" {
		writeProblem(w, http.StatusBadRequest, "admin-bad-request", "Bad request", "The query needs authority and key, or id.")
		return "", "", false
	}
	in := processor.ScopeInput{Authority: authority, Scheme: q.Get("scheme"), Authorization: q.Get("authorization"),
		JWTClaim: q.Get("jwt_claim"), Headers: map[string]string{}}
	for _, name := range h.ScopeHeaders {
		in.Headers[name] = q.Get(name)
	}
	key, err := h.Scoper.StoreKey(in, rawKey)
	if err != nil {
		writeProblem(w, http.StatusBadRequest, "admin-bad-request", "Bad request", err.Error())
		return "", "", false
	}
	return key, "", true
}

// validID accepts what redisstore shows as a record id.
func validID(id string) bool {
	if len(id) != 32 {
		return false
	}
	for _, c := range id {
		if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
			return false
		}
	}
	return true
}

// listStates are the states a listing may ask for.
var listStates = map[string]bool{"in_progress": true, "outcome_unknown": true, "completed": true}

// list serves one page of records.
func (h Keys) list(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	opts := redisstore.ListOptions{Cursor: q.Get("cursor")}
	for _, st := range strings.Split(q.Get("state"), ",") {
		if st = strings.TrimSpace(st); st == "" {
			continue
		}
		if !listStates[st] {
			writeProblem(w, http.StatusBadRequest, "admin-bad-request", "Bad request",
				"state must be a comma list of in_progress, outcome_unknown, completed.")
			return
		}
		opts.States = append(opts.States, st)
	}
	if v := q.Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > 1000 {
			writeProblem(w, http.StatusBadRequest, "admin-bad-request", "Bad request", "limit must be 1 to 1000.")
			return
		}
		opts.Limit = n
	}
	page, err := h.Store.List(r.Context(), opts)
	switch {
	case errors.Is(err, redisstore.ErrBadCursor):
		writeProblem(w, http.StatusBadRequest, "admin-bad-request", "Bad request", "cursor must be one a previous page returned.")
	case err != nil:
		h.Log.Error("admin: listing keys failed", "error", err)
		writeProblem(w, http.StatusServiceUnavailable, "store-unavailable", "Idempotency store unavailable", "Redis did not answer.")
	default:
		writeJSON(w, http.StatusOK, page)
	}
}

// authorized reports whether r carries the admin bearer token; when it
// does not, it has answered 401.
func authorized(w http.ResponseWriter, r *http.Request, token string) bool {
	got, ok := auth.Bearer(r.Header.Get("Authorization"))
	if ok && auth.TokenMatches(got, []string{token}) {
		return true
	}
	w.Header().Set("WWW-Authenticate", `Bearer realm="idemproxy-admin"`)
	writeProblem(w, http.StatusUnauthorized, "admin-unauthorized", "Unauthorized", "A valid bearer token is required.")
	return false
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

func writeProblem(w http.ResponseWriter, status int, slug, title, detail string) {
	w.Header().Set("Content-Type", "application/problem+json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(map[string]any{
		"type": "urn:idemproxy:problem:" + slug, "title": title, "status": status, "detail": detail,
	})
}
