package adminapi

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/idemproxy/idemproxy/processor"
	"github.com/idemproxy/idemproxy/redisstore"
)

// fakeKeys maps (authority, scope, key) to a readable store key.
type fakeKeys struct{}

func (fakeKeys) StoreKey(in processor.ScopeInput, rawKey string) (string, error) {
	if rawKey == "bad key" {
		return "", errors.New("the idempotency key may contain only visible ASCII characters")
	}
	return in.Authority + "|" + in.Headers["x-tenant-id"] + "|" + in.Authorization + rawKey, nil
}

type fakeKeyStore struct {
	infos   map[string]redisstore.KeyInfo
	deleted []string
	err     error
}

func (f *fakeKeyStore) Inspect(_ context.Context, key string) (redisstore.KeyInfo, error) {
	return f.infos[key], f.err
}

func (f *fakeKeyStore) Delete(_ context.Context, key string) (bool, error) {
	f.deleted = append(f.deleted, key)
	_, ok := f.infos[key]
	return ok, f.err
}

func (f *fakeKeyStore) InspectID(ctx context.Context, id string) (redisstore.KeyInfo, error) {
	return f.Inspect(ctx, "id:"+id)
}

func (f *fakeKeyStore) DeleteID(ctx context.Context, id string) (bool, error) {
	return f.Delete(ctx, "id:"+id)
}

// List returns every info whose state was asked for, in one page.
func (f *fakeKeyStore) List(_ context.Context, opts redisstore.ListOptions) (redisstore.ListPage, error) {
	if opts.Cursor == "bad" {
		return redisstore.ListPage{}, redisstore.ErrBadCursor
	}
	page := redisstore.ListPage{Keys: []redisstore.KeyInfo{}, Cursor: "0"}
	for _, info := range f.infos {
		for _, st := range opts.States {
			if info.State == st {
				page.Keys = append(page.Keys, info)
			}
		}
	}
	return page, f.err
}

func TestKeys_ServeHTTP(t *testing.T) {
	const token = "admin-token-0123456789"
	newHandler := func(store *fakeKeyStore) http.Handler {
		return Keys{Token: token, ScopeHeaders: []string{"x-tenant-id"}, Scoper: fakeKeys{}, Store: store,
			Log: slog.New(slog.NewTextHandler(io.Discard, nil))}
	}
	call := func(h http.Handler, method, query, auth string) *httptest.ResponseRecorder {
		req := httptest.NewRequest(method, "/admin/v1/keys?"+query, nil)
		if auth != "" {
			req.Header.Set("Authorization", auth)
		}
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		return rec
	}
	store := &fakeKeyStore{infos: map[string]redisstore.KeyInfo{
		"api|acme|k1":                         {Exists: true, State: "outcome_unknown", Fence: 3},
		"api|acme|retried":                    {Exists: true, State: "completed", Status: 200, Fence: 4, UpstreamAttempts: 2},
		"id:0123456789abcdef0123456789abcdef": {ID: "0123456789abcdef0123456789abcdef", Exists: true, State: "in_progress"},
	}}
	h := newHandler(store)

	t.Run("without the right bearer token nothing is answered", func(t *testing.T) {
		for _, auth := range []string{"", "Bearer wrong", token, "Basic " + token} {
			rec := call(h, http.MethodGet, "authority=api&key=k1", auth)
			require.Equal(t, http.StatusUnauthorized, rec.Code, auth)
			require.Equal(t, "application/problem+json", rec.Header().Get("Content-Type"))
		}
	})
	t.Run("inspect finds the key in its scope", func(t *testing.T) {
		rec := call(h, http.MethodGet, "authority=api&key=k1&x-tenant-id=acme", "Bearer "+token)
		require.Equal(t, http.StatusOK, rec.Code)
		require.JSONEq(t, `{"exists":true,"state":"outcome_unknown","fence":3}`, rec.Body.String())
		rec = call(h, http.MethodGet, "authority=api&key=k1&x-tenant-id=other", "Bearer "+token)
		require.JSONEq(t, `{"exists":false}`, rec.Body.String())
	})
	t.Run("inspect shows that Envoy retried a stored response upstream", func(t *testing.T) {
		rec := call(h, http.MethodGet, "authority=api&key=retried&x-tenant-id=acme", "Bearer "+token)
		require.Equal(t, http.StatusOK, rec.Code)
		require.JSONEq(t, `{"exists":true,"state":"completed","status":200,"fence":4,"upstream_attempts":2}`, rec.Body.String())
	})
	t.Run("delete clears the key", func(t *testing.T) {
		rec := call(h, http.MethodDelete, "authority=api&key=k1&x-tenant-id=acme", "Bearer "+token)
		require.Equal(t, http.StatusOK, rec.Code)
		require.JSONEq(t, `{"deleted":true}`, rec.Body.String())
		require.Equal(t, []string{"api|acme|k1"}, store.deleted)
	})
	t.Run("bad requests are problems", func(t *testing.T) {
		for _, q := range []string{"key=k1", "authority=api", "authority=api&key=bad+key"} {
			rec := call(h, http.MethodGet, q, "Bearer "+token)
			require.Equal(t, http.StatusBadRequest, rec.Code, q)
			require.Contains(t, rec.Body.String(), "urn:idemproxy:problem:admin-bad-request")
		}
		rec := call(h, http.MethodPost, "authority=api&key=k1", "Bearer "+token)
		require.Equal(t, http.StatusMethodNotAllowed, rec.Code)
	})
	t.Run("a record is found and deleted by the id a listing shows", func(t *testing.T) {
		const id = "0123456789abcdef0123456789abcdef"
		rec := call(h, http.MethodGet, "id="+id, "Bearer "+token)
		require.Equal(t, http.StatusOK, rec.Code)
		require.JSONEq(t, `{"id":"`+id+`","exists":true,"state":"in_progress"}`, rec.Body.String())
		rec = call(h, http.MethodDelete, "id="+id, "Bearer "+token)
		require.Equal(t, http.StatusOK, rec.Code)
		require.Contains(t, store.deleted, "id:"+id)
		for _, q := range []string{"id=xyz", "id=" + id + "&key=k1", "id=0123456789ABCDEF0123456789ABCDEF"} {
			rec := call(h, http.MethodGet, q, "Bearer "+token)
			require.Equal(t, http.StatusBadRequest, rec.Code, q)
		}
	})
	t.Run("a listing pages through the states asked for", func(t *testing.T) {
		rec := call(h, http.MethodGet, "state=outcome_unknown", "Bearer "+token)
		require.Equal(t, http.StatusOK, rec.Code)
		require.JSONEq(t, `{"keys":[{"exists":true,"state":"outcome_unknown","fence":3}],"cursor":"0","scanned":0}`, rec.Body.String())
		for _, q := range []string{"state=gone", "limit=0", "limit=5000", "cursor=bad"} {
			rec := call(h, http.MethodGet, q, "Bearer "+token)
			require.Equal(t, http.StatusBadRequest, rec.Code, q)
		}
	})
	t.Run("a store failure is a 503", func(t *testing.T) {
		h := newHandler(&fakeKeyStore{err: errors.New("redis down")})
		rec := call(h, http.MethodGet, "authority=api&key=k1", "Bearer "+token)
		require.Equal(t, http.StatusServiceUnavailable, rec.Code)
	})
}
