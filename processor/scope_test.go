package processor

import (
	"testing"

	"github.com/stretchr/testify/require"
)

func TestServer_Process_scope(t *testing.T) {
	req := func(authority, tenant string) []string {
		h := []string{":method", "POST", ":path", "/", ":authority", authority, "idempotency-key", "k"}
		if tenant != "" {
			h = append(h, "x-tenant-id", tenant)
		}
		return h
	}
	tests := []struct {
		name        string
		first, next []string
		shared      bool
	}{
		{"same authority and tenant", req("a.example", "t1"), req("a.example", "t1"), true},
		{"authority is case-insensitive", req("a.example", "t1"), req("A.Example", "t1"), true},
		{"two authorities", req("a.example", "t1"), req("b.example", "t1"), false},
		{"two tenants", req("a.example", "t1"), req("a.example", "t2"), false},
		{"tenant and no tenant", req("a.example", "t1"), req("a.example", ""), false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			store := newFakeStore()
			srv, _ := newTestServer(t, store, func(c *Config) { c.ScopeHeaders = []string{"x-tenant-id"} })
			out, err := run(t, srv, endCanceled, reqHeaders(true, tc.first...))
			require.NoError(t, err)
			requireContinue(t, out[0])

			out, err = run(t, srv, endCanceled, reqHeaders(true, tc.next...))
			require.NoError(t, err)
			if tc.shared {
				// The first stream ended after forwarding: held as unknown.
				requireProblem(t, out[0], 409, "outcome-unknown")
			} else {
				requireContinue(t, out[0])
			}
			acq := store.callsOf("acquire")
			require.Len(t, acq, 2)
			require.Equal(t, tc.shared, acq[0].key == acq[1].key)
		})
	}
}

func TestServer_Process_bodyCapBoundary(t *testing.T) {
	tests := []struct {
		name   string
		cap    int
		stored bool
	}{
		{"body exactly at the cap", 10, true},
		{"one byte over", 9, false},
		{"zero cap", 0, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			store := newFakeStore()
			srv, _ := newTestServer(t, store, func(c *Config) { c.MaxStoredBody = tc.cap })
			_, err := run(t, srv, endEOF, keyed("POST", "k", true),
				respHeaders(false, ":status", "200"), respBody("01234", false), respBody("56789", true))
			require.NoError(t, err)
			rec := store.callsOf("complete")[0].rec
			require.Equal(t, tc.stored, rec.BodyStored)
			if tc.stored {
				require.Equal(t, "0123456789", string(rec.Body))
			} else {
				require.Empty(t, rec.Body)
			}
		})
	}
}
