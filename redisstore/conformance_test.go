package redisstore

import (
	"testing"
	"time"

	"github.com/idemproxy/idemproxy/internal/storetest"
	"github.com/idemproxy/idemproxy/internal/testenv/redistopo"
	"github.com/idemproxy/idemproxy/processor"
)

// The Store satisfies the interface its consumer defines. The check lives in
// a test so that the package itself never builds the processor (gRPC,
// Envoy's protos, Prometheus).
var _ processor.Store = (*Store)(nil)

// TestStore_conformance runs the shared Store behaviours on a real Redis;
// internal/memstore runs the same table on the in-memory store.
func TestStore_conformance(t *testing.T) {
	t.Parallel()
	srv := redistopo.Start(t)
	storetest.Run(t, func(t *testing.T) storetest.Subject {
		// One Redis for the whole table; a prefix per behaviour keeps them apart.
		s := New(srv.Client(t), Options{Prefix: "conformance:" + t.Name() + ":"})
		return storetest.Subject{Store: s, Wait: time.Sleep}
	})
}

// TestStore_conformanceBatched: the same behaviours through batched writes
// (a writer shared by every call of a behaviour).
func TestStore_conformanceBatched(t *testing.T) {
	t.Parallel()
	srv := redistopo.Start(t)
	storetest.Run(t, func(t *testing.T) storetest.Subject {
		s := New(srv.Client(t), Options{Prefix: "batched:" + t.Name() + ":", Batching: Batching{Writers: 1, MaxBatch: 8}})
		t.Cleanup(s.Close)
		return storetest.Subject{Store: s, Wait: time.Sleep}
	})
}
