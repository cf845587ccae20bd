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

// batcher runs Batching for one store.
type batcher struct {
	client  Client
	max     int
	observe func(int)
	queue   chan *call
	stop    chan struct{} // closed by Close: writers drain and end
	wg      sync.WaitGroup
	once    sync.Once
}

// call is one script call waiting for a writer; cmd is valid once done is
// closed.
type call struct {
	ctx    context.Context
	script *redis.Script
	keys   []string
	args   []any
	cmd    *redis.Cmd
	done   chan struct{}
}

func newBatcher(client Client, b Batching) *batcher {
	if b.MaxBatch <= 0 {
		b.MaxBatch = DefaultMaxBatch
	}
	bt := &batcher{client: client, max: b.MaxBatch, observe: b.Observe,
		queue: make(chan *call, b.MaxBatch*b.Writers), stop: make(chan struct{})}
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

// do runs script through a writer. A caller whose ctx ends first gets
// ctx's error; its call may still reach Redis, as any call cut short may.
func (b *batcher) do(ctx context.Context, script *redis.Script, keys []string, args []any) *redis.Cmd {
	c := &call{ctx: ctx, script: script, keys: keys, args: args, done: make(chan struct{})}
	select {
	case <-b.stop:
		return errCmd(ctx, ErrStoreClosed)
	default:
	}
	select {
	case b.queue <- c:
	case <-b.stop:
		return errCmd(ctx, ErrStoreClosed)
	case <-ctx.Done():
		return errCmd(ctx, ctx.Err())
	}
	select {
	case <-c.done:
		return c.cmd
	case <-ctx.Done():
		return errCmd(ctx, ctx.Err())
	}
}

// writer sends batches until Close, then what is still queued.
func (b *batcher) writer() {
	defer b.wg.Done()
	batch := make([]*call, 0, b.max)
	for {
		var first *call
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
			case c := <-b.queue:
				batch = append(batch, c)
			default:
				break more
			}
		}
		b.send(batch)
		clear(batch) // drop the references: callers own their results
	}
}

// send makes one write of batch. Each caller gets its own reply or error;
// a failed write fails the calls it carried, and only those.
func (b *batcher) send(batch []*call) {
	if b.observe != nil {
		b.observe(len(batch))
	}
	if len(batch) == 1 {
		c := batch[0]
		c.cmd = c.script.Run(c.ctx, b.client, c.keys, c.args...)
		close(c.done)
		return
	}
	ctx, cancel := batchContext(batch)
	defer cancel()
	pipe := b.client.Pipeline()
	cmds := make([]*redis.Cmd, len(batch))
	for i, c := range batch {
		cmds[i] = c.script.EvalSha(ctx, pipe, c.keys, c.args...)
	}
	_, _ = pipe.Exec(ctx) // every command carries its own error
	for i, c := range batch {
		if redis.HasErrorPrefix(cmds[i].Err(), "NOSCRIPT") {
			// A script Redis has not loaded (a restart, a failover, a
			// SCRIPT FLUSH): sent again alone, with its body.
			cmds[i] = c.script.Run(c.ctx, b.client, c.keys, c.args...)
		}
		c.cmd = cmds[i]
		close(c.done)
	}
}

// batchContext bounds a shared write by the latest deadline of its calls,
// so no caller is cut short by another's earlier one; it carries the
// first call's values (its trace span). A caller whose own deadline passes
// stops waiting by itself.
func batchContext(batch []*call) (context.Context, context.CancelFunc) {
	var latest time.Time
	for _, c := range batch {
		d, ok := c.ctx.Deadline()
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
