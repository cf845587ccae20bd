package processor

import (
	"context"
	"encoding"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/idemproxy/idemproxy/internal/idem"
	"google.golang.org/grpc/metadata"
)

// Per-route policy: Envoy's ExtProcPerRoute.overrides.grpc_initial_metadata
// sends these as gRPC metadata on each stream of a route, so a route can
// change its settings without restarting idemproxy.
const (
	mdLockTTL     = "x-idemproxy-lock-ttl"     // duration, at least 1s
	mdHeartbeat   = "x-idemproxy-heartbeat"    // duration, below the lock TTL
	mdRetention   = "x-idemproxy-retention"    // duration, at least the lock TTL
	mdKeyRequired = "x-idemproxy-key-required" // true: a request without a key gets 400
	mdInProgress  = "x-idemproxy-in-progress"  // conflict (409) or wait (for the replay)
	mdMaxWait     = "x-idemproxy-max-wait"     // duration a waiting duplicate is held, at most
	mdMode        = "x-idemproxy-mode"         // enforce, or shadow (decide, count, refuse nothing)
	mdErrorFormat = "x-idemproxy-error-format" // problem, stripe or template: the shape of idemproxy's own errors
	// mdRetries declares the route's Envoy retry policy: never-sent (it
	// only re-sends requests that never reached the upstream, such as
	// retry_on reset-before-request) or may-run (the default: an earlier
	// attempt may have run). See attempts.go.
	mdRetries = "x-idemproxy-retries"
)

// MaxWaitLimit bounds --max-wait: Envoy holds a waiting message only up to
// its filter's max_message_timeout (30 s in the shipped configs), and
// ignores a longer override altogether (seen with Envoy 1.40).
const MaxWaitLimit = time.Minute

// policy is the part of the configuration a route may override.
type policy struct {
	lockTTL     time.Duration
	heartbeat   time.Duration
	retention   time.Duration
	keyRequired bool
	onUnknown   OnUnknown     // not per route: --on-unknown
	inProgress  InProgress    // InProgressWait: a duplicate waits for the replay
	maxWait     time.Duration // how long it may wait
	mode        Mode          // ModeShadow: refuse nothing, count what would be
	shape       shape         // how refusals are rendered (errorshape.go)
	// retriesNeverSent: the route declares that Envoy retries only what
	// never reached the upstream (x-idemproxy-retries: never-sent).
	retriesNeverSent bool
}

// lease is how a request on this route holds its key: for the lock TTL,
// and, unless --on-unknown=rerun-after-ttl, in a record kept for the
// retention after its owner's last renewal, so a crash leaves an unknown
// outcome behind.
func (p policy) lease() idem.Lease {
	return idem.Lease{TTL: p.lockTTL, Hold: p.retention, Takeover: p.onUnknown.rerun()}
}

// shadow says whether this route only counts what it would refuse.
func (p policy) shadow() bool { return p.mode == ModeShadow }

// noWait is p for a duplicate that has waited: it does not wait again.
func (p policy) noWait() policy {
	p.inProgress = InProgressConflict
	return p
}

// waits says whether a duplicate of a key in progress waits for its
// answer: never in shadow mode, which must not hold a request either.
func (p policy) waits() bool { return p.inProgress == InProgressWait && !p.shadow() }

// mdReader reads single keys of a stream's incoming gRPC metadata.
type mdReader struct{ ctx context.Context }

func (r mdReader) Get(key string) []string { return metadata.ValueFromIncomingContext(r.ctx, key) }

// policyFor starts from the server's configuration and applies the stream's
// metadata. An invalid value is an operator error: the caller refuses the
// request rather than guess.
func (s *Server) policyFor(ctx context.Context) (policy, error) {
	p := policy{lockTTL: s.cfg.LockTTL, heartbeat: s.cfg.Heartbeat, retention: s.cfg.Retention, onUnknown: s.cfg.OnUnknown,
		inProgress: s.cfg.InProgress, maxWait: s.cfg.MaxWait, mode: s.cfg.Mode,
		shape: shape{format: s.cfg.ErrorFormat, template: s.cfg.ErrorTemplate}}
	// Each key is looked up alone: FromIncomingContext would copy all of
	// the stream's metadata, on every stream, to read a few keys that
	// most routes do not even set.
	md := mdReader{ctx}
	var errs []error
	duration := func(name string, dst *time.Duration) bool {
		v := md.Get(name)
		if len(v) == 0 {
			return false
		}
		d, err := time.ParseDuration(v[len(v)-1])
		if err != nil || d <= 0 {
			errs = append(errs, fmt.Errorf("%s=%q is not a positive duration", name, v[len(v)-1]))
			return false
		}
		*dst = d
		return true
	}
	ttlSet := duration(mdLockTTL, &p.lockTTL)
	if !duration(mdHeartbeat, &p.heartbeat) && ttlSet && p.heartbeat >= p.lockTTL {
		// A route that shortens the TTL below the global heartbeat still
		// needs renewals in time: three per TTL.
		p.heartbeat = p.lockTTL / 3
	}
	duration(mdRetention, &p.retention)
	if v := md.Get(mdKeyRequired); len(v) > 0 {
		b, err := strconv.ParseBool(v[len(v)-1])
		if err != nil {
			errs = append(errs, fmt.Errorf("%s=%q is not a boolean", mdKeyRequired, v[len(v)-1]))
		}
		p.keyRequired = b
	}
	choice := func(name string, dst encoding.TextUnmarshaler) {
		if v := md.Get(name); len(v) > 0 {
			if err := dst.UnmarshalText([]byte(v[len(v)-1])); err != nil {
				errs = append(errs, fmt.Errorf("%s=%w", name, err))
			}
		}
	}
	choice(mdInProgress, &p.inProgress)
	choice(mdMode, &p.mode)
	p.shape, errs = s.routeShape(md, p.shape, errs)
	if v := md.Get(mdRetries); len(v) > 0 {
		switch v[len(v)-1] {
		case retriesNeverSent:
			p.retriesNeverSent = true
		case retriesMayRun:
			p.retriesNeverSent = false
		default:
			errs = append(errs, fmt.Errorf("%s=%q is neither %s nor %s", mdRetries, v[len(v)-1], retriesNeverSent, retriesMayRun))
		}
	}
	if duration(mdMaxWait, &p.maxWait) && p.maxWait > MaxWaitLimit {
		errs = append(errs, fmt.Errorf("%s %v must be at most %v", mdMaxWait, p.maxWait, MaxWaitLimit))
	}
	if len(errs) == 0 {
		errs = append(errs, timings{p.lockTTL, p.heartbeat, p.retention}.check(mdLockTTL, mdHeartbeat, mdRetention))
	}
	return p, errors.Join(errs...)
}

// routeShape applies the route's x-idemproxy-error-format. A route that
// asks for the template when none was loaded is an operator error; its
// misconfigured answer keeps the global shape.
func (s *Server) routeShape(md mdReader, sh shape, errs []error) (shape, []error) {
	v := md.Get(mdErrorFormat)
	if len(v) == 0 {
		return sh, errs
	}
	var f ErrorFormat
	if err := f.UnmarshalText([]byte(v[len(v)-1])); err != nil {
		return sh, append(errs, fmt.Errorf("%s=%w", mdErrorFormat, err))
	}
	if f == ErrorFormatTemplate && sh.template == nil {
		return sh, append(errs, fmt.Errorf("%s=template, but idemproxy was started without --error-template-file", mdErrorFormat))
	}
	sh.format = f
	return sh, errs
}
