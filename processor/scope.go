package processor

// The scope of a key: whose key it is. Two clients that send the same key
// must never share a record, or one gets the other's response and its own
// charge never runs. The scope is the normalised authority, the client's
// identity (a hash of its credential, or a verified JWT claim) and any
// trusted identity headers; the IETF draft asks for exactly this kind of
// composite key, and Stripe scopes keys per account.

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"strings"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	"google.golang.org/protobuf/types/known/structpb"
)

// jwtNamespace is where Envoy's jwt_authn filter writes the verified
// payload; ext_proc forwards it when metadata_options names it.
const jwtNamespace = "envoy.filters.http.jwt_authn"

// DefaultJWTPayload is jwt_authn's payload_in_metadata name we read by
// default.
const DefaultJWTPayload = "jwt_payload"

// errNoClaim refuses a keyed request without the configured JWT claim:
// scoping it to nobody would let it share records with every other such
// request.
var errNoClaim = errors.New("processor: the request has no verified JWT claim to scope its key by")

// requestScope is what a request's headers and metadata say about whose key
// it is, before the key itself.
type requestScope struct {
	authority, scheme string
	authorization     string
	headers           []string // --scope-headers values, in their order
}

// normalizeAuthority lower-cases the authority and drops the scheme's
// default port, so "A.example", "a.example" and "a.example:80" (http) are
// one scope, as are an HTTP/2 :authority with its port and an HTTP/1.1 Host
// without. IPv6 literals keep their brackets: "[::1]:443" over https is
// "[::1]".
func normalizeAuthority(authority, scheme string) string {
	a := strings.ToLower(strings.TrimSpace(authority))
	host, port, err := net.SplitHostPort(a)
	if err != nil {
		return strings.TrimSuffix(a, ".") // no port (or not host:port at all)
	}
	host = strings.TrimSuffix(host, ".")
	if strings.Contains(host, ":") {
		host = "[" + host + "]"
	}
	if (port == "80" && scheme != "https") || (port == "443" && scheme == "https") || port == "" {
		return host
	}
	return host + ":" + port
}

// identity is the part of the scope that names the client: the verified
// JWT claim when --scope-jwt-claim is set (so a refreshed token of the same
// subject keeps its records), else a hash of the Authorization header
// (so two credentials never share a record; never kept or logged in
// clear), else nothing.
func (s *Server) identity(rs requestScope, md map[string]*structpb.Struct) (string, error) {
	if s.cfg.ScopeJWTClaim != "" {
		claim, ok := jwtClaim(md[jwtNamespace], s.cfg.ScopeJWTPayload, s.cfg.ScopeJWTClaim)
		if !ok {
			return "", errNoClaim
		}
		return "jwt:" + claim, nil
	}
	if s.cfg.ScopeAuthorization && rs.authorization != "" {
		return credentialID(rs.authorization), nil
	}
	return "", nil
}

// credentialID names a credential by a hash, never by its value.
func credentialID(authorization string) string {
	sum := sha256.Sum256([]byte(authorization))
	return "cred:" + hex.EncodeToString(sum[:16])
}

// jwtClaim reads one claim of the verified payload; numbers and booleans
// count as their JSON text, objects and lists do not.
func jwtClaim(ns *structpb.Struct, payload, claim string) (string, bool) {
	p := ns.GetFields()[payload].GetStructValue()
	v, ok := p.GetFields()[claim]
	if !ok {
		return "", false
	}
	switch k := v.GetKind().(type) {
	case *structpb.Value_StringValue:
		return k.StringValue, k.StringValue != ""
	case *structpb.Value_NumberValue:
		return fmt.Sprint(k.NumberValue), true
	case *structpb.Value_BoolValue:
		return fmt.Sprint(k.BoolValue), true
	default:
		return "", false
	}
}

// scopeParts builds the scope of a request: normalised authority, the
// --scope-headers values, and the identity when there is one. The identity
// comes last and only when present, so keys of requests without one are
// the same as the previous version's (the encoding of a sequence of
// length-prefixed parts never lets two different sequences meet).
func (s *Server) scopeParts(rs requestScope, identity string) []string {
	parts := make([]string, 0, 2+len(rs.headers))
	parts = append(parts, normalizeAuthority(rs.authority, rs.scheme))
	parts = append(parts, rs.headers...)
	if identity != "" {
		parts = append(parts, identity)
	}
	return parts
}

// legacyParts is the scope the previous version built for the same
// request: the authority only lower-cased, the headers, no identity. It is
// only consulted during --scope-legacy-until.
func legacyParts(rs requestScope) []string {
	return append([]string{strings.ToLower(rs.authority)}, rs.headers...)
}

// readScope collects the scope inputs from the request headers.
func (s *Server) readScope(hv *corev3.HeaderValue, rs *requestScope) {
	switch name := hv.GetKey(); name {
	case ":authority":
		rs.authority = headerValue(hv)
	case ":scheme":
		rs.scheme = headerValue(hv)
	case "authorization":
		rs.authorization = headerValue(hv)
	default:
		if i, ok := s.scope[name]; ok {
			rs.headers[i] = headerValue(hv)
		}
	}
}

// ScopeInput is what an operator gives to name a key's scope: the same
// inputs a request carries.
type ScopeInput struct {
	Authority string
	// Scheme is "http" or "https" (default "http"): it decides which
	// default port the authority drops.
	Scheme string
	// Authorization is the client's Authorization header value, hashed
	// like a request's; JWTClaim the value of --scope-jwt-claim's claim.
	Authorization, JWTClaim string
	// Headers holds the --scope-headers values by name.
	Headers map[string]string
}

// StoreKey is the store key of a client key as a request with this scope
// would get, for operators inspecting or clearing a key. rawKey is parsed
// like the header.
func (s *Server) StoreKey(in ScopeInput, rawKey string) (string, error) {
	key, err := parseKey(rawKey)
	if err != nil {
		return "", err
	}
	rs := requestScope{authority: in.Authority, scheme: in.Scheme, authorization: in.Authorization,
		headers: make([]string, len(s.cfg.ScopeHeaders))}
	for i, h := range s.cfg.ScopeHeaders {
		rs.headers[i] = in.Headers[h]
	}
	identity := ""
	switch {
	case s.cfg.ScopeJWTClaim != "" && in.JWTClaim == "":
		return "", fmt.Errorf("keys are scoped by the JWT claim %q: give its value", s.cfg.ScopeJWTClaim)
	case s.cfg.ScopeJWTClaim != "":
		identity = "jwt:" + in.JWTClaim
	case s.cfg.ScopeAuthorization && in.Authorization != "":
		identity = credentialID(in.Authorization)
	}
	return storeKey(s.scopeParts(rs, identity), key), nil
}
