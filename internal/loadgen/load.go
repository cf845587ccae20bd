package loadgen

import (
	"context"
	"sync"
	"sync/atomic"
	"time"
)

// RequestTimeout bounds one request of a load run; anything slower is
// counted as an error.
const RequestTimeout = 10 * time.Second

// Gen appends request number seq of connection conn to dst: a complete
// HTTP/1.1 request. It returns nil when that connection has no more to send.
type Gen func(dst []byte, conn int, seq uint64) []byte

// Spec is one load run against one server.
type Spec struct {
	Addr  string
	Conns int
	// Rate is the open-loop request rate per second; 0 runs closed loop:
	// every connection sends its next request as soon as the last returns.
	Rate float64
	Gen  Gen
	// Answered, when set, counts every response as it arrives, so that a
	// sample of the servers' counters can be matched with the requests
	// answered up to that same moment.
	Answered *atomic.Int64
}

// Window is a run's timeline: load from Begin, measured from Start to End.
type Window struct{ Begin, Start, End time.Time }

// NewWindow starts now: warmup, then duration measured.
func NewWindow(warmup, duration time.Duration) Window {
	begin := time.Now()
	return Window{Begin: begin, Start: begin.Add(warmup), End: begin.Add(warmup + duration)}
}

// Counted is a window for runs whose generator ends them (returns nil):
// everything counts, and the deadline, a minute on, is only a bound.
func Counted() Window {
	now := time.Now()
	return Window{Begin: now, Start: now, End: now.Add(time.Minute)}
}

// Result is what the clients saw during the measured Window.
type Result struct {
	Lat      Latencies
	Statuses map[int]int
	Errors   int
	FirstErr error
	// Lag is, in open loop, how late the generator's own timer sent the
	// requests it was waiting for (not counted in their latency); Behind is
	// how many requests found every connection busy at their slot (counted
	// from the slot: no coordinated omission).
	Lag    Latencies
	Behind int
}

// Completed is how many requests got a response.
func (r Result) Completed() int { return len(r.Lat) }

// worker is one connection's loop; it owns all it records.
type worker struct {
	id       int
	conn     *Conn
	buf      []byte
	lat, lag []time.Duration
	statuses map[int]int
	errors   int
	firstErr error
	behind   int
}

// Run drives spec until win.End and returns what was measured.
func Run(ctx context.Context, spec Spec, win Window) Result {
	workers := make([]*worker, spec.Conns)
	var next atomic.Int64
	var wg sync.WaitGroup
	for i := range workers {
		w := &worker{id: i, conn: NewConn(spec.Addr, RequestTimeout), statuses: map[int]int{}}
		workers[i] = w
		wg.Go(func() {
			defer w.conn.Close()
			if spec.Rate > 0 {
				w.open(ctx, spec, win, &next)
			} else {
				w.closed(ctx, spec, win)
			}
		})
	}
	wg.Wait()
	res := Result{Statuses: map[int]int{}}
	var lats, lags [][]time.Duration
	for _, w := range workers {
		lats, lags = append(lats, w.lat), append(lags, w.lag)
		for s, n := range w.statuses {
			res.Statuses[s] += n
		}
		res.Errors += w.errors
		res.Behind += w.behind
		if res.FirstErr == nil {
			res.FirstErr = w.firstErr
		}
	}
	res.Lat, res.Lag = Sorted(lats...), Sorted(lags...)
	return res
}

// closed sends back to back; a request counts when it completes inside the
// Window, so the count over the Window's length is the throughput.
func (w *worker) closed(ctx context.Context, spec Spec, win Window) {
	for seq := uint64(0); ctx.Err() == nil; seq++ {
		start := time.Now()
		if !start.Before(win.End) {
			return
		}
		if w.buf = spec.Gen(w.buf[:0], w.id, seq); w.buf == nil {
			return
		}
		status, err := w.conn.RoundTrip(w.buf)
		end := time.Now()
		spec.count(err)
		if !end.Before(win.Start) && !end.After(win.End) {
			w.record(end.Sub(start), status, err)
		}
		if err != nil {
			Pause(ctx, 10*time.Millisecond) // do not spin on a dead listener
		}
	}
}

// open sends request i at begin + i/rate. The connections take slots in
// order; a connection still busy when its slot comes sends late, and the
// latency counts from the slot, so a stall shows in the percentiles instead
// of pausing the clock (no coordinated omission). A connection that was
// idle and waiting counts from when its timer actually fired: Go timers
// wake up to about 1 ms late, and that is the generator, not the system.
func (w *worker) open(ctx context.Context, spec Spec, win Window, next *atomic.Int64) {
	interval := float64(time.Second) / spec.Rate
	for seq := uint64(0); ctx.Err() == nil; seq++ {
		i := next.Add(1) - 1
		slot := win.Begin.Add(time.Duration(float64(i) * interval))
		if !slot.Before(win.End) {
			return
		}
		from, waited := slot, false
		if d := time.Until(slot); d > 0 {
			Pause(ctx, d)
			from, waited = time.Now(), true
		}
		w.buf = spec.Gen(w.buf[:0], w.id, seq)
		status, err := w.conn.RoundTrip(w.buf)
		end := time.Now()
		spec.count(err)
		if slot.Before(win.Start) {
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

// count notes a response for spec.Answered.
func (spec Spec) count(err error) {
	if err == nil && spec.Answered != nil {
		spec.Answered.Add(1)
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

// Pause sleeps d or until ctx ends.
func Pause(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}
