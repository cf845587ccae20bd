package redisstore

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"
)

// ListOptions select a page of records.
type ListOptions struct {
	// States keeps records in these states (in_progress, outcome_unknown,
	// completed); empty keeps every state.
	States []string
	// Cursor continues a listing where the previous page ended; "" or "0"
	// starts it.
	Cursor string
	// Limit is how many records a page aims at (default 100, at most
	// 1000): scanning stops once it is reached. A page keeps every match
	// of its last SCAN batch, so it may hold up to about twice as many;
	// cutting a batch would skip records or never move on.
	Limit int
}

// ListPage is one page of a listing.
type ListPage struct {
	Keys []KeyInfo `json:"keys"`
	// Cursor continues the listing; "0" when it is complete.
	Cursor string `json:"cursor"`
	// Scanned is how many Redis keys this page looked at.
	Scanned int `json:"scanned"`
}

// Limits of one List call: it never blocks Redis or the caller for long,
// however many records there are (SCAN, never KEYS).
const (
	defaultListLimit = 100
	maxListLimit     = 1000
	maxScansPerPage  = 20 // a page stops after this many SCAN calls
)

// ErrBadCursor reports a cursor that List did not make.
var ErrBadCursor = errors.New("redisstore: invalid list cursor")

// List pages through the records with SCAN: at most opts.Limit records, and
// at most maxScansPerPage SCAN calls, each followed by one pipeline reading
// the records found. A record that changes during the listing may be shown
// in its old or new state, or twice (SCAN's own guarantee).
func (s *Store) List(ctx context.Context, opts ListOptions) (ListPage, error) {
	limit := opts.Limit
	if limit <= 0 {
		limit = defaultListLimit
	}
	limit = min(limit, maxListLimit)
	var cursor uint64
	if opts.Cursor != "" {
		c, err := strconv.ParseUint(opts.Cursor, 10, 64)
		if err != nil {
			return ListPage{}, ErrBadCursor
		}
		cursor = c
	}
	want := map[string]bool{}
	for _, st := range opts.States {
		want[st] = true
	}
	page := ListPage{Keys: []KeyInfo{}}
	for scans := 0; scans < maxScansPerPage && len(page.Keys) < limit; scans++ {
		// The pattern matches records (prefix{id}), not their fence
		// counters (prefix{id}:fence), which are strings anyway.
		keys, next, err := s.client.ScanType(ctx, cursor, s.prefix+"{*}", int64(max(limit, 10)), "hash").Result()
		if err != nil {
			return ListPage{}, fmt.Errorf("redisstore: list: %w", err)
		}
		page.Scanned += len(keys)
		infos, err := s.readInfos(ctx, keys)
		if err != nil {
			return ListPage{}, err
		}
		for _, info := range infos {
			if info.Exists && (len(want) == 0 || want[info.State]) {
				page.Keys = append(page.Keys, info)
			}
		}
		cursor = next
		if cursor == 0 {
			break
		}
	}
	page.Cursor = strconv.FormatUint(cursor, 10)
	return page, nil
}

// readInfos reads the operator fields of keys in one pipeline.
func (s *Store) readInfos(ctx context.Context, keys []string) ([]KeyInfo, error) {
	if len(keys) == 0 {
		return nil, nil
	}
	pipe := s.client.Pipeline()
	now := pipe.Time(ctx)
	fields := make([]interface{ Val() []any }, len(keys))
	ttls := make([]interface{ Val() time.Duration }, len(keys))
	for i, k := range keys {
		fields[i] = pipe.HMGet(ctx, k, "st", "status", "bs", "fence", "lx", "ct", "sc")
		ttls[i] = pipe.PTTL(ctx, k)
	}
	if _, err := pipe.Exec(ctx); err != nil {
		return nil, fmt.Errorf("redisstore: list: %w", err)
	}
	nowMS := now.Val().UnixMilli()
	out := make([]KeyInfo, 0, len(keys))
	for i, k := range keys {
		v := fields[i].Val()
		str := func(j int) string { s, _ := v[j].(string); return s }
		f := recordFields{st: str(0), status: str(1), bs: str(2), fence: str(3), lx: str(4), ct: str(5), sc: str(6)}
		if f.st == "" {
			continue // deleted since SCAN saw it
		}
		info := KeyInfo{ID: s.id(k), TTL: max(ttls[i].Val(), 0)}
		if err := f.fill(&info, nowMS); err != nil {
			return nil, err
		}
		out = append(out, info)
	}
	return out, nil
}
