package redisstore

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"

	"github.com/redis/go-redis/v9"
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
// in its old or new state, or twice (SCAN's own guarantee). On a cluster
// every primary is scanned in turn, by address, and the cursor says which
// one is next; a failover during a listing may skip or repeat the records
// of the primary it replaced.
func (s *Store) List(ctx context.Context, opts ListOptions) (ListPage, error) {
	limit := opts.Limit
	if limit <= 0 {
		limit = defaultListLimit
	}
	limit = min(limit, maxListLimit)
	nodes, err := s.listNodes(ctx)
	if err != nil {
		return ListPage{}, fmt.Errorf("redisstore: list: %w", err)
	}
	pos, cursor, err := parseCursor(opts.Cursor, nodes)
	if err != nil {
		return ListPage{}, err
	}
	want := map[string]bool{}
	for _, st := range opts.States {
		want[st] = true
	}
	page := ListPage{Keys: []KeyInfo{}}
	for scans := 0; scans < maxScansPerPage && len(page.Keys) < limit && pos < len(nodes); scans++ {
		n := nodes[pos]
		// The pattern matches records (prefix{id}), not their fence
		// counters (prefix{id}:fence), which are strings anyway.
		keys, next, err := n.c.ScanType(ctx, cursor, s.prefix+"{*}", int64(max(limit, 10)), "hash").Result()
		if err != nil {
			return ListPage{}, fmt.Errorf("redisstore: list: %w", err)
		}
		page.Scanned += len(keys)
		infos, err := s.readInfos(ctx, n.c, keys)
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
			pos++
		}
	}
	page.Cursor = formatCursor(nodes, pos, cursor)
	return page, nil
}

// scanNode is one server a listing scans: the store's client, or a plain
// client of one cluster primary (a cluster client's SCAN would go to one
// node it picks).
type scanNode interface {
	ScanType(ctx context.Context, cursor uint64, match string, count int64, keyType string) *redis.ScanCmd
	Pipeline() redis.Pipeliner
}

type listNode struct {
	addr string // "" outside a cluster
	c    scanNode
}

// listNodes returns what to scan, in an order that stays put between
// pages: the client, or every cluster primary sorted by address.
func (s *Store) listNodes(ctx context.Context) ([]listNode, error) {
	if s.cluster == nil {
		return []listNode{{c: s.client}}, nil
	}
	var (
		mu    sync.Mutex
		nodes []listNode
	)
	err := s.cluster.ForEachMaster(ctx, func(_ context.Context, c *redis.Client) error {
		mu.Lock()
		nodes = append(nodes, listNode{addr: c.Options().Addr, c: c})
		mu.Unlock()
		return nil
	})
	if err == nil && len(nodes) == 0 {
		err = errors.New("the cluster lists no primary")
	}
	slices.SortFunc(nodes, func(a, b listNode) int { return strings.Compare(a.addr, b.addr) })
	return nodes, err
}

// parseCursor finds where a listing continues: which node and SCAN cursor.
// Outside a cluster the cursor is SCAN's own number; on a cluster it is
// "number@primary". A primary that is gone (failed over) is replaced by
// the next one by address, from its start.
func parseCursor(cur string, nodes []listNode) (pos int, cursor uint64, err error) {
	if cur == "" || cur == "0" {
		return 0, 0, nil
	}
	num, addr, clustered := strings.Cut(cur, "@")
	if clustered != (nodes[0].addr != "") {
		return 0, 0, ErrBadCursor
	}
	if cursor, err = strconv.ParseUint(num, 10, 64); err != nil {
		return 0, 0, ErrBadCursor
	}
	if !clustered {
		return 0, cursor, nil
	}
	for i, n := range nodes {
		switch {
		case n.addr == addr:
			return i, cursor, nil
		case n.addr > addr:
			return i, 0, nil
		}
	}
	return len(nodes), 0, nil
}

// formatCursor is parseCursor's inverse; "0" when the listing is complete.
func formatCursor(nodes []listNode, pos int, cursor uint64) string {
	switch {
	case pos >= len(nodes):
		return "0"
	case nodes[pos].addr == "":
		return strconv.FormatUint(cursor, 10)
	}
	return strconv.FormatUint(cursor, 10) + "@" + nodes[pos].addr
}

// readInfos reads the operator fields of keys in one pipeline.
func (s *Store) readInfos(ctx context.Context, node scanNode, keys []string) ([]KeyInfo, error) {
	if len(keys) == 0 {
		return nil, nil
	}
	pipe := node.Pipeline()
	now := pipe.Time(ctx)
	fields := make([]*redis.SliceCmd, len(keys))
	ttls := make([]*redis.DurationCmd, len(keys))
	for i, k := range keys {
		fields[i] = pipe.HMGet(ctx, k, "st", "status", "bs", "fence", "lx", "ct", "sc", "ctk")
		ttls[i] = pipe.PTTL(ctx, k)
	}
	_, _ = pipe.Exec(ctx) // each command keeps its own result
	if err := now.Err(); err != nil {
		return nil, fmt.Errorf("redisstore: list: %w", err)
	}
	nowMS := now.Val().UnixMilli()
	out := make([]KeyInfo, 0, len(keys))
	for i, k := range keys {
		if err := fields[i].Err(); err != nil {
			if moved, ask, _ := redirection(err); moved || ask {
				continue // its slot moved to another primary since SCAN saw it
			}
			return nil, fmt.Errorf("redisstore: list: %w", err)
		}
		v := fields[i].Val()
		str := func(j int) string { s, _ := v[j].(string); return s }
		f := recordFields{st: str(0), status: str(1), bs: str(2), fence: str(3), lx: str(4), ct: str(5), sc: str(6), ctk: str(7)}
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
