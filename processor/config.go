package processor

import (
	"errors"
	"fmt"
	"strings"
	"time"
)

// Config is the processor's policy. Start from DefaultConfig: a zero field
// is not replaced by its default, and Validate refuses what cannot work.
type Config struct {
	// KeyHeaders are the request headers that carry the idempotency key,
	// lower-case. A request without any of them passes through untouched.
	KeyHeaders []string
	// ScopeHeaders are identity headers (set by a trusted filter, e.g. an
	// auth filter's x-tenant-id) added to the scope next to :authority.
	ScopeHeaders []string
	// ScopeAuthorization puts a hash of the Authorization header into the
	// scope, so two credentials never share a record. Off, requests with
	// the same authority and scope headers share their keys.
	ScopeAuthorization bool
	// ScopeJWTClaim, when set, scopes keys by this claim of the JWT that
	// Envoy's jwt_authn filter verified (forwarded as filter metadata)
	// instead of the credential hash, so a refreshed token of the same
	// subject keeps its records. A keyed request without it is refused.
	ScopeJWTClaim string
	// ScopeJWTPayload is the jwt_authn provider's payload_in_metadata name.
	ScopeJWTPayload string
	// ScopeLegacyUntil, while in the future, makes a new key also look
	// for a record under the previous version's scope (authority and
	// scope headers only), so a retry of a request made before the
	// upgrade still finds it.
	ScopeLegacyUntil time.Time
	// InProgress, when InProgressWait, holds a duplicate of a key in
	// progress (same fingerprint) until the first request completes, then
	// answers it with the replay, instead of 409 at once. Up to MaxWait; at
	// most MaxWaiters at once per process (beyond, the 409 at once).
	// WaitRecheck bounds how long a waiter relies on the completion notice
	// alone.
	InProgress  InProgress
	MaxWait     time.Duration
	MaxWaiters  int
	WaitRecheck time.Duration
	// Mode ModeShadow takes part exactly as in enforcement (acquire,
	// fingerprint, complete) but never changes what the client gets: what
	// would be refused or replayed is passed upstream instead, and counted.
	Mode Mode
	// Methods is an optional allow-list; empty means every method takes part.
	Methods []string
	// LockTTL is how long an in-progress lock lives without renewal.
	LockTTL time.Duration
	// Heartbeat is how often the watchdog renews a held lock.
	Heartbeat time.Duration
	// Retention is how long a completed response is kept for replay.
	Retention time.Duration
	// ReplayAllViaEndpoint serves every replay from the replay endpoint
	// (Options.Replays), not only those an immediate response cannot
	// reproduce (reroute.go): no Envoy local-reply rewriting of
	// Content-Type, at the cost of a second hop and a Redis round trip.
	ReplayAllViaEndpoint bool
	// MaxStoredBody caps the stored response body; a larger response is
	// delivered in full but stored without its body.
	MaxStoredBody int
	// NoStore lists response statuses that release the key instead of
	// storing it, so the client can retry.
	NoStore StatusSet
	// ExcludeHeaders are response headers never stored for replay, on top
	// of the hop-by-hop, content-length, date and x-envoy-* headers.
	ExcludeHeaders []string
	// FailOpen lets requests through unguarded when the store fails.
	FailOpen bool
	// OnUnknown is the policy for unknown outcomes (the request went
	// upstream and no final response was seen, or its owner vanished). By
	// default (OnUnknownHold) such a key is refused for the retention
	// period, until an operator clears it; OnUnknownRerunAfterTTL, the
	// opt-in weaker policy, leaves the lock to expire after the lock TTL,
	// and a retry after that runs the request again, possibly a second time.
	OnUnknown OnUnknown
	// FenceHeader is the request header that carries the grant's fencing
	// token upstream; empty disables it.
	FenceHeader string
	// MaxRequestHeaders and MaxRequestHeaderBytes are Envoy's request
	// header limits (HCM max_headers_count, max_request_headers_kb): a
	// keyed request with no room left for the fence header is refused
	// before its key is locked.
	MaxRequestHeaders     int
	MaxRequestHeaderBytes int
	// StoreTimeout bounds each store call on the request path; it must be
	// well under Envoy's message_timeout so the client gets our 503, not
	// Envoy's 504.
	StoreTimeout time.Duration
	// FinalizeTimeout bounds the store or release that runs after the
	// response, on a context detached from the stream.
	FinalizeTimeout time.Duration
	// FinalizeUntilLease retries those writes until the key's lease ends
	// when that is later than FinalizeTimeout: until then the record
	// still reads as in progress, so a write that gets through after a
	// partition heals (cuts of 10 s were seen) stores a response the
	// client already got, where giving up leaves the key an unknown
	// outcome for the retention. A completion still failing at
	// FinalizeTimeout goes on in the background instead (pending.go), so
	// the stream's goroutine is not held. Off, FinalizeTimeout alone
	// bounds them, and no completion is kept.
	FinalizeUntilLease bool
	// ErrorFormat is the shape of idemproxy's own error bodies; a route
	// may choose another. ErrorFormatTemplate renders ErrorTemplate.
	ErrorFormat   ErrorFormat
	ErrorTemplate *ErrorTemplate
	// MaxPendingCompletions bounds the responses kept for a background
	// completion when the store did not take them within FinalizeTimeout
	// (pending.go); MaxPendingBytes bounds the bodies and headers they
	// hold (over it, one is kept as its status alone).
	MaxPendingCompletions int
	MaxPendingBytes       int64
	// MetadataNamespace is the dynamic-metadata namespace of the decision
	// returned to Envoy (observe.go); empty returns none.
	MetadataNamespace string
}

// DefaultConfig returns the defaults documented in docs/configuration.md.
func DefaultConfig() Config {
	return Config{
		KeyHeaders:            []string{"idempotency-key", "x-idempotency-key"},
		ScopeAuthorization:    true,
		MaxWait:               10 * time.Second,
		MaxWaiters:            1000,
		WaitRecheck:           time.Second,
		ScopeJWTPayload:       DefaultJWTPayload,
		LockTTL:               30 * time.Second,
		Heartbeat:             10 * time.Second,
		Retention:             24 * time.Hour,
		MaxStoredBody:         1 << 20,
		NoStore:               MustParseStatusSet("408,425,429"),
		ExcludeHeaders:        []string{"set-cookie"},
		FenceHeader:           "idempotency-fence",
		MaxRequestHeaders:     100,
		MaxRequestHeaderBytes: 60 << 10,
		StoreTimeout:          time.Second,
		FinalizeTimeout:       5 * time.Second,
		FinalizeUntilLease:    true,
		MaxPendingCompletions: 1000,
		MaxPendingBytes:       64 << 20,
		MetadataNamespace:     DefaultMetadataNamespace,
	}
}

// Validate reports the first setting that cannot work.
func (c Config) Validate() error {
	var errs []error
	if len(c.KeyHeaders) == 0 {
		errs = append(errs, errors.New("at least one key header is required"))
	}
	names := append(append([]string{}, c.KeyHeaders...), c.ScopeHeaders...)
	if c.FenceHeader != "" {
		names = append(names, c.FenceHeader)
	}
	for _, h := range names {
		if !validHeaderName(h) {
			errs = append(errs, fmt.Errorf("header name %q must be a lower-case token", h))
		}
	}
	if err := (timings{c.LockTTL, c.Heartbeat, c.Retention}).check("lock TTL", "heartbeat", "retention"); err != nil {
		errs = append(errs, err)
	}
	if c.ScopeJWTClaim != "" && (c.ScopeJWTPayload == "" || strings.ContainsAny(c.ScopeJWTClaim+c.ScopeJWTPayload, " \t\r\n")) {
		errs = append(errs, fmt.Errorf("JWT claim %q and payload name %q must be non-empty words", c.ScopeJWTClaim, c.ScopeJWTPayload))
	}
	if c.MaxWait <= 0 || c.MaxWait > MaxWaitLimit || c.MaxWaiters < 0 || c.WaitRecheck <= 0 {
		errs = append(errs, fmt.Errorf("max wait %v must be positive and at most %v, max waiters %d not negative, wait re-check %v positive",
			c.MaxWait, MaxWaitLimit, c.MaxWaiters, c.WaitRecheck))
	}
	if c.MaxRequestHeaders < 1 || c.MaxRequestHeaderBytes < 1 {
		errs = append(errs, errors.New("the request header limits must be positive"))
	}
	if c.MaxStoredBody < 0 {
		errs = append(errs, fmt.Errorf("max stored body %d must not be negative", c.MaxStoredBody))
	}
	if c.MaxPendingCompletions < 0 || c.MaxPendingBytes < 0 {
		errs = append(errs, errors.New("max pending completions and their bytes must not be negative"))
	}
	if c.StoreTimeout <= 0 || c.FinalizeTimeout <= 0 {
		errs = append(errs, errors.New("store and finalize timeouts must be positive"))
	}
	if err := c.checkEnums(); err != nil {
		errs = append(errs, err)
	}
	if c.ErrorFormat == ErrorFormatTemplate && c.ErrorTemplate == nil {
		errs = append(errs, errors.New("--error-format template needs --error-template-file"))
	}
	return errors.Join(errs...)
}

// timings are the lock and retention durations. One set of rules checks
// them, whether they come from flags or from a route's metadata.
type timings struct{ lockTTL, heartbeat, retention time.Duration }

// check reports every rule the durations break; the names say where each
// came from (a flag or a metadata key).
func (d timings) check(lockTTL, heartbeat, retention string) error {
	var errs []error
	if d.lockTTL < time.Second {
		errs = append(errs, fmt.Errorf("%s %v must be at least 1s", lockTTL, d.lockTTL))
	}
	switch {
	case d.heartbeat <= 0:
		errs = append(errs, fmt.Errorf("%s %v must be positive", heartbeat, d.heartbeat))
	case d.heartbeat >= d.lockTTL:
		errs = append(errs, fmt.Errorf("%s %v must be shorter than the lock TTL %v", heartbeat, d.heartbeat, d.lockTTL))
	}
	if d.retention < d.lockTTL {
		errs = append(errs, fmt.Errorf("%s %v must be at least the lock TTL %v", retention, d.retention, d.lockTTL))
	}
	return errors.Join(errs...)
}
