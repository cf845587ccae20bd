// Package auth checks bearer tokens: those Envoy presents on every
// ext_proc stream, read from a file that is reloaded when it changes, and
// the admin API's. It also knows which listen addresses need them.
package auth

import (
	"bufio"
	"context"
	"crypto/subtle"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
)

// minTokenLen keeps tokens long enough not to be guessed.
const minTokenLen = 16

// Bearer returns the credentials of an Authorization value of the Bearer
// scheme, which RFC 9110 makes case-insensitive ("bearer x" is fine).
func Bearer(authorization string) (string, bool) {
	scheme, cred, ok := strings.Cut(strings.TrimSpace(authorization), " ")
	if !ok || !strings.EqualFold(scheme, "bearer") {
		return "", false
	}
	cred = strings.TrimSpace(cred)
	return cred, cred != ""
}

// TokenMatches compares got with every accepted token in constant time, so
// the time it takes says nothing about how much of a token was right.
func TokenMatches(got string, tokens []string) bool {
	ok := 0
	for _, want := range tokens {
		ok |= subtle.ConstantTimeCompare([]byte(got), []byte(want))
	}
	return ok == 1
}

// TokenFile holds the tokens Envoy may present on ext_proc streams: one per
// line of the file, so a rotation can add the new token, update Envoy, then
// drop the old one. The file is read again when it changes (looked at at
// most once a second); a file that turns unreadable or empty keeps the
// previous tokens, logged and counted, so a botched rotation never locks
// Envoy out or lets everyone in.
type TokenFile struct {
	path    string
	log     *slog.Logger
	reloads *prometheus.CounterVec

	mu      sync.Mutex
	tokens  []string
	modTime time.Time
	checked time.Time
	failed  time.Time // modTime of the contents that last failed to load
	gone    bool      // the file was missing at the last look
}

// NewTokenFile reads the tokens in path and registers the count of its
// reloads; it fails when the file holds no valid token.
func NewTokenFile(path string, log *slog.Logger, reg prometheus.Registerer) (*TokenFile, error) {
	f := &TokenFile{path: path, log: log, reloads: prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "idemproxy_auth_token_reloads_total",
		Help: "Reloads of --auth-token-file after it changed, by result (ok, error).",
	}, []string{"result"})}
	f.reloads.WithLabelValues("ok")
	f.reloads.WithLabelValues("error")
	if err := reg.Register(f.reloads); err != nil {
		return nil, err
	}
	st, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("--auth-token-file: %w", err)
	}
	if f.tokens, err = ReadTokens(path); err != nil {
		return nil, err
	}
	f.modTime = st.ModTime()
	return f, nil
}

// ReadTokens reads one token per line; blank lines and # comments do not count.
func ReadTokens(path string) ([]string, error) {
	file, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("--auth-token-file: %w", err)
	}
	defer file.Close()
	var tokens []string
	sc := bufio.NewScanner(file)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		if len(line) < minTokenLen || strings.ContainsAny(line, " \t") {
			return nil, fmt.Errorf("--auth-token-file %s: a token must be at least %d characters without spaces", path, minTokenLen)
		}
		tokens = append(tokens, line)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("--auth-token-file %s: %w", path, err)
	}
	if len(tokens) == 0 {
		return nil, fmt.Errorf("--auth-token-file %s holds no token", path)
	}
	return tokens, nil
}

// Current returns the accepted tokens, reloading a changed file first.
func (f *TokenFile) Current() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	if now := time.Now(); now.Sub(f.checked) >= time.Second {
		f.checked = now
		f.reloadLocked()
	}
	return f.tokens
}

func (f *TokenFile) reloadLocked() {
	st, err := os.Stat(f.path)
	if err != nil {
		if !f.gone {
			f.gone = true
			f.reloads.WithLabelValues("error").Inc()
			f.log.Error("the auth token file is gone; still accepting the previous tokens", "file", f.path, "error", err)
		}
		return
	}
	f.gone = false
	if st.ModTime().Equal(f.modTime) || st.ModTime().Equal(f.failed) {
		return
	}
	tokens, err := ReadTokens(f.path)
	if err != nil {
		f.failed = st.ModTime()
		f.reloads.WithLabelValues("error").Inc()
		f.log.Error("reloading the auth token file failed; still accepting the previous tokens", "file", f.path, "error", err)
		return
	}
	f.tokens, f.modTime = tokens, st.ModTime()
	f.reloads.WithLabelValues("ok").Inc()
	f.log.Info("auth tokens reloaded", "file", f.path, "tokens", len(tokens))
}

// healthPrefix names the gRPC health service: probes (Kubernetes' gRPC
// probe, Envoy's health checks) send no credentials, and it tells nothing.
const healthPrefix = "/grpc.health.v1.Health/"

// StreamAuth refuses every stream but the health service's that does not
// carry one of the tokens as "authorization: Bearer <token>" gRPC
// metadata, before the handler reads anything from, or writes anything to,
// Redis.
type StreamAuth struct {
	tokens  func() []string
	refused prometheus.Counter
	log     *slog.Logger
}

// NewStreamAuth accepts the tokens tokens returns at each call, and
// registers the count of refusals.
func NewStreamAuth(tokens func() []string, reg prometheus.Registerer, log *slog.Logger) (*StreamAuth, error) {
	a := &StreamAuth{tokens: tokens, log: log, refused: prometheus.NewCounter(prometheus.CounterOpts{
		Name: "idemproxy_grpc_unauthenticated_total",
		Help: "gRPC calls refused for a missing or wrong bearer token.",
	})}
	return a, reg.Register(a.refused)
}

var errUnauthenticated = status.Error(codes.Unauthenticated, "idemproxy: a valid bearer token is required (authorization metadata)")

func (a *StreamAuth) check(ctx context.Context, method string) error {
	if strings.HasPrefix(method, healthPrefix) {
		return nil
	}
	// One key, not a copy of all the metadata (FromIncomingContext
	// copies every pair, on every stream).
	for _, v := range metadata.ValueFromIncomingContext(ctx, "authorization") {
		if tok, ok := Bearer(v); ok && TokenMatches(tok, a.tokens()) {
			return nil
		}
	}
	a.refused.Inc()
	// The peer, not the token: a refused token is still a secret.
	from := ""
	if p, ok := peer.FromContext(ctx); ok {
		from = p.Addr.String()
	}
	a.log.Warn("gRPC call refused: missing or wrong bearer token", "method", method, "peer", from)
	return errUnauthenticated
}

// Stream is the grpc.StreamServerInterceptor.
func (a *StreamAuth) Stream(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	if err := a.check(ss.Context(), info.FullMethod); err != nil {
		return err
	}
	return handler(srv, ss)
}

// Unary is the grpc.UnaryServerInterceptor.
func (a *StreamAuth) Unary(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	if err := a.check(ctx, info.FullMethod); err != nil {
		return nil, err
	}
	return handler(ctx, req)
}

// LoopbackOnly reports whether addr can only be reached from this host.
// An empty host (all interfaces) or a name other than localhost cannot be
// known to be.
func LoopbackOnly(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// ErrOpenPort is the refusal to serve an unauthenticated ext_proc port to
// the network: anyone who can reach it could store a forged response for a
// key, which the real client then gets as a replay, or block any key.
var ErrOpenPort = errors.New("the ext_proc port would accept streams from anyone who can reach it, and a forged stream can store a response for any key or block it. " +
	"Configure --auth-token-file (Envoy sends the token in grpc_service.initial_metadata: authorization: Bearer <token>), " +
	"or mutual TLS (--tls-cert, --tls-key, --tls-client-ca), or listen on a loopback address, " +
	"or say --allow-unauthenticated when something else (a mesh's mutual TLS and authorization policy) guards the port")
