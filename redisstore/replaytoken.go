package redisstore

// Replay tokens: a stored response served by idemproxy's replay endpoint
// as an upstream response (a response with trailers, which an immediate
// response cannot carry). The processor issues a token on a replay
// decision; Envoy re-routes the request, with the token, to the endpoint of
// any replica, which takes the token (once) and writes the record. Tokens
// live in Redis, beside their record, so every replica can take them.

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"strings"
	"time"

	"github.com/idemproxy/idemproxy/internal/idem"
)

// ErrNoReplay reports a replay token that replays nothing: never issued,
// used already, expired, malformed, or its record is gone; or, from
// IssueReplay, a key without a completed record with its body stored.
// It is idem.ErrNoReplay, for the replay endpoint.
var ErrNoReplay = idem.ErrNoReplay

// replaySuffix follows the record key in a token's key, then the token's
// random part.
const replaySuffix = ":replay:"

// IssueReplay issues a single-use token that replays key's completed
// record within ttl. The token is "<record id>.<128 random bits>", both
// hex: the id finds the record's slot, the random part cannot be guessed.
func (s *Store) IssueReplay(ctx context.Context, key string, ttl time.Duration) (string, error) {
	ms, err := checkArgs("issue replay", "-", "ttl", ttl)
	if err != nil {
		return "", err
	}
	var random [16]byte
	if _, err := rand.Read(random[:]); err != nil {
		return "", fmt.Errorf("redisstore: issue replay: %w", err)
	}
	rk := s.RedisKey(key)
	token := s.id(rk) + "." + hex.EncodeToString(random[:])
	n, _, err := s.execInt(ctx, replayIssueScript, []string{rk, rk + replaySuffix + hex.EncodeToString(random[:])}, ms)
	switch {
	case err != nil:
		return "", fmt.Errorf("redisstore: issue replay: %w", err)
	case n != 1:
		return "", ErrNoReplay
	}
	return token, nil
}

// TakeReplay uses token, once, and returns the record it was issued for.
// ErrNoReplay when it replays nothing.
func (s *Store) TakeReplay(ctx context.Context, token string) (*idem.Record, error) {
	id, random, ok := strings.Cut(token, ".")
	rk, err := s.idKey(id)
	if !ok || err != nil || !isHex(random, 32) {
		return nil, ErrNoReplay
	}
	reply, _, err := s.execSlice(ctx, replayTakeScript, []string{rk, rk + replaySuffix + random})
	if err != nil {
		return nil, fmt.Errorf("redisstore: take replay: %w", err)
	}
	if len(reply) == 0 || reply[0] != "completed" {
		return nil, ErrNoReplay
	}
	if len(reply) != 7 {
		return nil, fmt.Errorf("%w: take replay: %d elements", ErrCorruptRecord, len(reply))
	}
	return parseRecord(reply[1:], s.opener(rk))
}

// isHex reports whether s is n lowercase hex digits.
func isHex(s string, n int) bool {
	if len(s) != n {
		return false
	}
	for _, c := range s {
		if (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return true
}
