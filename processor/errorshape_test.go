package processor

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
	"google.golang.org/grpc/metadata"
)

// allProblemTypes is every problem type idemproxy answers with.
var allProblemTypes = []problemType{probInvalidKey, probKeyRequired, probHeadersTooLarge, probInProgress, probMismatch, probNotStored,
	probStoreUnavail, probStoreReset, probMisconfigured, probOutcomeUnknown, probIdentityRequired}

func TestProblemReply_everyShapeKeepsTheType(t *testing.T) {
	tmpl, err := ParseErrorTemplate([]byte(`{"err":"{{type}}","status":"{{status}}"}`))
	require.NoError(t, err)
	require.Len(t, stripeErrors, len(allProblemTypes), "every problem type has its Stripe mapping")
	for _, p := range allProblemTypes {
		for _, s := range []shape{{}, {format: ErrorFormatStripe}, {format: ErrorFormatTemplate, template: tmpl}} {
			ir, hs := immediateOf(t, problemReply(refused{p: p, detail: "d", retryAfter: "2"}, s))
			require.Equal(t, problemBase+p.slug, headerGet(hs, problemHeader), "%s %v", p.slug, s.format)
			require.Equal(t, "2", headerGet(hs, "retry-after"))
			require.True(t, json.Valid(ir.GetBody()), string(ir.GetBody()))
			want := map[ErrorFormat]string{ErrorFormatProblem: problemContentType, ErrorFormatStripe: jsonContentType, ErrorFormatTemplate: jsonContentType}
			require.Equal(t, want[s.format], headerGet(hs, "content-type"))
			require.Equal(t, "idemproxy_"+p.slug, ir.GetDetails())
		}
	}
}

func TestProblemReply_stripe(t *testing.T) {
	tests := []struct {
		p           problemType
		status      int
		typ, code   string
		shouldRetry string
	}{
		// stripe-go retries a typed error only as a 429 lock_timeout: the
		// in-progress duplicate and the store that did not answer.
		{probInProgress, 429, "invalid_request_error", "lock_timeout", "true"},
		{probStoreUnavail, 429, "api_error", "lock_timeout", "true"},
		{probMismatch, 422, "idempotency_error", "idempotency_error", "false"},
		{probOutcomeUnknown, 409, "idempotency_error", "idemproxy_outcome_unknown", "false"},
		{probNotStored, 409, "idempotency_error", "idemproxy_response_not_stored", "false"},
		{probStoreReset, 503, "api_error", "idemproxy_store_reset", "false"},
		{probKeyRequired, 400, "invalid_request_error", "parameter_missing", "false"},
	}
	for _, tc := range tests {
		t.Run(tc.p.slug, func(t *testing.T) {
			ir, hs := immediateOf(t, problemReply(refused{p: tc.p, detail: `say "why"`}, shape{format: ErrorFormatStripe}))
			require.EqualValues(t, tc.status, ir.GetStatus().GetCode())
			require.Equal(t, tc.shouldRetry, headerGet(hs, stripeShouldRetry))
			var b stripeBody
			require.NoError(t, json.Unmarshal(ir.GetBody(), &b))
			require.Equal(t, tc.typ, b.Error.Type)
			require.Equal(t, tc.code, b.Error.Code)
			require.Equal(t, `say "why"`, b.Error.Message)
		})
	}
}

func TestErrorTemplate(t *testing.T) {
	tmpl, err := ParseErrorTemplate([]byte(`{"errors":[{"code":"{{type}}","status":"{{status}}","msg":"{{title}}: {{detail}}",
		"retry":"{{ retry-after }}","hint":"in {{retry_after}} s"}],"fixed":true,"n":1.50}`))
	require.NoError(t, err)
	detail := "a \"quoted\"\nline with </script> & \\ and \u2028"
	var got struct {
		Errors []map[string]any `json:"errors"`
		Fixed  bool             `json:"fixed"`
		N      json.Number      `json:"n"`
	}
	body := tmpl.render(refused{p: probInProgress, detail: detail, retryAfter: "3"})
	require.NoError(t, json.Unmarshal(body, &got), string(body))
	e := got.Errors[0]
	require.Equal(t, "urn:idemproxy:problem:in-progress", e["code"])
	require.EqualValues(t, 409, e["status"], "a whole-value placeholder keeps its JSON type")
	require.Equal(t, probInProgress.title+": "+detail, e["msg"], "escaped, and read back as it was")
	require.EqualValues(t, 3, e["retry"])
	require.Equal(t, "in 3 s", e["hint"])
	require.True(t, got.Fixed)
	require.Equal(t, "1.50", got.N.String(), "numbers keep their text")

	body = tmpl.render(refused{p: probMismatch, detail: "x"})
	require.NoError(t, json.Unmarshal(body, &got))
	require.Nil(t, got.Errors[0]["retry"], "no Retry-After: null")
	require.Equal(t, "in  s", got.Errors[0]["hint"])

	for in, want := range map[string]string{
		`{"a":"{{status}}"} {}`:   "more than one value",
		`{"a":`:                   "not JSON",
		`{"a":"{{statuz}}"}`:      "unknown placeholder {{statuz}}",
		`["{{detail}}", "{{x}}"]`: "unknown placeholder {{x}}",
	} {
		_, err := ParseErrorTemplate([]byte(in))
		require.ErrorContains(t, err, want, in)
	}
}

func TestServer_policyFor_errorFormat(t *testing.T) {
	srv, _ := newTestServer(t, newFakeStore(), nil)
	pol := func(kv ...string) (policy, error) {
		return srv.policyFor(metadata.NewIncomingContext(t.Context(), metadata.Pairs(kv...)))
	}
	p, err := pol(mdErrorFormat, "stripe")
	require.NoError(t, err)
	require.Equal(t, ErrorFormatStripe, p.shape.format)
	_, err = pol(mdErrorFormat, "xml")
	require.ErrorContains(t, err, `x-idemproxy-error-format="xml" must be problem, stripe or template`)
	p, err = pol(mdErrorFormat, "template")
	require.ErrorContains(t, err, "without --error-template-file")
	require.Equal(t, ErrorFormatProblem, p.shape.format, "the misconfigured answer keeps the global shape")

	tmpl, err := ParseErrorTemplate([]byte(`{"e":"{{type}}"}`))
	require.NoError(t, err)
	srv, _ = newTestServer(t, newFakeStore(), func(c *Config) { c.ErrorFormat, c.ErrorTemplate = ErrorFormatStripe, tmpl })
	p, err = srv.policyFor(metadata.NewIncomingContext(t.Context(), metadata.Pairs(mdErrorFormat, "template")))
	require.NoError(t, err)
	require.Equal(t, shape{format: ErrorFormatTemplate, template: tmpl}, p.shape)
	p, err = srv.policyFor(t.Context())
	require.NoError(t, err)
	require.Equal(t, ErrorFormatStripe, p.shape.format, "the global setting")
}

// TestServer_Process_errorFormat: a route's refusals, the in-progress
// duplicate among them, come in its shape; its replays are untouched.
func TestServer_Process_errorFormat(t *testing.T) {
	store := newFakeStore()
	srv, _ := newTestServer(t, store, nil)
	first := withRoutePolicy(t, srv, mdErrorFormat, "stripe")
	requireContinue(t, first.roundTrip(keyed("POST", "k", true)))

	dup := withRoutePolicy(t, srv, mdErrorFormat, "stripe")
	ir, hs := immediateOf(t, dup.roundTrip(keyed("POST", "k", true)))
	require.EqualValues(t, 429, ir.GetStatus().GetCode())
	require.Equal(t, "urn:idemproxy:problem:in-progress", headerGet(hs, problemHeader))
	require.True(t, strings.Contains(string(ir.GetBody()), `"code":"lock_timeout"`), string(ir.GetBody()))
	require.NotEmpty(t, headerGet(hs, "retry-after"))

	s := withRoutePolicy(t, srv, mdErrorFormat, "stripe", mdLockTTL, "banana")
	ir, _ = immediateOf(t, s.roundTrip(keyed("POST", "k2", true)))
	require.EqualValues(t, 500, ir.GetStatus().GetCode())
	require.Contains(t, string(ir.GetBody()), `"code":"idemproxy_misconfigured"`, "a route whose shape parsed keeps it")

}
