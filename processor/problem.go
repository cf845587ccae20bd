package processor

import (
	"encoding/json"
	"strconv"
)

// problemType is a stable RFC 9457 problem type; clients branch on it, so
// a value never changes once released. docs/errors.md documents each one.
type problemType struct {
	slug   string
	title  string
	status int
}

const problemBase = "urn:idemproxy:problem:"

var (
	probInvalidKey       = problemType{"invalid-key", "Invalid idempotency key", 400}
	probKeyRequired      = problemType{"key-required", "Idempotency key required", 400}
	probHeadersTooLarge  = problemType{"headers-too-large", "Request headers too large", 431}
	probInProgress       = problemType{"in-progress", "A request with this idempotency key is in progress", 409}
	probMismatch         = problemType{"fingerprint-mismatch", "Idempotency key reused with a different request", 422}
	probNotStored        = problemType{"response-not-stored", "The original response was not stored", 409}
	probStoreUnavail     = problemType{"store-unavailable", "Idempotency store unavailable", 503}
	probStoreReset       = problemType{"store-reset", "Idempotency store lost its records", 503}
	probMisconfigured    = problemType{"misconfigured", "Idempotency layer misconfigured", 500}
	probOutcomeUnknown   = problemType{"outcome-unknown", "The outcome of the first request is unknown", 409}
	probIdentityRequired = problemType{"identity-required", "Verified identity required", 401}
)

const problemContentType = "application/problem+json"

// problem is the RFC 9457 body.
type problem struct {
	Type   string `json:"type"`
	Title  string `json:"title"`
	Status int    `json:"status"`
	Detail string `json:"detail"`
}

// body renders the problem; marshalling four strings cannot fail.
func (p problemType) body(detail string) []byte {
	b, _ := json.Marshal(problem{Type: problemBase + p.slug, Title: p.title, Status: p.status, Detail: detail})
	return b
}

// retryAfterSeconds rounds a wait up to whole seconds, at least 1, as
// Retry-After takes delta-seconds.
func retryAfterSeconds(ms int64) string {
	s := (ms + 999) / 1000
	if s < 1 {
		s = 1
	}
	return strconv.FormatInt(s, 10)
}
