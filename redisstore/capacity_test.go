package redisstore

import (
	"crypto/sha256"
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"

	"github.com/idemproxy/idemproxy/internal/idem"
	"github.com/idemproxy/idemproxy/internal/testenv/redistopo"
)

// TestCapacity measures what one key costs in Redis (or Valkey, with
// REDIS_FLAVOR=valkey), written through the Store as idemproxy writes it:
// MEMORY USAGE of the record's hash and of its fence counter, and the
// growth of used_memory per record over many records, which also counts
// the key tables and expiry entries. It logs the table docs/capacity.md
// shows (`make capacity` runs it on both stores) and checks only that the
// figures are sane: sizes are measured, never asserted as goals.
func TestCapacity(t *testing.T) {
	t.Parallel()
	srv := redistopo.Start(t)
	c := srv.Client(t)
	kr, err := ParseKeyring(newKeySpec(t, "2026-12"))
	require.NoError(t, err)
	stores := map[bool]*Store{false: New(c, Options{}), true: New(c, Options{Keyring: kr})}
	rows := capacityRows()
	// Once for nothing: the first records a server stores pay for
	// allocations it keeps (about 30 bytes a key more, over 2000 keys).
	measureCapacity(t, stores[false], c, rows[0])
	figures := make([]capacityFigures, len(rows))
	for i, row := range rows {
		figures[i] = measureCapacity(t, stores[row.sealed], c, row)
	}
	t.Log("\n" + capacityTable(serverName(t, c), rows, figures))
	for i, row := range rows {
		f := figures[i]
		require.Equal(t, row.wantEncoding, f.encoding, "%s: the hash's encoding", row.name())
		// Sane bounds only: the body is there once, and the rest costs
		// less than 2 KiB (large bodies round up to the allocator's
		// size classes: up to a quarter more).
		for what, n := range map[string]float64{"MEMORY USAGE": float64(f.record + f.fence), "used_memory": f.grown} {
			require.Greater(t, n, float64(row.body)+50, "%s: %s", row.name(), what)
			require.Less(t, n, 1.3*float64(row.body)+2048, "%s: %s", row.name(), what)
		}
		// A row of few keys (the 1,000,000-byte bodies: 67) divides the
		// key table's growth by few, and when the table doubles during
		// the row (its bucket array reallocated) that lands on those few
		// keys: seen up to 253 bytes a counter, and once 543 (CI). The
		// bound for such rows is the 2 KiB of the record's.
		require.Greater(t, f.grownFence, 50.0, "%s: a fence counter", row.name())
		bound := 400.0
		if f.records < 100 {
			bound = 2048
		}
		require.Less(t, f.grownFence, bound, "%s: a fence counter", row.name())
	}
}

// capacityTable lays the figures out for docs/capacity.md.
func capacityTable(server string, rows []capacityRow, figures []capacityFigures) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s: bytes per key (its record hash, its fence counter)\n", server)
	fmt.Fprintf(&b, "%-42s | %-25s | %-27s |\n", "", "MEMORY USAGE", "used_memory growth per key")
	line := "%-42s | %7s %6s %10s | %7s %6s %12s | %5s  %s\n"
	fmt.Fprintf(&b, line, "row", "record", "fence", "sum", "record", "fence", "sum", "keys", "encoding")
	for i, r := range rows {
		f := figures[i]
		fmt.Fprintf(&b, line, r.name(), strconv.FormatInt(f.record, 10), strconv.FormatInt(f.fence, 10),
			strconv.FormatInt(f.record+f.fence, 10), strconv.Itoa(int(f.grown-f.grownFence+0.5)),
			strconv.Itoa(int(f.grownFence+0.5)), strconv.Itoa(int(f.grown+0.5)), strconv.Itoa(f.records), f.encoding)
	}
	return b.String()
}

// capacityRow is one kind of record TestCapacity measures.
type capacityRow struct {
	state string // "in progress", "unknown" (abandoned) or "completed"
	body  int    // bytes of the stored body (completed only)
	// listpackValue is hash-max-listpack-value for the row, 0 for the
	// servers' default (64): an operator's setting, no code change.
	listpackValue int
	sealed        bool // --encryption-keys: hdr and body sealed, field enc
	wantEncoding  string
}

func (r capacityRow) name() string {
	n := r.state
	if r.state == "completed" {
		n += ", body " + strconv.Itoa(r.body)
	}
	if r.sealed {
		n += ", sealed"
	}
	if r.listpackValue != 0 {
		n += ", listpack-value " + strconv.Itoa(r.listpackValue)
	}
	return n
}

// capacityRows are the rows of the table: the two records without a
// response, then completed ones from an empty body to the default
// --max-body-bytes (1 MiB); 64 is the last body a default server keeps
// in a listpack; 90 is the body of the soak in issue 21.
func capacityRows() []capacityRow {
	rows := []capacityRow{
		{state: "in progress", wantEncoding: "listpack"},
		{state: "unknown", wantEncoding: "listpack"},
	}
	for _, n := range []int{0, 64, 65, 90, 1000, 16000, 64000} {
		enc := "listpack"
		if n > 64 {
			enc = "hashtable"
		}
		rows = append(rows, capacityRow{state: "completed", body: n, wantEncoding: enc})
	}
	rows = append(rows, capacityRow{state: "completed", body: 0, sealed: true, wantEncoding: "hashtable"},
		capacityRow{state: "completed", body: 90, sealed: true, wantEncoding: "hashtable"})
	for _, n := range []int{90, 1000} {
		rows = append(rows, capacityRow{state: "completed", body: n, listpackValue: 1 << 10, wantEncoding: "listpack"})
	}
	// Last: the server keeps a connection's 1 MiB query buffer for a
	// while, which would count against the rows after it.
	return append(rows, capacityRow{state: "completed", body: 1000000, wantEncoding: "hashtable"})
}

// capacityHeaders are a JSON response's stored headers through Envoy
// (content-length and date are never stored): encoded, 64 bytes, the
// most a default server keeps in a listpack.
var capacityHeaders = []idem.Header{
	{Name: "content-type", Value: "application/json"},
	{Name: "x-envoy-upstream-service-time", Value: "12"},
}

// capacityFigures are what one row measured.
type capacityFigures struct {
	record, fence int64 // MEMORY USAGE of one record's hash and fence counter
	// grown is used_memory's growth per key (record and fence counter);
	// grownFence what is left of it once the records are deleted.
	grown, grownFence float64
	records           int    // how many keys that growth is over
	encoding          string // OBJECT ENCODING of the record's hash
}

// measureCapacity writes one record of row and reads its MEMORY USAGE,
// then, on an emptied server, writes many and reads used_memory's growth.
func measureCapacity(t *testing.T, s *Store, c *redis.Client, row capacityRow) capacityFigures {
	t.Helper()
	ctx := t.Context()
	lpv := row.listpackValue
	if lpv == 0 {
		lpv = 64
	}
	require.NoError(t, c.ConfigSet(ctx, "hash-max-listpack-value", strconv.Itoa(lpv)).Err())
	require.NoError(t, c.Do(ctx, "FLUSHALL", "SYNC").Err())
	body := make([]byte, row.body)
	for i := range body {
		body[i] = 'a' + byte(i%26)
	}
	writeCapacityRecord(t, s, "sample", row, body)
	var f capacityFigures
	rk := s.RedisKey("sample")
	var err error
	f.record, err = c.MemoryUsage(ctx, rk, 0).Result()
	require.NoError(t, err)
	f.fence, err = c.MemoryUsage(ctx, rk+fenceSuffix, 0).Result()
	require.NoError(t, err)
	f.encoding, err = c.ObjectEncoding(ctx, rk).Result()
	require.NoError(t, err)

	require.NoError(t, c.Do(ctx, "FLUSHALL", "SYNC").Err())
	f.records = min(2000, (64<<20)/(row.body+1))
	before := usedMemory(t, c)
	for i := range f.records {
		writeCapacityRecord(t, s, strconv.Itoa(i), row, body)
	}
	f.grown = float64(usedMemory(t, c)-before) / float64(f.records)
	// A hash of a few fields is freed at once (never lazily, in the
	// background), so used_memory is exact right after the DEL.
	pipe := c.Pipeline()
	for i := range f.records {
		pipe.Del(ctx, s.RedisKey(strconv.Itoa(i)))
	}
	_, err = pipe.Exec(ctx)
	require.NoError(t, err)
	f.grownFence = float64(usedMemory(t, c)-before) / float64(f.records)
	require.NoError(t, c.Do(ctx, "FLUSHALL", "SYNC").Err())
	return f
}

// writeCapacityRecord writes key's record as idemproxy does, with a
// request's real sizes: a 32-hex-digit owner token, a SHA-256
// fingerprint, a scope with an identity hash, a 24-hour retention.
func writeCapacityRecord(t *testing.T, s *Store, key string, row capacityRow, body []byte) {
	t.Helper()
	ctx := t.Context()
	fp := sha256.Sum256([]byte(key))
	tok := token(t)
	const retention = 24 * time.Hour
	acq, err := s.Acquire(ctx, key, idem.Claim{Token: tok, Fingerprint: fp[:], Scope: "api.example.com identity=0123456789abcdef",
		Lease: idem.Lease{TTL: 30 * time.Second, Hold: retention}})
	require.NoError(t, err)
	require.Equal(t, idem.StateAcquired, acq.State)
	switch row.state {
	case "unknown":
		require.NoError(t, s.Abandon(ctx, key, tok, retention))
	case "completed":
		rec := idem.Record{Fingerprint: fp[:], Status: 201, Headers: capacityHeaders, Body: body, BodyStored: true}
		require.NoError(t, s.Complete(ctx, key, tok, rec, retention))
	}
}

// usedMemory is INFO memory's used_memory: bytes the server allocated.
func usedMemory(t *testing.T, c *redis.Client) int64 {
	t.Helper()
	n, err := strconv.ParseInt(infoField(t, c, "memory", "used_memory"), 10, 64)
	require.NoError(t, err)
	return n
}

// serverName is "redis 7.0.15" or "valkey 8.1.8" (Valkey also answers
// redis_version, with the Redis version it is compatible with).
func serverName(t *testing.T, c *redis.Client) string {
	t.Helper()
	if v := infoField(t, c, "server", "valkey_version"); v != "" {
		return "valkey " + v
	}
	return "redis " + infoField(t, c, "server", "redis_version")
}

// infoField is one field of an INFO section, "" when absent.
func infoField(t *testing.T, c *redis.Client, section, field string) string {
	t.Helper()
	info, err := c.Info(t.Context(), section).Result()
	require.NoError(t, err)
	for line := range strings.SplitSeq(info, "\r\n") {
		if v, ok := strings.CutPrefix(line, field+":"); ok {
			return v
		}
	}
	return ""
}
