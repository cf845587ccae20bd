package loadgen

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"sync"
	"time"
)

// Holders are long requests, each alone on its own connection, that the
// caller keeps in flight and then lets finish or cuts.
type Holders struct {
	// Ended is when each response had arrived; valid after Wait.
	Ended   []time.Time
	conns   []net.Conn
	results []int // status, or -1 for an error; valid after Wait
	wg      sync.WaitGroup
	once    sync.Once
	stop    func() bool // unregisters the context hook
}

// Hold opens one connection per request and sends them all, each bounded
// by timeout; the end of ctx cuts them.
func Hold(ctx context.Context, addr string, reqs [][]byte, timeout time.Duration) (*Holders, error) {
	h := &Holders{results: make([]int, len(reqs)), Ended: make([]time.Time, len(reqs))}
	h.stop = context.AfterFunc(ctx, h.Cut)
	var d net.Dialer
	for i, req := range reqs {
		dctx, cancel := context.WithTimeout(ctx, RequestTimeout)
		nc, err := d.DialContext(dctx, "tcp", addr)
		cancel()
		if err != nil {
			h.Cut()
			h.wg.Wait()
			return nil, fmt.Errorf("connection %d of %d: %w", i+1, len(reqs), err)
		}
		_ = nc.SetDeadline(time.Now().Add(timeout))
		h.conns = append(h.conns, nc)
		h.wg.Go(func() {
			h.results[i] = -1
			if _, err := nc.Write(req); err != nil {
				return
			}
			if status, _, err := ReadResponse(bufio.NewReaderSize(nc, 4<<10)); err == nil {
				h.results[i], h.Ended[i] = status, time.Now()
			}
		})
	}
	return h, nil
}

// Cut closes every connection: a proxy resets the requests upstream (Envoy,
// and their ext_proc streams).
func (h *Holders) Cut() {
	h.once.Do(func() {
		for _, c := range h.conns {
			_ = c.Close()
		}
	})
}

// Wait waits for every request to end, closes the connections and
// returns the statuses: -1 for a request that got no response.
func (h *Holders) Wait() []int {
	h.wg.Wait()
	h.stop()
	h.Cut()
	return h.results
}

// CountStatuses tallies what Wait returned: statuses, and -1s as errors.
func CountStatuses(results []int) (byStatus map[int]int, errors int) {
	byStatus = map[int]int{}
	for _, s := range results {
		if s < 0 {
			errors++
			continue
		}
		byStatus[s]++
	}
	return byStatus, errors
}
