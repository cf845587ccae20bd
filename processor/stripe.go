package processor

// The Stripe envelope (--error-format stripe): {"error":{"type","code",
// "message"}}, which Stripe's SDKs parse into typed errors. The statuses
// and codes are chosen for the SDKs' retry loops, read from stripe-go
// v82.5.1 (stripe.go Do, ResponseToError, shouldRetry; error.go canRetry):
// a typed *stripe.Error is retried only when it is a 429 with code
// lock_timeout, whatever its Stripe-Should-Retry header says, and an error
// body it cannot parse (problem+json) is retried whatever its status.
// docs/errors.md has the table and reasons.

import "encoding/json"

// stripeShouldRetry is the header Stripe's SDKs read for retry advice.
const stripeShouldRetry = "stripe-should-retry"

// Stripe's error types and the codes used here that Stripe itself uses.
const (
	stripeInvalidRequest = "invalid_request_error"
	stripeIdempotency    = "idempotency_error"
	stripeAPI            = "api_error"
	stripeLockTimeout    = "lock_timeout"
)

// stripeError is one problem type in Stripe's shape.
type stripeError struct {
	status int
	typ    string
	code   string
	retry  bool // Stripe-Should-Retry: the same key may be sent again soon
}

// stripeErrors maps each problem slug. in-progress and store-unavailable
// are 429 lock_timeout, the only typed error stripe-go retries (with the
// same key): a 409 idempotency_key_in_use, Stripe's own code, would end
// its retries at once, and the application's next call would carry a
// new key. Everything a retry cannot change is typed, so it surfaces at
// once instead of being sent again.
var stripeErrors = map[string]stripeError{
	probInvalidKey.slug:       {400, stripeInvalidRequest, "idemproxy_invalid_key", false},
	probKeyRequired.slug:      {400, stripeInvalidRequest, "parameter_missing", false},
	probHeadersTooLarge.slug:  {431, stripeInvalidRequest, "idemproxy_headers_too_large", false},
	probInProgress.slug:       {429, stripeInvalidRequest, stripeLockTimeout, true},
	probMismatch.slug:         {422, stripeIdempotency, "idempotency_error", false},
	probNotStored.slug:        {409, stripeIdempotency, "idemproxy_response_not_stored", false},
	probStoreUnavail.slug:     {429, stripeAPI, stripeLockTimeout, true},
	probStoreReset.slug:       {503, stripeAPI, "idemproxy_store_reset", false},
	probMisconfigured.slug:    {500, stripeAPI, "idemproxy_misconfigured", false},
	probOutcomeUnknown.slug:   {409, stripeIdempotency, "idemproxy_outcome_unknown", false},
	probIdentityRequired.slug: {401, stripeInvalidRequest, "idemproxy_identity_required", false},
}

// stripeErrorOf is p in Stripe's shape; a type without an entry (a test
// keeps every one covered) keeps its status as an api_error.
func stripeErrorOf(p problemType) stripeError {
	if se, ok := stripeErrors[p.slug]; ok {
		return se
	}
	return stripeError{p.status, stripeAPI, "idemproxy_" + p.slug, false}
}

func (se stripeError) shouldRetry() string {
	if se.retry {
		return "true"
	}
	return "false"
}

// stripeBody is the envelope stripe-go's ResponseToError decodes.
type stripeBody struct {
	Error struct {
		Type    string `json:"type"`
		Code    string `json:"code"`
		Message string `json:"message"`
	} `json:"error"`
}

// body renders the envelope; marshalling strings cannot fail.
func (se stripeError) body(detail string) []byte {
	var b stripeBody
	b.Error.Type, b.Error.Code, b.Error.Message = se.typ, se.code, detail
	out, _ := json.Marshal(b)
	return out
}
