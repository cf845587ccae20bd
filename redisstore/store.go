// Package redisstore implements processor.Store on Redis.
//
// Each idempotency record is one Redis hash, and every method is one Lua
// script, so each step is atomic and costs one round trip. The owner token is
// compared inside the scripts: only the request that acquired a key can renew,
// complete or release it, and a completed record is never overwritten.
//
// Hash fields:
//
//	st      "p" in progress, "c" completed
//	tok     owner token (in progress only)
//	fp      request fingerprint
//	status  HTTP status (completed only)
//	hdr     encoded response headers (completed only)
//	body    response body (completed only; empty when not stored)
//	bs      "1" when the body is stored, "0" when it was too large
package redisstore

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/idemproxy/idemproxy/processor"
)

var _ processor.Store = (*Store)(nil)

var (
	// ErrInvalidArgument reports a call refused before Redis is contacted:
	// a TTL that is not positive, or an empty owner token.
	ErrInvalidArgument = errors.New("redisstore: invalid argument")
	// ErrCorruptRecord reports a record or script reply that cannot be
	// decoded, for example one written by an incompatible version.
	ErrCorruptRecord = errors.New("redisstore: corrupt record")
)

// DefaultPrefix is the key prefix used when Options.Prefix is empty.
const DefaultPrefix = "idemproxy:"

// Options configures a Store.
type Options struct {
	// Prefix starts every Redis key the store uses, so that several
	// deployments can share one Redis. Default DefaultPrefix.
	Prefix string
}

// Store is a processor.Store backed by Redis. It is safe for concurrent use.
type Store struct {
	client redis.Scripter
	prefix string
}

// New returns a Store using client. Scripter is the narrowest interface the
// store needs, so a *redis.Client, *redis.ClusterClient or *redis.Ring all
// work; the store does not close the client.
func New(client redis.Scripter, opts Options) *Store {
	if opts.Prefix == "" {
		opts.Prefix = DefaultPrefix
	}
	return &Store{client: client, prefix: opts.Prefix}
}

// NewToken returns a random owner token: 16 bytes from crypto/rand, in hex.
// Tokens must be unpredictable and unique per request, because holding one
// is what allows renewing, completing or releasing a record.
func NewToken() (string, error) {
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", fmt.Errorf("redisstore: new token: %w", err)
	}
	return hex.EncodeToString(b[:]), nil
}

// RedisKey maps the processor's opaque key to the Redis key of its record:
// the prefix, then the first 32 hex digits (128 bits) of the SHA-256 of key
// inside braces.
//
// Hashing bounds the length of Redis keys whatever the client sent, and keeps
// client-chosen idempotency keys, which may be secrets, out of key names
// (they show up in MONITOR, SCAN and slow logs). The braces are a Redis
// Cluster hash tag: any sibling key added later for the same record
// (prefix + "{…}" + suffix) lands in the same slot, so one script can still
// touch all of them.
func (s *Store) RedisKey(key string) string {
	sum := sha256.Sum256([]byte(key))
	return s.prefix + "{" + hex.EncodeToString(sum[:16]) + "}"
}

// Acquire implements processor.Store.
func (s *Store) Acquire(ctx context.Context, key, token string, fingerprint []byte, lockTTL time.Duration) (processor.Acquisition, error) {
	const op = "acquire"
	ms, err := checkArgs(op, token, "lock TTL", lockTTL)
	if err != nil {
		return processor.Acquisition{}, err
	}
	reply, err := acquireScript.Run(ctx, s.client, []string{s.RedisKey(key)}, token, fingerprint, ms).Slice()
	if err != nil {
		return processor.Acquisition{}, fmt.Errorf("redisstore: %s: %w", op, err)
	}
	return parseAcquire(reply)
}

// Renew implements processor.Store.
func (s *Store) Renew(ctx context.Context, key, token string, lockTTL time.Duration) error {
	const op = "renew"
	ms, err := checkArgs(op, token, "lock TTL", lockTTL)
	if err != nil {
		return err
	}
	n, err := renewScript.Run(ctx, s.client, []string{s.RedisKey(key)}, token, ms).Int64()
	return owned(op, n, err)
}

// Complete implements processor.Store. When rec.BodyStored is false the body
// is not written, whatever rec.Body holds.
func (s *Store) Complete(ctx context.Context, key, token string, rec processor.Record, retention time.Duration) error {
	const op = "complete"
	ms, err := checkArgs(op, token, "retention", retention)
	if err != nil {
		return err
	}
	body, bs := rec.Body, "1"
	if !rec.BodyStored {
		body, bs = nil, "0"
	}
	n, err := completeScript.Run(ctx, s.client, []string{s.RedisKey(key)},
		token, ms, rec.Fingerprint, rec.Status, encodeHeaders(rec.Headers), body, bs).Int64()
	return owned(op, n, err)
}

// Release implements processor.Store.
func (s *Store) Release(ctx context.Context, key, token string) error {
	const op = "release"
	if token == "" {
		return fmt.Errorf("%w: %s: empty token", ErrInvalidArgument, op)
	}
	n, err := releaseScript.Run(ctx, s.client, []string{s.RedisKey(key)}, token).Int64()
	return owned(op, n, err)
}

// checkArgs validates a call and converts its TTL to whole milliseconds,
// rounded up and at least 1: PEXPIRE with 0 would delete the key at once.
// An empty token is refused because it would let any empty token match.
func checkArgs(op, token, what string, ttl time.Duration) (int64, error) {
	if token == "" {
		return 0, fmt.Errorf("%w: %s: empty token", ErrInvalidArgument, op)
	}
	if ttl <= 0 {
		return 0, fmt.Errorf("%w: %s: %s %v is not positive", ErrInvalidArgument, op, what, ttl)
	}
	return millis(ttl), nil
}

// millis converts a positive duration to milliseconds, rounding up so a
// lock or retention is never shorter than asked.
func millis(d time.Duration) int64 {
	ms := int64(d / time.Millisecond)
	if d%time.Millisecond != 0 {
		ms++
	}
	return ms
}

// owned maps the 1/0 reply of the owner-checked scripts to an error.
func owned(op string, n int64, err error) error {
	switch {
	case err != nil:
		return fmt.Errorf("redisstore: %s: %w", op, err)
	case n == 0:
		return fmt.Errorf("redisstore: %s: %w", op, processor.ErrLeaseLost)
	case n == 1:
		return nil
	default:
		return fmt.Errorf("%w: %s: unexpected reply %d", ErrCorruptRecord, op, n)
	}
}
