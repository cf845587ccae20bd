package envoy

import (
	"net/http"
	"testing"

	"github.com/stretchr/testify/require"
)

// TestEndToEnd_TenantIsolation is the security test of docs/reliability.md: with
// --scope-headers x-tenant-id, a key is scoped to its tenant. A tenant that
// reuses (or guesses) another tenant's key, with the same body, never gets
// the other's stored response: its request runs and gets its own charge. A
// request without the header is a scope of its own, too.
func TestEndToEnd_TenantIsolation(t *testing.T) {
	t.Parallel()
	s := startStack(t, "--scope-headers", "x-tenant-id")
	key := newKey(t)
	const body = `{"amount":5000}`
	charge := func(t *testing.T, tenant, key, body string) reply {
		t.Helper()
		hdrs := []string{"Idempotency-Key", key}
		if tenant != "" {
			hdrs = append(hdrs, "X-Tenant-Id", tenant)
		}
		r := s.do(t, "POST", "/charge", body, hdrs...)
		require.Equal(t, http.StatusOK, r.status, "%s", r.body)
		return r
	}
	// ids is every charge made with key, by its tenant ("" for none).
	ids := map[string]string{}
	first := charge(t, "acme", key, body)
	require.False(t, first.replayed())
	ids["acme"] = chargeID(t, first.body)

	t.Run("another tenant with the same key and body runs its own charge", func(t *testing.T) {
		r := charge(t, "globex", key, body)
		require.False(t, r.replayed(), "globex must not get acme's stored response")
		ids["globex"] = chargeID(t, r.body)
		require.NotEqual(t, ids["acme"], ids["globex"])
	})

	t.Run("a request without the tenant header does not get a tenant's response", func(t *testing.T) {
		r := charge(t, "", key, body)
		require.False(t, r.replayed())
		ids[""] = chargeID(t, r.body)
		require.NotContains(t, []string{ids["acme"], ids["globex"]}, ids[""])
	})

	t.Run("another tenant with a different body is not told the key is taken", func(t *testing.T) {
		// A 422 fingerprint-mismatch would tell initech that someone
		// else uses this key.
		r := charge(t, "initech", key, `{"amount":1}`)
		require.False(t, r.replayed())
		ids["initech"] = chargeID(t, r.body)
	})

	t.Run("each scope replays its own response unchanged", func(t *testing.T) {
		for _, tenant := range []string{"acme", "globex", ""} {
			r := charge(t, tenant, key, body)
			require.True(t, r.replayed(), "tenant %q", tenant)
			require.Equal(t, ids[tenant], chargeID(t, r.body), "tenant %q gets its own charge back", tenant)
		}
		require.Equal(t, len(ids), s.executions(t, key), "one execution per scope, none for the replays")
		distinct := map[string]bool{}
		for _, id := range ids {
			distinct[id] = true
		}
		require.Len(t, distinct, len(ids), "no scope got another's charge")
	})

	t.Run("tenant and key do not run together", func(t *testing.T) {
		// Joined without a boundary, tenant "acm" with key "e"+k would be
		// tenant "acme" with key k.
		r := charge(t, "acm", "e"+key, body)
		require.False(t, r.replayed(), "a shifted boundary between tenant and key is another key")
		require.NotEqual(t, ids["acme"], chargeID(t, r.body))
	})

	t.Logf("tenant isolation: key %s used by %d scopes (acme, globex, no tenant, initech with another body): "+
		"%d backend executions, %d distinct charges, each scope's replay its own; acme's replay unchanged",
		key, len(ids), s.executions(t, key), len(ids))
}
