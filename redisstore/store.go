// Package redisstore implements processor.Store on Redis.
//
// Each idempotency record is one Redis hash, and every method is one Lua
// script, so each step is atomic and costs one round trip. The owner token is
// compared inside the scripts: only the request that acquired a key can renew,
// complete or release it, and a completed record is never overwritten.
//
// Hash fields:
//
//	st      "p" in progress, "c" completed, "u" outcome unknown (held)
//	tok     owner token (in progress only)
//	fp      request fingerprint
//	fence   fencing token of the grant that created the record (in
//	        progress and held; a completed record keeps it in ctk)
//	lx      end of the lease, ms on the Redis clock (in progress; absent in
//	        records of the previous version, whose lease was the key's TTL)
//	ct      when the record was created, ms on the Redis clock
//	sc      the scope, for operators: authority and identity hash, no key
//	status  HTTP status (completed only)
//	hdr     encoded response headers (completed only)
//	body    response body (completed only; empty when not stored)
//	bs      "1" body stored, "0" too large to store, "i" it never ended,
//	        "t" it ended with trailers (not replayable), "s" it was seen
//	        in full but not stored before its lease ended (status only;
//	        versions before it read "s" as a corrupt record: they refuse
//	        the key with 503, never run it)
//	enc     id of the key that sealed hdr and body, absent (or "", as
//	        earlier versions wrote) when plain
//	ctk     SHA-1 (hex) of the completing owner's token, ":", the fence
//	        (completed only; earlier versions: the digest alone, and field
//	        fence), so a retried completion knows it succeeded
//	ua      Envoy's upstream attempt count, when above 1 (completed only)
//	w       "1" when a duplicate waits for the record (in progress only)
//
// An in-progress record lives for the hold (the retention), not for its
// lease: when its owner vanishes, the lease ends but the record stays, so
// a retry learns "outcome unknown" instead of "free" and never runs again.
package redisstore

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/idemproxy/idemproxy/internal/idem"
)

var (
	// ErrInvalidArgument reports a call refused before Redis is contacted:
	// a TTL that is not positive, or an empty owner token.
	ErrInvalidArgument = errors.New("redisstore: invalid argument")
	// ErrCorruptRecord reports a record or script reply that cannot be
	// decoded, for example one written by an incompatible version.
	ErrCorruptRecord = errors.New("redisstore: corrupt record")
	// ErrLate reports an acquire that reached Redis after its deadline,
	// when its caller had stopped waiting: no lock was created.
	ErrLate = errors.New("redisstore: the acquire reached Redis after its deadline; no lock was created")
	// ErrResetMarker reports an acquire of a free key refused because the
	// store-reset marker of its slot is missing, or notes a reset that is
	// neither acknowledged nor past its hold (marker.go): nothing was
	// written. It is an idem.ErrStoreReset and an idem.ErrNotTaken.
	ErrResetMarker = fmt.Errorf("%w: the store-reset marker of the key's slot is missing or notes a reset, so %w",
		idem.ErrStoreReset, idem.ErrNotTaken)
)

// DefaultPrefix is the key prefix used when Options.Prefix is empty.
const DefaultPrefix = "idemproxy:"

// DefaultFenceTTL is how long a key's fence counter outlives its last grant.
const DefaultFenceTTL = 48 * time.Hour

// Options configures a Store.
type Options struct {
	// Prefix starts every Redis key the store uses, so that several
	// deployments can share one Redis. Default DefaultPrefix.
	Prefix string
	// FenceTTL is how long a key's fence counter is kept after its last
	// grant. It must exceed the retention: a counter that expired would
	// start again at 1, below what a backend remembers. Default
	// DefaultFenceTTL.
	FenceTTL time.Duration
	// Keyring, when set, encrypts stored headers and bodies at rest.
	Keyring *Keyring
	// Topology is what the store knows of Redis's shape beyond the client:
	// the replicas a failover could promote (AllReplicas), and each
	// primary's clock, which gives every acquire a deadline (a lock that
	// reaches Redis after the caller gave up on it is not created). Its
	// Refresh keeps both current. nil: no deadlines.
	Topology *Topology
	// AllReplicas makes Acquire and Complete wait (WAIT, pipelined with
	// the script) until every replica a failover could promote has the
	// write, at most ReplicaTimeout; less is idem.ErrUnreplicated. It
	// needs a Topology in cluster or sentinel mode.
	AllReplicas bool
	// MinReplicas, when positive and AllReplicas is not set, makes
	// Acquire and Complete wait until that many replicas, any of them,
	// have the write: weaker, since the one that has it may not be the
	// one promoted.
	MinReplicas int
	// ReplicaTimeout bounds that wait. Default DefaultReplicaTimeout.
	ReplicaTimeout time.Duration
	// Markers, when set, makes Acquire check the store-reset marker of
	// the key's slot before it grants a free key (ErrResetMarker when it
	// is missing or notes a reset). nil: no check (--on-store-reset=accept, or a store whose
	// markers nobody writes).
	Markers *Markers
	// Batching, when its Writers is set, sends concurrent calls together
	// (batch.go); Close stops it. Writes that wait for replicas
	// (AllReplicas, MinReplicas) are not batched.
	Batching Batching
}

// DefaultReplicaTimeout is Options.ReplicaTimeout when it is not set.
const DefaultReplicaTimeout = 250 * time.Millisecond

// Client is the narrowest part of go-redis the store needs: scripts for
// every request-path operation; DEL, SCAN and pipelines for operators. A
// *redis.Client, *redis.ClusterClient or *redis.Ring all satisfy it.
type Client interface {
	redis.Scripter
	Del(ctx context.Context, keys ...string) *redis.IntCmd
	ScanType(ctx context.Context, cursor uint64, match string, count int64, keyType string) *redis.ScanCmd
	Pipeline() redis.Pipeliner
}

// Store is a processor.Store backed by Redis. It is safe for concurrent use.
type Store struct {
	client   Client
	cluster  Cluster // client, when it is a cluster client; else nil
	prefix   string
	fenceTTL int64 // ms
	keyring  *Keyring

	topo           *Topology // nil: no deadlines, no view
	allReplicas    bool
	minReplicas    int
	replicaTimeout time.Duration
	batch          *batcher // nil: every call is its own write
	markers        *Markers // nil: acquires do not check them
	// On a cluster, one batcher per primary, so a write never waits for
	// another node's replies (created on first use, by address).
	batching  Batching
	perNode   bool
	nodesMu   sync.Mutex
	nodeBatch map[string]*batcher // nil once closed
}

// New returns a Store using client; the store does not close the client.
// A client that also implements Cluster (a *redis.ClusterClient) is used
// per primary where one node matters: durable writes and listings.
func New(client Client, opts Options) *Store {
	if opts.Prefix == "" {
		opts.Prefix = DefaultPrefix
	}
	if opts.FenceTTL <= 0 {
		opts.FenceTTL = DefaultFenceTTL
	}
	if opts.ReplicaTimeout <= 0 {
		opts.ReplicaTimeout = DefaultReplicaTimeout
	}
	s := &Store{client: client, prefix: opts.Prefix, fenceTTL: millis(opts.FenceTTL), keyring: opts.Keyring,
		minReplicas: max(opts.MinReplicas, 0), replicaTimeout: opts.ReplicaTimeout,
		topo: opts.Topology, allReplicas: opts.AllReplicas, markers: opts.Markers}
	s.cluster, _ = client.(Cluster)
	if opts.Batching.Writers > 0 {
		s.batching = opts.Batching
		if s.cluster == nil {
			s.batch = newBatcher(client, opts.Batching)
		} else {
			s.perNode, s.nodeBatch = true, map[string]*batcher{}
		}
	}
	return s
}

// Close stops the store's batching writers, once the calls they hold are
// sent. It does not close the client.
func (s *Store) Close() {
	if s.batch != nil {
		s.batch.Close()
	}
	s.nodesMu.Lock()
	nodes := s.nodeBatch
	s.nodeBatch = nil
	s.nodesMu.Unlock()
	for _, b := range nodes {
		b.Close()
	}
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
func (s *Store) RedisKey(key string) string { return recordKey(s.prefix, key) }

// recordKey is RedisKey under prefix (the Gate finds a key's slot by it).
func recordKey(prefix, key string) string {
	sum := sha256.Sum256([]byte(key))
	return prefix + "{" + hex.EncodeToString(sum[:16]) + "}"
}

// fenceSuffix names a record's fence counter, beside it in the same slot.
const fenceSuffix = ":fence"

// settledSuffix names a record's shard channel (same hash tag, so the same
// slot): the scripts that settle a key (complete, release, abandon)
// publish there, for duplicates waiting on the key.
const settledSuffix = ":settled"
