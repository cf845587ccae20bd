package redisstore

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/idemproxy/idemproxy/internal/idem"
)

// KeyInfo is an operator's view of one key, without its body or token.
type KeyInfo struct {
	// ID is the record's id, the hash inside its Redis key's braces: what
	// List shows and what GetByID and DeleteByID take, since the client's
	// key is never stored.
	ID     string `json:"id,omitempty"`
	Exists bool   `json:"exists"`
	// State is in_progress, completed or outcome_unknown. An in-progress
	// record whose lease ran out without word from its owner (a crash) is
	// outcome_unknown, with Expired set.
	State   string `json:"state,omitempty"`
	Expired bool   `json:"lease_expired,omitempty"`
	// Scope is the authority and identity hash the record belongs to.
	Scope          string        `json:"scope,omitempty"`
	Age            time.Duration `json:"age_ns,omitempty"`
	LeaseLeft      time.Duration `json:"lease_left_ns,omitempty"`
	Status         int           `json:"status,omitempty"`
	BodyStored     bool          `json:"body_stored,omitempty"`
	BodyIncomplete bool          `json:"body_incomplete,omitempty"`
	BodyTrailers   bool          `json:"body_trailers,omitempty"`
	// BodyNotStored: the response was seen in full, but the store did not
	// take it in time; only its status was written (bs "s").
	BodyNotStored bool          `json:"body_not_stored,omitempty"`
	BodyBytes     int64         `json:"body_bytes,omitempty"`
	TTL           time.Duration `json:"ttl_ns,omitempty"`
	Fence         int64         `json:"fence,omitempty"`      // fence of the grant that made the record
	LastFence     int64         `json:"last_fence,omitempty"` // the key's fence counter
	// UpstreamAttempts is Envoy's attempt count for a completed response
	// that Envoy retried upstream: the request may have run that many
	// times (docs/envoy-and-mesh.md, Retries). Absent: one attempt.
	UpstreamAttempts int `json:"upstream_attempts,omitempty"`
}

// Inspect reports the state of key in one round trip.
func (s *Store) Inspect(ctx context.Context, key string) (KeyInfo, error) {
	return s.inspect(ctx, s.RedisKey(key))
}

// InspectID is Inspect by record id (KeyInfo.ID).
func (s *Store) InspectID(ctx context.Context, id string) (KeyInfo, error) {
	rk, err := s.idKey(id)
	if err != nil {
		return KeyInfo{}, err
	}
	return s.inspect(ctx, rk)
}

func (s *Store) inspect(ctx context.Context, rk string) (KeyInfo, error) {
	v, _, err := s.execSlice(ctx, inspectScript, []string{rk, rk + fenceSuffix})
	if err != nil && !errors.Is(err, redis.Nil) {
		return KeyInfo{}, fmt.Errorf("redisstore: inspect: %w", err)
	}
	info, err := parseInspect(v)
	if err == nil && info.Exists {
		info.ID = s.id(rk)
	}
	return info, err
}

// Delete removes key's record whatever its state, for an operator clearing
// an "outcome unknown" key. The fence counter stays, so fences keep growing.
func (s *Store) Delete(ctx context.Context, key string) (bool, error) {
	return s.del(ctx, s.RedisKey(key))
}

// DeleteID is Delete by record id (KeyInfo.ID).
func (s *Store) DeleteID(ctx context.Context, id string) (bool, error) {
	rk, err := s.idKey(id)
	if err != nil {
		return false, err
	}
	return s.del(ctx, rk)
}

func (s *Store) del(ctx context.Context, rk string) (bool, error) {
	n, err := s.client.Del(ctx, rk).Result()
	if err != nil {
		return false, fmt.Errorf("redisstore: delete: %w", err)
	}
	return n == 1, nil
}

// ErrBadID reports a record id that RedisKey could not have made.
var ErrBadID = errors.New("redisstore: a record id is 32 lower-case hex digits")

// idKey turns a record id back into its Redis key.
func (s *Store) idKey(id string) (string, error) {
	if !isHex(id, 32) {
		return "", ErrBadID
	}
	return s.prefix + "{" + id + "}", nil
}

// id is the record id of Redis key rk.
func (s *Store) id(rk string) string {
	return strings.TrimSuffix(strings.TrimPrefix(rk, s.prefix+"{"), "}")
}

// parseInspect decodes inspect.lua's reply; Redis nil arrives as a nil element.
func parseInspect(v []any) (KeyInfo, error) {
	if len(v) != 13 {
		return KeyInfo{}, fmt.Errorf("%w: inspect: %d elements", ErrCorruptRecord, len(v))
	}
	str := func(i int) string { s, _ := v[i].(string); return s }
	num := func(i int) int64 {
		switch x := v[i].(type) {
		case int64:
			return x
		case string:
			n, _ := strconv.ParseInt(x, 10, 64)
			return n
		}
		return 0
	}
	info := KeyInfo{LastFence: num(6)}
	f := recordFields{st: str(0), status: str(1), bs: str(2), fence: str(5), lx: str(7), ct: str(8), sc: str(9), ctk: str(12)}
	if f.st == "" {
		return info, nil
	}
	if err := f.fill(&info, num(10)); err != nil {
		return KeyInfo{}, err
	}
	info.BodyBytes = num(3)
	info.UpstreamAttempts = int(num(11))
	info.TTL = time.Duration(max(num(4), 0)) * time.Millisecond
	return info, nil
}

// recordFields are a record's operator-visible hash fields, as read, and
// ctk, where a completed record keeps the fence of its grant.
type recordFields struct{ st, status, bs, fence, lx, ct, sc, ctk string }

// grantFence is the fence of the grant that made the record: field fence
// of a record in progress or held (and of completed records of earlier
// versions), else what follows the token digest in ctk (complete.lua).
func (f recordFields) grantFence() int64 {
	fence := f.fence
	if _, after, ok := strings.Cut(f.ctk, ":"); ok && fence == "" {
		fence = after
	}
	n, _ := strconv.ParseInt(fence, 10, 64)
	return n
}

// fill sets info's state and times from the fields; now is Redis's clock
// in milliseconds.
func (f recordFields) fill(info *KeyInfo, now int64) error {
	info.Exists = true
	switch f.st {
	case "p":
		info.State = idem.StateInProgress.String()
		if lx, err := strconv.ParseInt(f.lx, 10, 64); err == nil {
			if lx <= now {
				info.State, info.Expired = idem.StateUnknown.String(), true
			} else {
				info.LeaseLeft = time.Duration(lx-now) * time.Millisecond
			}
		}
	case "c":
		info.State = idem.StateCompleted.String()
	case "u":
		info.State = idem.StateUnknown.String()
	default:
		return fmt.Errorf("%w: state %q", ErrCorruptRecord, f.st)
	}
	if ct, err := strconv.ParseInt(f.ct, 10, 64); err == nil && ct <= now {
		info.Age = time.Duration(now-ct) * time.Millisecond
	}
	info.Scope = f.sc
	info.Status, _ = strconv.Atoi(f.status)
	info.BodyStored = f.bs == "1" || f.bs == "T"
	info.BodyIncomplete = f.bs == "i"
	info.BodyTrailers = f.bs == "t"
	info.BodyNotStored = f.bs == "s"
	info.Fence = f.grantFence()
	return nil
}
