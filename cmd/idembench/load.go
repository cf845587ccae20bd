package main

import (
	"context"
	"sync"
	"sync/atomic"
	"time"
)

// requestTimeout bounds one request of a load run; anything slower is
// counted as an error.
const requestTimeout = 10 * time.Second

// reqGen appends request number seq of connection conn to dst: a complete
// HTTP/1.1 request. It returns nil when that connection has no more to send.
type reqGen func(dst []byte, conn int, seq uint64) []byte

// loadSpec is one load run against one Envoy.
type loadSpec struct {
	addr  string
	conns int
	// rate is the open-loop request rate per second; 0 runs closed loop:
	// every connection sends its next request as soon as the last returns.
	rate float64
	gen  reqGen
	// answered, when set, counts every response as it arrives, so that a
	// sample of the servers' counters can be matched with the requests
	// answered up to that same moment.
	answered *atomic.Int64
}

// window is a run's timeline: load from begin, measured from start to end.
type window struct{ begin, start, end time.Time }

func newWindow(warmup, duration time.Duration) window {
	begin := time.Now()
	return window{begin: begin, start: begin.Add(warmup), end: begin.Add(warmup + duration)}
}

// loadResult is what the clients saw during the measured window.
type loadResult struct {
	lat      latencies
	statuses map[int]int
	errors   int
	firstErr error
	// lag is, in open loop, how late the generator's own timer sent the
	// requests it was waiting for (not counted in their latency); behind is
	// how many requests found every connection busy at their slot (counted
	// from the slot: no coordinated omission).
	lag    latencies
	behind int
}

// completed is how many requests got a response.
func (r loadResult) completed() int { return len(r.lat) }

// worker is one connection's loop; it owns all it records.
type worker struct {
	id       int
	conn     *httpConn
	buf      []byte
	lat, lag []time.Duration
	statuses map[int]int
	errors   int
	firstErr error
	behind   int
}

// runLoad drives spec until win.end and returns what was measured.
func runLoad(ctx context.Context, spec loadSpec, win window) loadResult {
	workers := make([]*worker, spec.conns)
	var next atomic.Int64
	var wg sync.WaitGroup
	for i := range workers {
		w := &worker{id: i, conn: newHTTPConn(spec.addr, requestTimeout), statuses: map[int]int{}}
		workers[i] = w
		wg.Go(func() {
			defer w.conn.close()
			if spec.rate > 0 {
				w.open(ctx, spec, win, &next)
			} else {
				w.closed(ctx, spec, win)
			}
		})
	}
	wg.Wait()
	res := loadResult{statuses: map[int]int{}}
	var lats, lags [][]time.Duration
	for _, w := range workers {
		lats, lags = append(lats, w.lat), append(lags, w.lag)
		for s, n := range w.statuses {
			res.statuses[s] += n
		}
		res.errors += w.errors
		res.behind += w.behind
		if res.firstErr == nil {
			res.firstErr = w.firstErr
		}
	}
	res.lat, res.lag = sortedLatencies(lats...), sortedLatencies(lags...)
	return res
}

// closed sends back to back; a request counts when it completes inside the
// window, so the count over the window's length is the throughput.
func (w *worker) closed(ctx context.Context, spec loadSpec, win window) {
	for seq := uint64(0); ctx.Err() == nil; seq++ {
		start := time.Now()
		if !start.Before(win.end) {
			return
		}
		if w.buf = spec.gen(w.buf[:0], w.id, seq); w.buf == nil {
			return
		}
		status, err := w.conn.roundTrip(w.buf)
		end := time.Now()
		spec.count(err)
		if !end.Before(win.start) && !end.After(win.end) {
			w.record(end.Sub(start), status, err)
		}
		if err != nil {
			pause(ctx, 10*time.Millisecond) // do not spin on a dead listener
		}
	}
}

// open sends request i at begin + i/rate. The connections take slots in
// order; a connection still busy when its slot comes sends late, and the
// latency counts from the slot, so a stall shows in the percentiles instead
// of pausing the clock (no coordinated omission). A connection that was
// idle and waiting counts from when its timer actually fired: Go timers
// wake up to about 1 ms late, and that is the generator, not the system.
func (w *worker) open(ctx context.Context, spec loadSpec, win window, next *atomic.Int64) {
	interval := float64(time.Second) / spec.rate
	for seq := uint64(0); ctx.Err() == nil; seq++ {
		i := next.Add(1) - 1
		slot := win.begin.Add(time.Duration(float64(i) * interval))
		if !slot.Before(win.end) {
			return
		}
		from, waited := slot, false
		if d := time.Until(slot); d > 0 {
			pause(ctx, d)
			from, waited = time.Now(), true
		}
		w.buf = spec.gen(w.buf[:0], w.id, seq)
		status, err := w.conn.roundTrip(w.buf)
		end := time.Now()
		spec.count(err)
		if slot.Before(win.start) {
			continue
		}
		w.record(end.Sub(from), status, err)
		if waited {
			w.lag = append(w.lag, from.Sub(slot))
		} else {
			w.behind++
		}
	}
}

// count notes a response for spec.answered.
func (spec loadSpec) count(err error) {
	if err == nil && spec.answered != nil {
		spec.answered.Add(1)
	}
}

func (w *worker) record(d time.Duration, status int, err error) {
	if err != nil {
		w.errors++
		if w.firstErr == nil {
			w.firstErr = err
		}
		return
	}
	w.lat = append(w.lat, d)
	w.statuses[status]++
}

// pause sleeps d or until ctx ends.
func pause(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}
