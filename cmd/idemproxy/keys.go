package main

import (
	"context"
	"crypto/subtle"
	"encoding/json"
	"log/slog"
	"net/http"
	"strings"

	"github.com/idemproxy/idemproxy/redisstore"
)

// keyAdmin is what the admin key endpoint needs: turning a client key into
// the store key, and inspecting or deleting that key's record.
type keyAdmin interface {
	StoreKey(authority string, scope map[string]string, rawKey string) (string, error)
}

type keyStore interface {
	Inspect(ctx context.Context, key string) (redisstore.KeyInfo, error)
	Delete(ctx context.Context, key string) (bool, error)
}

// keysHandler serves GET and DELETE /admin/v1/keys?authority=..&key=..
// plus one query parameter per --scope-headers name. It answers only with
// the right bearer token: it can clear a key, which allows a re-run.
type keysHandler struct {
	token        string
	scopeHeaders []string
	keys         keyAdmin
	store        keyStore
	log          *slog.Logger
}

func (h keysHandler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	got, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	if !ok || subtle.ConstantTimeCompare([]byte(got), []byte(h.token)) != 1 {
		w.Header().Set("WWW-Authenticate", `Bearer realm="idemproxy-admin"`)
		writeProblem(w, http.StatusUnauthorized, "admin-unauthorized", "Unauthorized", "A valid bearer token is required.")
		return
	}
	q := r.URL.Query()
	authority, rawKey := q.Get("authority"), q.Get("key")
	if authority == "" || rawKey == "" {
		writeProblem(w, http.StatusBadRequest, "admin-bad-request", "Bad request", "The query needs authority and key.")
		return
	}
	scope := map[string]string{}
	for _, name := range h.scopeHeaders {
		scope[name] = q.Get(name)
	}
	key, err := h.keys.StoreKey(authority, scope, rawKey)
	if err != nil {
		writeProblem(w, http.StatusBadRequest, "admin-bad-request", "Bad request", err.Error())
		return
	}
	switch r.Method {
	case http.MethodGet:
		info, err := h.store.Inspect(r.Context(), key)
		if err != nil {
			h.log.Error("admin: inspecting a key failed", "error", err)
			writeProblem(w, http.StatusServiceUnavailable, "store-unavailable", "Idempotency store unavailable", "Redis did not answer.")
			return
		}
		writeJSON(w, http.StatusOK, info)
	case http.MethodDelete:
		deleted, err := h.store.Delete(r.Context(), key)
		if err != nil {
			h.log.Error("admin: deleting a key failed", "error", err)
			writeProblem(w, http.StatusServiceUnavailable, "store-unavailable", "Idempotency store unavailable", "Redis did not answer.")
			return
		}
		// The key value is not logged: keys can be secrets.
		h.log.Warn("admin: key deleted; a retry with it will run again", "authority", authority, "deleted", deleted)
		writeJSON(w, http.StatusOK, map[string]bool{"deleted": deleted})
	default:
		w.Header().Set("Allow", "GET, DELETE")
		writeProblem(w, http.StatusMethodNotAllowed, "admin-bad-request", "Method not allowed", "Use GET or DELETE.")
	}
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
