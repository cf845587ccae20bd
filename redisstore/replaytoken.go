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
// Acquire issues the same tokens when its claim asks (offerReplay).
func (s *Store) IssueReplay(ctx context.Context, key string, ttl time.Duration) (string, error) {
	ms, err := checkArgs("issue replay", "-", "ttl", ttl)
	if err != nil {
		return "", err
	}
	rk := s.RedisKey(key)
	token, tokenKey, err := s.newReplayToken(rk)
	if err != nil {
		return "", fmt.Errorf("redisstore: issue replay: %w", err)
	}
	n, _, err := s.execInt(ctx, replayIssueScript, []string{rk, tokenKey}, ms)
	switch {
	case err != nil:
		return "", fmt.Errorf("redisstore: issue replay: %w", err)
	case n != 1:
		return "", ErrNoReplay
	}
	return token, nil
}

// newReplayToken draws a token for the record at redis key rk, and the
// key it lives under until taken (beside the record, in its slot). The
// random part is drawn here, not in a script, so scripts stay
// deterministic.
func (s *Store) newReplayToken(rk string) (token, tokenKey string, err error) {
	var random [16]byte
	if _, err := rand.Read(random[:]); err != nil {
		return "", "", err
	}
	r := hex.EncodeToString(random[:])
	return s.id(rk) + "." + r, rk + replaySuffix + r, nil
}

// replayOffer is a token that acquire.lua issues when it finds a record the
// claim asked one for (idem.Claim.Replay): its key, the last of the
// script's KEYS, and ARGV[10] and ARGV[11]. The zero value offers none.
type replayOffer struct {
	token, key string
	args       []any
}

// offerReplay is the replayOffer for a claim's ask on the record at redis
// key rk: none unless it asks for one.
func (s *Store) offerReplay(op, rk string, ask idem.ReplayAsk) (replayOffer, error) {
	if ask.TTL == 0 {
		return replayOffer{}, nil
	}
	ms, err := checkArgs(op, "-", "replay token ttl", ask.TTL)
	if err != nil {
		return replayOffer{}, err
	}
	token, key, err := s.newReplayToken(rk)
	if err != nil {
		return replayOffer{}, fmt.Errorf("redisstore: %s: replay token: %w", op, err)
	}
	all := ""
	if ask.All {
		all = "1"
	}
	return replayOffer{token: token, key: key, args: []any{ms, all}}, nil
}

// issued is the offered token when acquire.lua's reply says it issued it
// (a completed record with an 8th element "1"), else "".
func (o replayOffer) issued(reply []any) string {
	if len(reply) == 8 && reply[7] == "1" {
		return o.token
	}
	return ""
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
