package redisstore

// The processor.Store methods: each checks its arguments, runs one script
// through exec (exec.go) and maps its reply (reply.go, args.go).

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/idemproxy/idemproxy/internal/idem"
)

// Acquire implements processor.Store.
func (s *Store) Acquire(ctx context.Context, key string, c idem.Claim) (idem.Acquisition, error) {
	const op = "acquire"
	lease, keyTTL, err := checkLease(op, c.Token, c.Lease)
	if err != nil {
		return idem.Acquisition{}, err
	}
	takeover, wait := "0", ""
	if c.Lease.Takeover {
		takeover = "1"
	}
	if c.Wait {
		wait = "w"
	}
	rk := s.RedisKey(key)
	// The fence counter outlives the record it guards however long the
	// route keeps it (x-idemproxy-retention can exceed --retention, from
	// which Options.FenceTTL derives): a counter that expired first would
	// start again at 1, below what a backend remembers.
	keys := []string{rk, rk + fenceSuffix}
	if s.markers != nil {
		keys = append(keys, s.markers.forRecord(rk))
	}
	offer, err := s.offerReplay(op, rk, c.Replay)
	if err != nil {
		return idem.Acquisition{}, err
	}
	args := []any{c.Token, c.Fingerprint, lease, keyTTL, max(s.fenceTTL, 2*keyTTL), takeover, c.Scope, wait, s.deadline(ctx, rk)}
	if offer.key != "" {
		keys, args = append(keys, offer.key), append(args, offer.args...)
	}
	reply, res, err := s.execSlice(ctx, acquireScript, keys, args...)
	if err != nil {
		return idem.Acquisition{}, notTaken(op, err)
	}
	acq, err := parseAcquire(reply, s.opener(rk))
	if errors.Is(err, ErrResetMarker) && s.topo != nil {
		// The health check decides whether this is a reset (held until
		// acknowledged) or a slot whose marker was never written.
		s.topo.noteMissingMarker(keys[2])
	}
	if err != nil || acq.State != idem.StateAcquired {
		// Only a new lock needs replicas: an existing record was
		// written (and waited for) by the request that made it.
		if err == nil && acq.State == idem.StateCompleted {
			acq.ReplayToken = offer.issued(reply)
		}
		return acq, err
	}
	if err := s.unreplicated(res); err != nil {
		return idem.Acquisition{}, fmt.Errorf("redisstore: %s: %w", op, err)
	}
	return acq, nil
}

// deadline is ARGV[9] of acquire.lua: ctx's deadline on the clock of the
// primary of rk, or "" when ctx has none or no clock was read.
func (s *Store) deadline(ctx context.Context, rk string) string {
	d, ok := ctx.Deadline()
	if !ok || s.topo == nil {
		return ""
	}
	addr := ""
	if s.cluster != nil {
		node, err := s.cluster.MasterForKey(ctx, rk)
		if err != nil {
			return ""
		}
		addr = node.Options().Addr
	}
	ms, ok := s.topo.clocks.deadline(addr, d)
	if !ok {
		return ""
	}
	return strconv.FormatInt(ms, 10)
}

// Peek implements processor.Store with peek.lua, which answers as
// acquire.lua does but takes nothing.
func (s *Store) Peek(ctx context.Context, key string) (idem.Acquisition, error) {
	rk := s.RedisKey(key)
	reply, _, err := s.execSlice(ctx, peekScript, []string{rk})
	if err != nil {
		return idem.Acquisition{}, fmt.Errorf("redisstore: peek: %w", err)
	}
	return parseAcquire(reply, s.opener(rk))
}

// opener opens the sealed fields of the record at redis key rk.
func (s *Store) opener(rk string) func(enc, field string, blob []byte) ([]byte, error) {
	return func(enc, field string, blob []byte) ([]byte, error) {
		if enc == "" {
			return blob, nil
		}
		return s.keyring.open(enc, rk+"\x00"+field, blob)
	}
}

// Renew implements processor.Store.
func (s *Store) Renew(ctx context.Context, key, token string, l idem.Lease) error {
	const op = "renew"
	lease, keyTTL, err := checkLease(op, token, l)
	if err != nil {
		return err
	}
	n, _, err := s.execInt(ctx, renewScript, []string{s.RedisKey(key)}, token, lease, keyTTL)
	return owned(op, n, err)
}

// Complete implements processor.Store. When rec.BodyStored is false the body
// is not written, whatever rec.Body holds; rec.Incomplete, rec.Trailers and rec.StoreFailed are kept;
// with rec.BodyStored, rec.Trailers stores rec.TrailerHeaders too (body flag "T").
func (s *Store) Complete(ctx context.Context, key, token string, rec idem.Record, retention time.Duration) error {
	const op = "complete"
	ms, err := checkArgs(op, token, "retention", retention)
	if err != nil {
		return err
	}
	body, bs := rec.Body, "1"
	trailers := false
	switch {
	case rec.BodyStored && rec.Trailers:
		// Read by older versions as a corrupt record (their parseRecord
		// knows no "T", nor headersV2): fail closed.
		trailers, bs = true, "T"
	case rec.BodyStored:
	case rec.Incomplete:
		body, bs = nil, "i"
	case rec.Trailers:
		body, bs = nil, "t"
	case rec.StoreFailed:
		// Read by older versions as a corrupt record (their parseRecord
		// knows no "s"): their duplicates get 503, never a run.
		body, bs = nil, "s"
	default:
		body, bs = nil, "0"
	}
	rk := s.RedisKey(key)
	hdr, enc := encodeHeaders(rec.Headers), ""
	if trailers {
		hdr = encodeWithTrailers(rec.Headers, rec.TrailerHeaders)
	}
	if s.keyring != nil {
		enc = s.keyring.current
		if hdr, err = s.keyring.seal(rk+"\x00hdr", hdr); err != nil {
			return err
		}
		if body, err = s.keyring.seal(rk+"\x00body", body); err != nil {
			return err
		}
	}
	ua := ""
	if rec.UpstreamAttempts > 1 {
		ua = strconv.Itoa(rec.UpstreamAttempts)
	}
	n, res, err := s.execInt(ctx, completeScript, []string{rk},
		token, ms, rec.Fingerprint, rec.Status, hdr, body, bs, enc, rk+settledSuffix, ua)
	if err := owned(op, completedBefore(n), err); err != nil {
		return err
	}
	if err := s.unreplicated(res); err != nil {
		return fmt.Errorf("redisstore: %s: %w", op, err)
	}
	return nil
}

// completedBefore maps complete.lua's 2 (this token completed the record
// before) to 1: for the caller, the record holds its response.
func completedBefore(n int64) int64 {
	if n == 2 {
		return 1
	}
	return n
}

// Abandon implements processor.Store.
func (s *Store) Abandon(ctx context.Context, key, token string, hold time.Duration) error {
	const op = "abandon"
	ms, err := checkArgs(op, token, "hold", hold)
	if err != nil {
		return err
	}
	rk := s.RedisKey(key)
	n, _, err := s.execInt(ctx, abandonScript, []string{rk}, token, ms, rk+settledSuffix)
	return owned(op, n, err)
}

// Release implements processor.Store. With AllReplicas it is durable
// too: a lock a failover could bring back (a replica that had it, not yet
// told of its deletion, promoted) would hold its key for the retention
// with nobody to settle it. So it returns idem.ErrUnreplicated until every
// promotable replica is past the deletion, also when this call found the
// lock already gone (an earlier try deleted it): the caller tries again.
func (s *Store) Release(ctx context.Context, key, token string) error {
	const op = "release"
	if token == "" {
		return fmt.Errorf("%w: %s: empty token", ErrInvalidArgument, op)
	}
	rk := s.RedisKey(key)
	n, res, err := s.execInt(ctx, releaseScript, []string{rk}, token, rk+settledSuffix)
	if err != nil {
		return fmt.Errorf("redisstore: %s: %w", op, err)
	}
	if err := s.unreplicated(res); err != nil {
		return fmt.Errorf("redisstore: %s: %w", op, err)
	}
	return owned(op, n, nil)
}
