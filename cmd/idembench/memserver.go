package main

import (
	"context"
	"io"
	"runtime"
	"sync"
	"time"

	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"google.golang.org/grpc"

	"github.com/idemproxy/idemproxy/internal/idem"
	"github.com/idemproxy/idemproxy/processor"
)

// memoryServerCommand is the hidden first argument that turns idembench
// into idemproxy's processor over an in-memory store (scenario m): every
// decision, header and body idemproxy handles, and no Redis. It is the
// floor under idemproxy's own cost per request, measured, not a store
// anyone should run: it forgets everything when it stops.
const memoryServerCommand = "memory-server"

// runMemoryServer serves the processor on --addr until ctx ends, with
// idemproxy's defaults and its stream workers.
func runMemoryServer(ctx context.Context, args []string, stderr io.Writer) error {
	return serveExtProc(ctx, memoryServerCommand, args, stderr, func() (extprocv3.ExternalProcessorServer, error) {
		return processor.New(processor.DefaultConfig(), processor.Options{Store: newMemStore()})
	}, grpc.NumStreamWorkers(uint32(runtime.GOMAXPROCS(0))))
}

// memStore is a processor.Store in a map: new keys, replays and
// duplicates as Redis would answer them, without expiry (a benchmark run
// is short) and without Redis's clock.
type memStore struct {
	mu   sync.Mutex
	recs map[string]*memRecord
}

type memRecord struct {
	token string
	fp    []byte
	fence int64
	rec   *idem.Record // nil while in progress
	lease time.Time
	gone  bool // outcome unknown
}

func newMemStore() *memStore { return &memStore{recs: map[string]*memRecord{}} }

var _ processor.Store = (*memStore)(nil)

func (m *memStore) Acquire(_ context.Context, key string, c idem.Claim) (idem.Acquisition, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.lookLocked(key, &c), nil
}

func (m *memStore) Peek(_ context.Context, key string) (idem.Acquisition, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.lookLocked(key, nil), nil
}

// lookLocked answers as acquire.lua does; c nil is a peek.
func (m *memStore) lookLocked(key string, c *idem.Claim) idem.Acquisition {
	r := m.recs[key]
	switch {
	case r == nil && c == nil:
		return idem.Acquisition{State: idem.StateFree}
	case r == nil:
		m.recs[key] = &memRecord{token: c.Token, fp: c.Fingerprint, fence: 1, lease: time.Now().Add(c.Lease.TTL)}
		return idem.Acquisition{State: idem.StateAcquired, Fence: 1}
	case r.gone:
		return idem.Acquisition{State: idem.StateUnknown, Fingerprint: r.fp}
	case r.rec == nil:
		return idem.Acquisition{State: idem.StateInProgress, Fingerprint: r.fp, LockTTL: time.Until(r.lease)}
	}
	rec := *r.rec
	return idem.Acquisition{State: idem.StateCompleted, Fingerprint: r.fp, Record: &rec}
}

// owned returns key's in-progress record if token owns it.
func (m *memStore) owned(key, token string) (*memRecord, error) {
	r := m.recs[key]
	if r == nil || r.rec != nil || r.gone || r.token != token {
		return nil, idem.ErrLeaseLost
	}
	return r, nil
}

func (m *memStore) Renew(_ context.Context, key, token string, l idem.Lease) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	r, err := m.owned(key, token)
	if err == nil {
		r.lease = time.Now().Add(l.TTL)
	}
	return err
}

func (m *memStore) Complete(_ context.Context, key, token string, rec idem.Record, _ time.Duration) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	r, err := m.owned(key, token)
	if err == nil {
		r.rec = &rec
	}
	return err
}

func (m *memStore) Release(_ context.Context, key, token string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	_, err := m.owned(key, token)
	if err == nil {
		delete(m.recs, key)
	}
	return err
}

func (m *memStore) Abandon(_ context.Context, key, token string, _ time.Duration) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	r, err := m.owned(key, token)
	if err == nil {
		r.gone = true
	}
	return err
}
