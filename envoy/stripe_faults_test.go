package envoy

import (
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"github.com/stripe/stripe-go/v82"

	"github.com/idemproxy/idemproxy/internal/testenv"
)

// The settings whose weaker form stripe-go shows failing: an account
// header left out of the scope, Stripe's own in-progress code, and
// Envoy's own replies in the Stripe shape.

// TestStripeGo_ConnectAccounts: one platform key acting for two connected
// accounts (Stripe-Account), the same idempotency key and body. Unless the
// account header is in the scope, account B gets account A's charge
// replayed; with --scope-headers stripe-account each account's runs.
func TestStripeGo_ConnectAccounts(t *testing.T) {
	t.Parallel()
	charges := func(t *testing.T, s *stack) (a, b *stripe.Charge, executions int) {
		c := stripeClient(s, "", stripe.DefaultMaxNetworkRetries)
		key := newKey(t)
		pa, pb := chargeParams(key, 100), chargeParams(key, 100)
		pa.SetStripeAccount("acct_A")
		pb.SetStripeAccount("acct_B")
		a, err := c.New(pa)
		require.NoError(t, err)
		b, err = c.New(pb)
		require.NoError(t, err)
		return a, b, s.executions(t, key)
	}
	t.Run("without the account in the scope, B gets A's charge", func(t *testing.T) {
		t.Parallel()
		a, b, n := charges(t, startStack(t))
		require.Equal(t, a.ID, b.ID, "replayed across accounts")
		require.Equal(t, "true", b.LastResponse.Header.Get("Idempotent-Replayed"))
		require.Equal(t, 1, n)
		t.Logf("no account in the scope: account B got account A's %s, replayed; executions %d", b.ID, n)
	})
	t.Run("with --scope-headers stripe-account each account runs its own", func(t *testing.T) {
		t.Parallel()
		a, b, n := charges(t, startStack(t, "--scope-headers", "stripe-account"))
		require.NotEqual(t, a.ID, b.ID)
		require.Empty(t, b.LastResponse.Header.Get("Idempotent-Replayed"))
		require.Equal(t, 2, n)
		t.Logf("stripe-account in the scope: A %s, B %s; executions %d", a.ID, b.ID, n)
	})
}

// shippedUnavailable is the body of envoy.yaml's proxy-unavailable mapper,
// which docs/errors.md's Stripe snippet replaces.
const shippedUnavailable = `              status_code: 503
              headers_to_add:
              - header: { key: retry-after, value: "1" }
                append_action: OVERWRITE_IF_EXISTS_OR_ADD
              body_format_override:
                content_type: application/problem+json
                json_format:
                  type: urn:idemproxy:problem:proxy-unavailable
                  title: The idempotency layer is unavailable
                  status: "%RESPONSE_CODE%"
                  detail: "Envoy could not reach idemproxy, or the exchange with it failed. Retrying with the same idempotency key is safe: a request that may have run is never run again."
`

// TestStripeGo_LocalReplySnippet: Envoy's own reply when idemproxy is
// unreachable cannot follow a route's error format (local_reply_config
// is per listener); the snippet docs/errors.md gives for a Stripe-only
// listener, applied as written, makes it a 429 lock_timeout that
// stripe-go retries with the same key.
func TestStripeGo_LocalReplySnippet(t *testing.T) {
	t.Parallel()
	doc, err := os.ReadFile(filepath.Join("..", "docs", "errors.md"))
	require.NoError(t, err)
	_, after, ok := strings.Cut(string(doc), "### Envoy's own replies")
	require.True(t, ok)
	_, after, ok = strings.Cut(after, "```yaml\n")
	require.True(t, ok)
	snippet, _, ok := strings.Cut(after, "```")
	require.True(t, ok)
	s := startStackWith(t, stackConfig{envoyEdits: [][2]string{{shippedUnavailable, snippet}}})
	s.idemproxy.Kill()
	key := newKey(t)
	_, err = stripeClient(s, "", stripe.DefaultMaxNetworkRetries).New(chargeParams(key, 100))
	se := requireStripeError(t, err, http.StatusTooManyRequests, stripe.ErrorTypeAPI, "lock_timeout")
	require.Equal(t, problem+"proxy-unavailable", se.LastResponse.Header.Get("Idempotency-Problem"))
	require.Zero(t, s.executions(t, key))
	sent := s.envoyStat(t, "http.ingress.downstream_rq_4xx")
	require.Equal(t, int(stripe.DefaultMaxNetworkRetries)+1, sent, "retried by the SDK")
	t.Logf("idemproxy down, the documented Stripe local reply: %d %s/%s, sent %d times; executions 0", se.HTTPStatusCode, se.Type, se.Code, sent)
}

// TestStripeGo_InUseEndsRetries is the fault test of the Stripe mapping's
// in-progress answer: a template that answers a duplicate as Stripe's own
// API names the state (409 idempotency_key_in_use) ends stripe-go's
// retries at the first answer, so a duplicate of a 1 s charge fails where
// --error-format stripe (429 lock_timeout) gets the replay.
func TestStripeGo_InUseEndsRetries(t *testing.T) {
	t.Parallel()
	tmpl := filepath.Join(t.TempDir(), "stripe-own.json")
	require.NoError(t, os.WriteFile(tmpl, []byte(`{"error":{"type":"invalid_request_error","code":"idempotency_key_in_use","message":"{{detail}}"}}`), 0o600))
	s := startStack(t, "--error-format", "template", "--error-template-file", tmpl)
	c := stripeClient(s, "", stripe.DefaultMaxNetworkRetries)
	key := newKey(t)
	params := func() *stripe.ChargeCreateParams { return chargeParams(key, 100, "delay", "1s") }
	first := goCharge(c, params())
	testenv.WaitFor(t, 10*time.Second, "the first charge running upstream", func() bool { return s.executions(t, key) == 1 })
	conflicts := s.outcomes(t, "in_progress_conflict")
	_, err := c.New(params())
	requireStripeError(t, err, http.StatusConflict, stripe.ErrorTypeInvalidRequest, stripe.ErrorCodeIdempotencyKeyInUse)
	require.Equal(t, 1, s.outcomes(t, "in_progress_conflict")-conflicts, "not retried: the duplicate failed at the first answer")
	orig := testenv.Receive(t, first, 10*time.Second, "the first charge")
	require.NoError(t, orig.err)
	require.Equal(t, 1, s.executions(t, key))
	t.Logf("409 idempotency_key_in_use: stripe-go stopped after 1 attempt; the duplicate of a 1 s charge failed (typed 409) instead of getting the replay")
}
