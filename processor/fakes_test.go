package processor

import (
	"bytes"
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/idemproxy/idemproxy/internal/idem"
	"github.com/idemproxy/idemproxy/internal/storetest"
)

var _ extprocv3.ExternalProcessor_ProcessServer = (*fakeStream)(nil)

// streamItem is what one Recv returns. cancelFirst cancels the stream
// context before the item is delivered, as Envoy does when it resets the
// side stream right after its last message.
type streamItem struct {
	req         *extprocv3.ProcessingRequest
	err         error
	cancelFirst bool
}

// fakeStream is an ext_proc stream driven by the test: Recv takes scripted
// items in order, Send records replies. The embedded ServerStream is nil:
// the processor must not call its other methods.
type fakeStream struct {
	grpc.ServerStream

	ctx    context.Context
	cancel context.CancelFunc
	in     chan streamItem
	out    chan *extprocv3.ProcessingResponse

	mu         sync.Mutex
	sends      int
	failSendAt int // 1-based Send call that fails; 0: none
}

func newFakeStream(ctx context.Context) *fakeStream {
	ctx, cancel := context.WithCancel(ctx)
	return &fakeStream{
		ctx: ctx, cancel: cancel,
		in:  make(chan streamItem, 64),
		out: make(chan *extprocv3.ProcessingResponse, 64),
	}
}

func (f *fakeStream) Context() context.Context { return f.ctx }

// Recv returns the next scripted item; once the context is canceled with
// nothing queued it fails like grpc-go does, with codes.Canceled.
func (f *fakeStream) Recv() (*extprocv3.ProcessingRequest, error) {
	select {
	case it := <-f.in:
		if it.cancelFirst {
			f.cancel()
		}
		return it.req, it.err
	case <-f.ctx.Done():
		return nil, status.Error(codes.Canceled, "context canceled")
	}
}

func (f *fakeStream) Send(resp *extprocv3.ProcessingResponse) error {
	f.mu.Lock()
	f.sends++
	fail := f.sends == f.failSendAt
	f.mu.Unlock()
	if fail {
		// A send fails because the stream is gone: its context ends too.
		f.cancel()
		return errors.New("fake stream: send failed")
	}
	f.out <- resp
	return nil
}

// storeCall is one recorded Store call. ctxErr is the context's error at
// the time of the call, hasDeadline whether the context was bounded.
type storeCall struct {
	op, key, token string
	fp             []byte
	scope          string
	lease          idem.Lease
	ttl            time.Duration // lease asked for, or retention, or hold
	rec            idem.Record
	ctxErr         error
	hasDeadline    bool
}

// storeEntry is one key; rec is nil while the key is in progress or held
// as outcome unknown.
type storeEntry struct {
	token    string
	by       string // the token that completed it
	fp       []byte
	leaseEnd time.Time // in progress: when the lease runs out
	expires  time.Time // when the whole record goes
	rec      *idem.Record
	unknown  bool
	fence    int64
	scope    string
}

// fakeStore is an in-memory Store with the real semantics (leases that run
// out into unknown outcomes, takeover, completion, fingerprints, ownership)
// that records every call and can be told to fail an operation. Its clock
// stands still until the test advances it; the conformance suite checks
// it against redisstore on a real Redis.
type fakeStore struct {
	mu      sync.Mutex
	now     time.Time
	entries map[string]*storeEntry
	calls   []storeCall
	fail    map[string]error     // op -> error returned instead of acting
	failN   map[string]int       // op -> how many more calls fail; absent: all
	failTil map[string]time.Time // op -> calls fail until then (wall clock)
	fences  map[string]int64     // grows per grant, survives deletion
	// watchers are told when their key is settled; mute drops the notices
	// (a lost Pub/Sub message).
	watchers  map[string][]chan time.Time
	settledAt map[string]time.Time // wall clock, as the Watcher's notices
	mute      bool
	peekGate  chan struct{} // closed: Peek may read (holdPeeks)
}

var _ Watcher = (*fakeStore)(nil)

// Watch implements Watcher: Complete, Release and Abandon prompt the
// key's watchers, as the Redis scripts publish on its channel; recheck
// prompts them all, as the Watcher's slow timer does. A settlement since
// the caller's look prompts at once.
func (s *fakeStore) Watch(_ context.Context, key string, since time.Time) (<-chan time.Time, func(), error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.fail["watch"]; err != nil {
		return nil, nil, err
	}
	c := make(chan time.Time, 1)
	s.watchers[key] = append(s.watchers[key], c)
	if t, ok := s.settledAt[key]; ok && !t.Before(since) && !s.mute {
		c <- t
	}
	return c, func() {
		s.mu.Lock()
		defer s.mu.Unlock()
		ws := s.watchers[key]
		for i, w := range ws {
			if w == c {
				s.watchers[key] = append(ws[:i], ws[i+1:]...)
				break
			}
		}
	}, nil
}

// recheck prompts every watcher of every key.
func (s *fakeStore) recheck() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for key := range s.watchers {
		s.prompt(key)
	}
}

// settled tells key's watchers; s.mu is held.
func (s *fakeStore) settled(key string) {
	if s.mute {
		return
	}
	s.settledAt[key] = time.Now()
	s.prompt(key)
}

// prompt wakes key's watchers; s.mu is held.
func (s *fakeStore) prompt(key string) {
	now := time.Now()
	for _, c := range s.watchers[key] {
		select {
		case <-c:
		default:
		}
		c <- now
	}
}

// watching is how many waiters watch key.
func (s *fakeStore) watching(key string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.watchers[key])
}

var _ Store = (*fakeStore)(nil)

func newFakeStore() *fakeStore {
	return &fakeStore{now: time.Unix(1_700_000_000, 0), entries: map[string]*storeEntry{},
		fail: map[string]error{}, failN: map[string]int{}, fences: map[string]int64{}, watchers: map[string][]chan time.Time{}, settledAt: map[string]time.Time{}}
}

// advance moves the store's clock on.
func (s *fakeStore) advance(d time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.now = s.now.Add(d)
}

// record logs a call and returns the error the test asked op to fail with.
func (s *fakeStore) record(ctx context.Context, c storeCall) error {
	c.ctxErr = ctx.Err()
	_, c.hasDeadline = ctx.Deadline()
	s.calls = append(s.calls, c)
	if c.ctxErr != nil {
		return c.ctxErr // as a Redis client does: nothing is sent
	}
	if until, timed := s.failTil[c.op]; timed && !time.Now().Before(until) {
		return nil
	}
	if n, counted := s.failN[c.op]; counted {
		if n == 0 {
			return nil
		}
		s.failN[c.op] = n - 1
	}
	return s.fail[c.op]
}

// live returns key's entry unless it has expired (then it is dropped).
func (s *fakeStore) live(key string) (*storeEntry, bool) {
	e, ok := s.entries[key]
	if ok && !s.now.Before(e.expires) {
		delete(s.entries, key)
		return nil, false
	}
	return e, ok
}

// keyTTL is how long an in-progress record lives: the hold, or the lease
// itself with takeover.
func keyTTL(l idem.Lease) time.Duration {
	if l.Takeover {
		return l.TTL
	}
	return l.Hold
}

// owned returns key's in-progress entry if token holds it.
func (s *fakeStore) owned(key, token string) (*storeEntry, bool) {
	e, ok := s.live(key)
	if !ok || e.rec != nil || e.unknown || e.token != token {
		return nil, false
	}
	return e, true
}

func (s *fakeStore) Acquire(ctx context.Context, key string, c idem.Claim) (idem.Acquisition, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.record(ctx, storeCall{op: "acquire", key: key, token: c.Token, fp: c.Fingerprint, scope: c.Scope,
		lease: c.Lease, ttl: c.Lease.TTL}); err != nil {
		return idem.Acquisition{}, err
	}
	e, ok := s.live(key)
	switch {
	case !ok || (e.rec == nil && !e.unknown && !s.now.Before(e.leaseEnd) && c.Lease.Takeover):
		s.fences[key]++
		s.entries[key] = &storeEntry{token: c.Token, fp: bytes.Clone(c.Fingerprint), leaseEnd: s.now.Add(c.Lease.TTL),
			expires: s.now.Add(keyTTL(c.Lease)), fence: s.fences[key], scope: c.Scope}
		return idem.Acquisition{State: idem.StateAcquired, Fence: s.fences[key]}, nil
	case e.unknown:
		return idem.Acquisition{State: idem.StateUnknown, Fingerprint: bytes.Clone(e.fp), LockTTL: e.expires.Sub(s.now)}, nil
	case e.rec == nil && !s.now.Before(e.leaseEnd):
		return idem.Acquisition{State: idem.StateUnknown, Expired: true, Fingerprint: bytes.Clone(e.fp), LockTTL: e.expires.Sub(s.now)}, nil
	case e.rec == nil:
		return idem.Acquisition{State: idem.StateInProgress, Fingerprint: bytes.Clone(e.fp), LockTTL: e.leaseEnd.Sub(s.now)}, nil
	default:
		rec := cloneRecord(*e.rec)
		return idem.Acquisition{State: idem.StateCompleted, Fingerprint: bytes.Clone(e.fp), Record: &rec}, nil
	}
}

func (s *fakeStore) Peek(ctx context.Context, key string) (idem.Acquisition, error) {
	s.mu.Lock()
	gate := s.peekGate
	s.mu.Unlock()
	if gate != nil {
		select {
		case <-gate:
		case <-ctx.Done():
			return idem.Acquisition{}, ctx.Err()
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.record(ctx, storeCall{op: "peek", key: key}); err != nil {
		return idem.Acquisition{}, err
	}
	e, ok := s.live(key)
	switch {
	case !ok:
		return idem.Acquisition{State: idem.StateFree}, nil
	case e.unknown:
		return idem.Acquisition{State: idem.StateUnknown, Fingerprint: bytes.Clone(e.fp), LockTTL: e.expires.Sub(s.now)}, nil
	case e.rec == nil && !s.now.Before(e.leaseEnd):
		return idem.Acquisition{State: idem.StateUnknown, Expired: true, Fingerprint: bytes.Clone(e.fp), LockTTL: e.expires.Sub(s.now)}, nil
	case e.rec == nil:
		return idem.Acquisition{State: idem.StateInProgress, Fingerprint: bytes.Clone(e.fp), LockTTL: e.leaseEnd.Sub(s.now)}, nil
	default:
		rec := cloneRecord(*e.rec)
		return idem.Acquisition{State: idem.StateCompleted, Fingerprint: bytes.Clone(e.fp), Record: &rec}, nil
	}
}

func (s *fakeStore) Renew(ctx context.Context, key, token string, l idem.Lease) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.record(ctx, storeCall{op: "renew", key: key, token: token, lease: l, ttl: l.TTL}); err != nil {
		return err
	}
	e, ok := s.owned(key, token)
	if !ok {
		return idem.ErrLeaseLost
	}
	e.leaseEnd, e.expires = s.now.Add(l.TTL), s.now.Add(keyTTL(l))
	return nil
}

func (s *fakeStore) Complete(ctx context.Context, key, token string, rec idem.Record, retention time.Duration) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.record(ctx, storeCall{op: "complete", key: key, token: token, rec: cloneRecord(rec), ttl: retention}); err != nil {
		return err
	}
	if e, ok := s.live(key); ok && e.rec != nil && e.by == token {
		return nil // a retry of its owner's completion: written already
	}
	e, ok := s.owned(key, token)
	if !ok {
		return idem.ErrLeaseLost
	}
	stored := cloneRecord(rec)
	if !stored.BodyStored {
		stored.Body = nil
	}
	e.rec, e.token, e.by, e.expires = &stored, "", token, s.now.Add(retention)
	s.settled(key)
	return nil
}

func (s *fakeStore) Release(ctx context.Context, key, token string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.record(ctx, storeCall{op: "release", key: key, token: token}); err != nil {
		return err
	}
	if _, ok := s.owned(key, token); !ok {
		return idem.ErrLeaseLost
	}
	delete(s.entries, key)
	s.settled(key)
	return nil
}

func (s *fakeStore) Abandon(ctx context.Context, key, token string, hold time.Duration) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.record(ctx, storeCall{op: "abandon", key: key, token: token, ttl: hold}); err != nil {
		return err
	}
	e, ok := s.owned(key, token)
	if !ok {
		return idem.ErrLeaseLost
	}
	e.unknown, e.token, e.expires = true, "", s.now.Add(hold)
	s.settled(key)
	return nil
}

// failOn makes every later call of op return err.
func (s *fakeStore) failOn(op string, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.fail[op] = err
}

// failTimes makes the next n calls of op return err.
func (s *fakeStore) failTimes(op string, err error, n int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.fail[op] = err
	s.failN[op] = n
}

// failUntil makes calls of op return err until the wall clock reaches t.
func (s *fakeStore) failUntil(op string, err error, t time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.failTil == nil {
		s.failTil = map[string]time.Time{}
	}
	s.fail[op] = err
	s.failTil[op] = t
}

// steal hands an in-progress key to another owner, as if the lock had
// expired and another request had taken it.
func (s *fakeStore) steal(key string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.entries[key].token = "thief"
}

func (s *fakeStore) seedInProgress(key string, fp []byte, ttl time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.entries[key] = &storeEntry{token: "other", fp: fp, leaseEnd: s.now.Add(ttl), expires: s.now.Add(24 * time.Hour)}
}

func (s *fakeStore) seedCompleted(key string, rec idem.Record) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.entries[key] = &storeEntry{fp: rec.Fingerprint, rec: &rec, expires: s.now.Add(24 * time.Hour)}
}

// holdPeeks makes Peek calls wait d before they read, as a Redis round
// trip does, only longer: long enough for everything prompted together to
// join the one in flight.
func (s *fakeStore) holdPeeks(d time.Duration) {
	gate := make(chan struct{})
	time.AfterFunc(d, func() { close(gate) })
	s.mu.Lock()
	s.peekGate = gate
	s.mu.Unlock()
}

// count is how many calls of op were made.
func (s *fakeStore) count(op string) int { return len(s.callsOf(op)) }

// callsOf returns the recorded calls of op ("" for all), in order.
func (s *fakeStore) callsOf(op string) []storeCall {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []storeCall
	for _, c := range s.calls {
		if op == "" || c.op == op {
			out = append(out, c)
		}
	}
	return out
}

// ops lists the operations called, in order, renewals left out: their
// number depends on timing.
func (s *fakeStore) ops() []string {
	var out []string
	for _, c := range s.callsOf("") {
		if c.op != "renew" {
			out = append(out, c.op)
		}
	}
	return out
}

func (s *fakeStore) entry(key string) (storeEntry, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	e, ok := s.entries[key]
	if !ok {
		return storeEntry{}, false
	}
	return *e, true
}

func cloneRecord(r idem.Record) idem.Record {
	r.Fingerprint = bytes.Clone(r.Fingerprint)
	r.Headers = append([]idem.Header(nil), r.Headers...)
	r.Body = bytes.Clone(r.Body)
	return r
}

// TestFakeStore_conformance runs the shared Store behaviours on the fake,
// with its clock stepped instead of slept: the same table runs against
// redisstore on a real Redis, so the fake cannot drift from it.
func TestFakeStore_conformance(t *testing.T) {
	storetest.Run(t, func(t *testing.T) storetest.Subject {
		s := newFakeStore()
		return storetest.Subject{Store: s, Wait: s.advance}
	})
}
