package processor

import (
	"bytes"
	"context"
	"errors"
	"sync"
	"time"

	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/idemproxy/idemproxy/internal/idem"
	"github.com/idemproxy/idemproxy/internal/memstore"
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
	replay         idem.ReplayAsk
	rec            idem.Record
	ctxErr         error
	hasDeadline    bool
}

// storeEntry is what the tests read of one key's record; rec is nil while
// the key is in progress or held as outcome unknown.
type storeEntry struct {
	token   string
	rec     *idem.Record
	unknown bool
}

// fakeStore is the in-memory store (internal/memstore, which the
// conformance suite holds to redisstore's behaviour) on a clock that
// stands still until the test advances it, with what only tests need
// around it: it records every call, can be told to fail an operation or to
// hold Peeks, and can hand a key to another owner.
type fakeStore struct {
	mem   *memstore.Store
	clock *memstore.Clock

	mu      sync.Mutex
	calls   []storeCall
	fail    map[string]error     // op -> error returned instead of acting
	failN   map[string]int       // op -> how many more calls fail; absent: all
	failTil map[string]time.Time // op -> calls fail until then (wall clock)
	// peekGate, when set, holds Peeks until it is closed (holdPeeks).
	peekGate chan struct{}
	// issuesReplays makes Acquire issue the replay tokens a claim asks for
	// (idem.Claim.Replay) as redisstore does, "acquired-<key>"; without it
	// none are (as memstore), so the processor issues them itself.
	issuesReplays bool
}

var (
	_ Store   = (*fakeStore)(nil)
	_ Watcher = (*fakeStore)(nil)
)

func newFakeStore() *fakeStore {
	clock := memstore.NewClock(time.Unix(1_700_000_000, 0))
	return &fakeStore{mem: memstore.New(clock.Now), clock: clock,
		fail: map[string]error{}, failN: map[string]int{}, failTil: map[string]time.Time{}}
}

// advance moves the store's clock on.
func (s *fakeStore) advance(d time.Duration) { s.clock.Advance(d) }

// record logs a call and returns the error the test asked op to fail
// with; s.mu is held.
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

// do records c and, unless the test made it fail, runs act; the lock
// held across both keeps the calls' order that of their effects.
func (s *fakeStore) do(ctx context.Context, c storeCall, act func() error) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.record(ctx, c); err != nil {
		return err
	}
	return act()
}

func (s *fakeStore) Acquire(ctx context.Context, key string, c idem.Claim) (acq idem.Acquisition, err error) {
	err = s.do(ctx, storeCall{op: "acquire", key: key, token: c.Token, fp: c.Fingerprint, scope: c.Scope,
		lease: c.Lease, ttl: c.Lease.TTL, replay: c.Replay}, func() error {
		acq, err = s.mem.Acquire(ctx, key, c)
		if s.issuesReplays && err == nil {
			acq.ReplayToken = replayIssued(key, c, acq)
		}
		return err
	})
	return acq, err
}

// replayIssued is the token redisstore's acquire issues for claim c that
// found acq: for a completed record with c's fingerprint and its body
// stored, that ended with trailers or, when c asks for all, any.
func replayIssued(key string, c idem.Claim, acq idem.Acquisition) string {
	rec := acq.Record
	if c.Replay.TTL <= 0 || acq.State != idem.StateCompleted || rec == nil || !rec.BodyStored ||
		!bytes.Equal(rec.Fingerprint, c.Fingerprint) || !rec.Trailers && !c.Replay.All {
		return ""
	}
	return "acquired-" + key
}

func (s *fakeStore) Peek(ctx context.Context, key string) (acq idem.Acquisition, err error) {
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
	err = s.do(ctx, storeCall{op: "peek", key: key}, func() error {
		acq, err = s.mem.Peek(ctx, key)
		return err
	})
	return acq, err
}

func (s *fakeStore) Renew(ctx context.Context, key, token string, l idem.Lease) error {
	return s.do(ctx, storeCall{op: "renew", key: key, token: token, lease: l, ttl: l.TTL}, func() error {
		return s.mem.Renew(ctx, key, token, l)
	})
}

func (s *fakeStore) Complete(ctx context.Context, key, token string, rec idem.Record, retention time.Duration) error {
	return s.do(ctx, storeCall{op: "complete", key: key, token: token, rec: cloneRecord(rec), ttl: retention}, func() error {
		return s.mem.Complete(ctx, key, token, rec, retention)
	})
}

func (s *fakeStore) Release(ctx context.Context, key, token string) error {
	return s.do(ctx, storeCall{op: "release", key: key, token: token}, func() error {
		return s.mem.Release(ctx, key, token)
	})
}

func (s *fakeStore) Abandon(ctx context.Context, key, token string, hold time.Duration) error {
	return s.do(ctx, storeCall{op: "abandon", key: key, token: token, ttl: hold}, func() error {
		return s.mem.Abandon(ctx, key, token, hold)
	})
}

// Watch implements Watcher on the store's notices, unless the test made
// "watch" fail. Watches are not recorded as calls.
func (s *fakeStore) Watch(ctx context.Context, key string, since time.Time) (<-chan time.Time, func(), error) {
	s.mu.Lock()
	err := s.fail["watch"]
	s.mu.Unlock()
	if err != nil {
		return nil, nil, err
	}
	return s.mem.Watch(ctx, key, since)
}

// recheck prompts every watcher of every key, as the Watcher's slow timer
// does.
func (s *fakeStore) recheck() { s.mem.Recheck() }

// mute drops every later settlement notice (a lost Pub/Sub message).
func (s *fakeStore) mute() { s.mem.LoseNotices(true) }

// watching is how many waiters watch key.
func (s *fakeStore) watching(key string) int { return s.mem.Watching(key) }

// failOn makes every later call of op return err.
func (s *fakeStore) failOn(op string, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.fail[op] = err
}

// failWith makes every later call of an op in fail return its error, and
// the others succeed.
func (s *fakeStore) failWith(fail map[string]error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.fail = fail
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
	s.fail[op] = err
	s.failTil[op] = t
}

// steal hands an in-progress key to another owner, as if the lock had
// expired and another request had taken it.
func (s *fakeStore) steal(key string) {
	s.mem.Edit(func(k string, e *memstore.Entry) {
		if k == key {
			e.Token = "thief"
		}
	})
}

// stealAll hands every key in progress to another owner.
func (s *fakeStore) stealAll() {
	s.mem.Edit(func(_ string, e *memstore.Entry) {
		if e.Record == nil && !e.Unknown {
			e.Token = "thief"
		}
	})
}

func (s *fakeStore) seedInProgress(key string, fp []byte, ttl time.Duration) {
	now := s.clock.Now()
	s.mem.Put(key, memstore.Entry{Token: "other", Fingerprint: fp, LeaseEnd: now.Add(ttl), Expires: now.Add(24 * time.Hour)})
}

// seedRunning seeds an in-progress record granted running ago (0: a
// record without its grant time), its lease ending in left.
func (s *fakeStore) seedRunning(key string, fp []byte, running, left time.Duration) {
	now := s.clock.Now()
	e := memstore.Entry{Token: "other", Fingerprint: fp, LeaseEnd: now.Add(left), Expires: now.Add(24 * time.Hour)}
	if running > 0 {
		e.Created = now.Add(-running)
	}
	s.mem.Put(key, e)
}

func (s *fakeStore) seedCompleted(key string, rec idem.Record) {
	s.mem.Put(key, memstore.Entry{Fingerprint: rec.Fingerprint, Record: &rec, Expires: s.clock.Now().Add(24 * time.Hour)})
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

// entry is key's live record as the store holds it.
func (s *fakeStore) entry(key string) (storeEntry, bool) {
	e, ok := s.mem.Entry(key)
	return storeEntry{token: e.Token, rec: e.Record, unknown: e.Unknown}, ok
}

func cloneRecord(r idem.Record) idem.Record {
	r.Fingerprint = bytes.Clone(r.Fingerprint)
	r.Headers = append([]idem.Header(nil), r.Headers...)
	r.Body = bytes.Clone(r.Body)
	return r
}
