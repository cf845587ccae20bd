package envoy

import (
	"encoding/json"
	"net/http"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"github.com/stripe/stripe-go/v82"

	"github.com/idemproxy/idemproxy/internal/testenv"
)

// TestStripeGo_StripeShape: Stripe's Go SDK, unchanged, against the shipped
// envoy.yaml with --error-format stripe. What a retry cannot change
// surfaces at once as a typed error with its status, sent once; a
// duplicate of a short charge is retried by the SDK into the replay.
func TestStripeGo_StripeShape(t *testing.T) {
	t.Parallel()
	s := startStack(t, "--error-format", "stripe")
	c := stripeClient(s, "", stripe.DefaultMaxNetworkRetries)

	t.Run("a reused key with another body: typed 422, sent once", func(t *testing.T) {
		key := newKey(t)
		first, err := c.New(chargeParams(key, 100))
		require.NoError(t, err)
		before := s.outcomes(t, "fingerprint_mismatch")
		_, err = c.New(chargeParams(key, 200))
		se := requireStripeError(t, err, http.StatusUnprocessableEntity, stripe.ErrorTypeIdempotency, "idempotency_error")
		require.Equal(t, problem+"fingerprint-mismatch", se.LastResponse.Header.Get("Idempotency-Problem"))
		require.Equal(t, "application/json", se.LastResponse.Header.Get("Content-Type"))
		require.Equal(t, 1, s.outcomes(t, "fingerprint_mismatch")-before, "sent once: not retried")
		require.Equal(t, 1, s.executions(t, key))
		t.Logf("reused key: %s %d %s/%s %q (first charge %s)", se.LastResponse.Header.Get("Idempotency-Problem"), se.HTTPStatusCode, se.Type, se.Code, se.Msg, first.ID)
	})

	t.Run("an unknown outcome: typed 409, not retried", func(t *testing.T) {
		key := unknownOutcome(t, s)
		before := s.outcomes(t, "outcome_unknown")
		start := time.Now()
		_, err := c.New(chargeParams(key, 100, "hangup", "true"))
		se := requireStripeError(t, err, http.StatusConflict, stripe.ErrorTypeIdempotency, "idemproxy_outcome_unknown")
		require.Equal(t, "false", se.LastResponse.Header.Get("Stripe-Should-Retry"))
		require.Equal(t, 1, s.outcomes(t, "outcome_unknown")-before, "sent once: not retried")
		require.Equal(t, 1, s.executions(t, key), "never run again")
		t.Logf("unknown outcome: %d %s/%s after %v, 1 request", se.HTTPStatusCode, se.Type, se.Code, time.Since(start).Round(time.Millisecond))
	})

	t.Run("a duplicate of a 1 s charge ends with the replay under the SDK's default retries", func(t *testing.T) {
		key := newKey(t)
		params := func() *stripe.ChargeCreateParams { return chargeParams(key, 100, "delay", "1s") }
		first := goCharge(c, params())
		testenv.WaitFor(t, 10*time.Second, "the first charge running upstream", func() bool { return s.executions(t, key) == 1 })
		conflicts := s.outcomes(t, "in_progress_conflict")
		start := time.Now()
		dup, err := c.New(params())
		require.NoError(t, err)
		elapsed := time.Since(start)
		orig := testenv.Receive(t, first, 10*time.Second, "the first charge")
		require.NoError(t, orig.err)
		require.Equal(t, orig.ch.ID, dup.ID, "the duplicate got the first charge, replayed")
		require.Equal(t, "true", dup.LastResponse.Header.Get("Idempotent-Replayed"))
		require.Equal(t, 1, s.executions(t, key))
		n := s.outcomes(t, "in_progress_conflict") - conflicts
		require.Positive(t, n, "the duplicate met the charge in progress")
		t.Logf("duplicate of a 1 s charge: %d x 429 lock_timeout, then the replay, %v after the duplicate was sent; backend executions 1",
			n, elapsed.Round(time.Millisecond))
	})

	t.Run("a duplicate of a 3 s charge outlasts the default retries: a typed 429, never a second run", func(t *testing.T) {
		key := newKey(t)
		params := func() *stripe.ChargeCreateParams { return chargeParams(key, 100, "delay", "3s") }
		first := goCharge(c, params())
		testenv.WaitFor(t, 10*time.Second, "the first charge running upstream", func() bool { return s.executions(t, key) == 1 })
		conflicts := s.outcomes(t, "in_progress_conflict")
		start := time.Now()
		_, err := c.New(params())
		elapsed := time.Since(start)
		se := requireStripeError(t, err, http.StatusTooManyRequests, stripe.ErrorTypeInvalidRequest, "lock_timeout")
		require.Equal(t, problem+"in-progress", se.LastResponse.Header.Get("Idempotency-Problem"))
		require.Equal(t, int(stripe.DefaultMaxNetworkRetries)+1, s.outcomes(t, "in_progress_conflict")-conflicts)
		orig := testenv.Receive(t, first, 10*time.Second, "the first charge")
		require.NoError(t, orig.err)
		again, err := c.New(params())
		require.NoError(t, err, "the same key, later: the replay")
		require.Equal(t, orig.ch.ID, again.ID)
		require.Equal(t, 1, s.executions(t, key))
		t.Logf("duplicate of a 3 s charge: %d x 429 lock_timeout over %v, Retry-After %s on the last; the same key after the original: the replay; executions 1",
			int(stripe.DefaultMaxNetworkRetries)+1, elapsed.Round(time.Millisecond), se.LastResponse.Header.Get("Retry-After"))
	})
}

// errorTemplate is the --error-template-file of TestStripeGo_RouteShapes.
const errorTemplate = `{"errors":[{"code":"{{type}}","status":"{{status}}","message":"{{title}}: {{detail}}","retry_after":"{{retry_after}}"}]}`

// TestStripeGo_RouteShapes: the shape is a route's choice. The shipped
// default (problem+json) is what stripe-go cannot parse, as before; the
// /wait/ route in the Stripe shape holds stripe-go's duplicate until the
// replay, in one attempt; /strict/ renders the operator's template.
func TestStripeGo_RouteShapes(t *testing.T) {
	t.Parallel()
	tmpl := filepath.Join(t.TempDir(), "errors.json")
	require.NoError(t, os.WriteFile(tmpl, []byte(errorTemplate), 0o600))
	const ind = "\n                      "
	s := startStackWith(t, stackConfig{idemproxyArgs: []string{"--error-template-file", tmpl}, envoyEdits: [][2]string{
		{"- { key: x-idemproxy-max-wait, value: 25s }", "- { key: x-idemproxy-max-wait, value: 25s }" + ind + "- { key: x-idemproxy-error-format, value: stripe }"},
		{"- { key: x-idemproxy-retention, value: 1h }", "- { key: x-idemproxy-retention, value: 1h }" + ind + "- { key: x-idemproxy-error-format, value: template }"},
	}})

	t.Run("the default shape: problem+json, which stripe-go cannot parse and retries", func(t *testing.T) {
		c := stripeClient(s, "", stripe.DefaultMaxNetworkRetries)
		key := newKey(t)
		_, err := c.New(chargeParams(key, 100))
		require.NoError(t, err)
		before := s.outcomes(t, "fingerprint_mismatch")
		_, err = c.New(chargeParams(key, 200))
		var se *stripe.Error
		require.Error(t, err)
		require.NotErrorAs(t, err, &se, "problem+json is not Stripe's envelope")
		sent := s.outcomes(t, "fingerprint_mismatch") - before
		require.Equal(t, int(stripe.DefaultMaxNetworkRetries)+1, sent, "an unparsed 422 is retried")
		r := s.do(t, "POST", "/charge", `{"amount":1}`, "Idempotency-Key", key, "Authorization", "Bearer sk_test_idemproxy")
		require.Equal(t, http.StatusUnprocessableEntity, r.status)
		require.Equal(t, problem+"fingerprint-mismatch", r.problemType())
		require.Equal(t, problem+"fingerprint-mismatch", r.header.Get("Idempotency-Problem"))
		t.Logf("problem shape: stripe-go got an untyped error (%.60q...), the 422 sent %d times", err.Error(), sent)
	})

	t.Run("the default shape: an unknown outcome is retried too, untyped", func(t *testing.T) {
		key := unknownOutcome(t, s)
		before := s.outcomes(t, "outcome_unknown")
		_, err := stripeClient(s, "", stripe.DefaultMaxNetworkRetries).New(chargeParams(key, 100, "hangup", "true"))
		var se *stripe.Error
		require.NotErrorAs(t, err, &se)
		sent := s.outcomes(t, "outcome_unknown") - before
		require.Equal(t, int(stripe.DefaultMaxNetworkRetries)+1, sent)
		require.Equal(t, 1, s.executions(t, key))
		t.Logf("problem shape: outcome-unknown sent %d times, untyped", sent)
	})

	t.Run("the waiting route: one attempt, the replay at the original's end", func(t *testing.T) {
		c := stripeClient(s, "/wait", stripe.DefaultMaxNetworkRetries)
		key := newKey(t)
		params := func() *stripe.ChargeCreateParams { return chargeParams(key, 100, "delay", "3s") }
		first := goCharge(c, params())
		testenv.WaitFor(t, 10*time.Second, "the first charge running upstream", func() bool { return s.executions(t, key) == 1 })
		conflicts, replays := s.outcomes(t, "in_progress_conflict"), s.outcomes(t, "replayed")
		start := time.Now()
		dup, err := c.New(params())
		require.NoError(t, err)
		dupDone := time.Now()
		orig := testenv.Receive(t, first, 10*time.Second, "the first charge")
		require.NoError(t, orig.err)
		require.Equal(t, orig.ch.ID, dup.ID)
		require.Equal(t, "true", dup.LastResponse.Header.Get("Idempotent-Replayed"))
		require.Equal(t, 0, s.outcomes(t, "in_progress_conflict")-conflicts, "no 429: held, not refused")
		require.Equal(t, 1, s.outcomes(t, "replayed")-replays, "one attempt")
		require.Equal(t, 1, s.executions(t, key))
		t.Logf("waiting route, 3 s charge: the duplicate's one attempt took %v and ended %v after the original's answer",
			dupDone.Sub(start).Round(time.Millisecond), dupDone.Sub(orig.done).Round(100*time.Microsecond))
	})

	t.Run("the template route renders the template", func(t *testing.T) {
		r := s.do(t, "POST", "/strict/charge", `{"amount":1}`)
		require.Equal(t, http.StatusBadRequest, r.status, "%s", r.body)
		require.Equal(t, "application/json", r.header.Get("Content-Type"))
		require.Equal(t, problem+"key-required", r.header.Get("Idempotency-Problem"))
		var body struct {
			Errors []struct {
				Code       string `json:"code"`
				Status     int    `json:"status"`
				Message    string `json:"message"`
				RetryAfter *int   `json:"retry_after"`
			} `json:"errors"`
		}
		require.NoError(t, json.Unmarshal(r.body, &body), "%s", r.body)
		require.Len(t, body.Errors, 1)
		require.Equal(t, problem+"key-required", body.Errors[0].Code)
		require.Equal(t, http.StatusBadRequest, body.Errors[0].Status)
		require.Contains(t, body.Errors[0].Message, "Idempotency key required: ")
		require.Nil(t, body.Errors[0].RetryAfter)
		t.Logf("template route: %d %s", r.status, r.body)
	})
}

// TestStripeGo_StoreAnswers: with Redis down, nothing runs and the SDK
// retries with the same key (429 lock_timeout), a bounded number of times;
// once Redis is back without its records, the store-reset refusal, which
// no retry loop can end, surfaces at once (typed 503).
func TestStripeGo_StoreAnswers(t *testing.T) {
	t.Parallel()
	s := startStack(t, "--error-format", "stripe")
	c := stripeClient(s, "", stripe.DefaultMaxNetworkRetries)
	s.redis.Stop()
	key := newKey(t)
	before := s.outcomes(t, "store_error")
	_, err := c.New(chargeParams(key, 100))
	se := requireStripeError(t, err, http.StatusTooManyRequests, stripe.ErrorTypeAPI, "lock_timeout")
	require.Equal(t, problem+"store-unavailable", se.LastResponse.Header.Get("Idempotency-Problem"))
	sent := s.outcomes(t, "store_error") - before
	require.Equal(t, int(stripe.DefaultMaxNetworkRetries)+1, sent, "retried with the same key, as often as the SDK retries")
	require.Zero(t, s.executions(t, key))

	s.redis.Restart(t)
	testenv.WaitFor(t, 15*time.Second, "the store reset to be held", func() bool {
		return s.metric(t, "idemproxy_store_reset_held_primaries") == 1
	})
	before = s.outcomes(t, "store_reset")
	_, err = c.New(chargeParams(newKey(t), 100))
	reset := requireStripeError(t, err, http.StatusServiceUnavailable, stripe.ErrorTypeAPI, "idemproxy_store_reset")
	require.Equal(t, "false", reset.LastResponse.Header.Get("Stripe-Should-Retry"))
	require.Equal(t, 1, s.outcomes(t, "store_reset")-before, "sent once")
	t.Logf("Redis down: typed %d %s, sent %d times, nothing run; store reset: typed %d %s, sent once",
		se.HTTPStatusCode, se.Code, sent, reset.HTTPStatusCode, reset.Code)
}

// unknownOutcome is a key whose charge the backend made, then cut the
// connection: Envoy's 503 is not Stripe's shape, and no retry was allowed
// for that call; it returns once idemproxy holds the key as an unknown
// outcome.
func unknownOutcome(t *testing.T, s *stack) string {
	t.Helper()
	unknown := func() float64 { return s.metric(t, `idemproxy_responses_total{result="unknown_outcome"}`) }
	before := unknown()
	key := newKey(t)
	_, err := stripeClient(s, "", 0).New(chargeParams(key, 100, "hangup", "true"))
	require.Error(t, err)
	testenv.WaitFor(t, 10*time.Second, "the key marked an unknown outcome", func() bool { return unknown() > before })
	return key
}
