package redisstore

import (
	"context"
	"errors"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
)

// Batching makes concurrent script calls share Redis writes: a call made
// while every writer is busy waits for the next free one, which sends it
// together with every other call queued by then, as one pipeline (on a
// cluster, go-redis splits a pipeline by node). A call that finds a writer
// free is sent at once, alone: batching never adds latency at low load, and
// at saturation it turns many small writes and reads into a few larger
// ones, which costs Redis and idemproxy less CPU per call.
type Batching struct {
	// Writers is how many writes may be in flight at once. 0: no batching,
	// every call is its own write.
	Writers int
	// MaxBatch bounds the calls of one write. Default DefaultMaxBatch.
	MaxBatch int
	// Observe, when set, is told the number of calls of every write.
	Observe func(calls int)
}

// DefaultMaxBatch is Batching.MaxBatch when it is not set.
const DefaultMaxBatch = 64

// ErrStoreClosed is returned for a call made after the store's batching
// was stopped.
var ErrStoreClosed = errors.New("redisstore: closed")

// batcher runs Batching for one node: the store's client, or one cluster
// primary. It only sends: what Redis answers instead of running a call
// (NOSCRIPT, a redirect) is for exec to handle, alone.
type batcher struct {
	node    Client
	max     int
	observe func(int)
	queue   chan *pending
	stop    chan struct{} // closed by Close: writers drain and end
	wg      sync.WaitGroup
	once    sync.Once
}

// pending is one call waiting for a writer; cmd is valid once done is
// closed.
type pending struct {
	ctx context.Context
	call
	cmd  *redis.Cmd
	done chan struct{}
}

func newBatcher(n Client, b Batching) *batcher {
	if b.MaxBatch <= 0 {
		b.MaxBatch = DefaultMaxBatch
	}
	bt := &batcher{node: n, max: b.MaxBatch, observe: b.Observe,
		queue: make(chan *pending, b.MaxBatch*b.Writers), stop: make(chan struct{})}
	for range b.Writers {
		bt.wg.Add(1)
		go bt.writer()
	}
	return bt
}

// errCmd is a Cmd that failed before it was sent.
func errCmd(ctx context.Context, err error) *redis.Cmd {
	cmd := redis.NewCmd(ctx)
	cmd.SetErr(err)
	return cmd
}

// do sends c through a writer. A caller whose ctx ends first gets ctx's
// error; its call may still reach Redis, as any call cut short may.
func (b *batcher) do(ctx context.Context, c call) *redis.Cmd {
	p := &pending{ctx: ctx, call: c, done: make(chan struct{})}
	select {
	case <-b.stop:
		return errCmd(ctx, ErrStoreClosed)
	default:
	}
	select {
	case b.queue <- p:
	case <-b.stop:
		return errCmd(ctx, ErrStoreClosed)
	case <-ctx.Done():
		return errCmd(ctx, ctx.Err())
	}
	select {
	case <-p.done:
		return p.cmd
	case <-ctx.Done():
		return errCmd(ctx, ctx.Err())
	}
}

// writer sends batches until Close, then what is still queued.
func (b *batcher) writer() {
	defer b.wg.Done()
	batch := make([]*pending, 0, b.max)
	for {
		var first *pending
		select {
		case first = <-b.queue:
		case <-b.stop:
			// Calls already queued still go out: their callers wait.
			select {
			case first = <-b.queue:
			default:
				return
			}
		}
		batch = append(batch[:0], first)
	more:
		for len(batch) < b.max {
			select {
			case p := <-b.queue:
				batch = append(batch, p)
			default:
				break more
			}
		}
		b.send(batch)
		clear(batch) // drop the references: callers own their results
	}
}

// send makes one write of batch, EVALSHA each. Each caller gets its own
// reply or error; a failed write fails the calls it carried, and only
// those.
func (b *batcher) send(batch []*pending) {
	if b.observe != nil {
		b.observe(len(batch))
	}
	if len(batch) == 1 {
		p := batch[0]
		p.cmd = p.script.EvalSha(p.ctx, b.node, p.keys, p.args...)
		close(p.done)
		return
	}
	ctx, cancel := batchContext(batch)
	defer cancel()
	pipe := b.node.Pipeline()
	for _, p := range batch {
		p.cmd = p.script.EvalSha(ctx, pipe, p.keys, p.args...)
	}
	_, _ = pipe.Exec(ctx) // every command carries its own error
	for _, p := range batch {
		close(p.done)
	}
}

// batchContext bounds a shared write by the latest deadline of its calls,
// so no caller is cut short by another's earlier one; it carries the
// first call's values (its trace span). A caller whose own deadline passes
// stops waiting by itself.
func batchContext(batch []*pending) (context.Context, context.CancelFunc) {
	var latest time.Time
	for _, p := range batch {
		d, ok := p.ctx.Deadline()
		if !ok {
			return context.WithCancel(context.WithoutCancel(batch[0].ctx))
		}
		if d.After(latest) {
			latest = d
		}
	}
	return context.WithDeadline(context.WithoutCancel(batch[0].ctx), latest)
}

// Close stops the writers once the calls already queued are sent; later
// calls fail with ErrStoreClosed.
func (b *batcher) Close() {
	b.once.Do(func() { close(b.stop) })
	b.wg.Wait()
}
