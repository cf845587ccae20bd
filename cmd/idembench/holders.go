package main

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"sync"
	"time"

	"github.com/idemproxy/idemproxy/internal/testenv"
)

// holders are long requests, each alone on its own connection, that the
// benchmark keeps in flight and then lets finish or cuts.
type holders struct {
	conns   []net.Conn
	results []int       // status, or -1 for an error; valid after wait
	ended   []time.Time // when each response had arrived; valid after wait
	wg      sync.WaitGroup
	once    sync.Once
	stop    func() bool // unregisters the context hook
}

// startHolders opens one connection per request and sends them all.
func startHolders(ctx context.Context, addr string, reqs [][]byte, timeout time.Duration) (*holders, error) {
	h := &holders{results: make([]int, len(reqs)), ended: make([]time.Time, len(reqs))}
	h.stop = context.AfterFunc(ctx, h.cut)
	var d net.Dialer
	for i, req := range reqs {
		dctx, cancel := context.WithTimeout(ctx, requestTimeout)
		nc, err := d.DialContext(dctx, "tcp", addr)
		cancel()
		if err != nil {
			h.cut()
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
			if status, _, err := readResponse(bufio.NewReaderSize(nc, 4<<10)); err == nil {
				h.results[i], h.ended[i] = status, time.Now()
			}
		})
	}
	return h, nil
}

// cut closes every connection: Envoy resets the requests upstream and
// their ext_proc streams.
func (h *holders) cut() {
	h.once.Do(func() {
		for _, c := range h.conns {
			_ = c.Close()
		}
	})
}

// wait waits for every request to end, closes the connections and
// returns the statuses.
func (h *holders) wait() []int {
	h.wg.Wait()
	h.stop()
	h.cut()
	return h.results
}

// countStatuses tallies holder results: statuses, and -1s as errors.
func countStatuses(results []int) (byStatus map[int]int, errors int) {
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

// waitMetric polls an idemproxy series until cond holds or timeout.
func (b *bench) waitMetric(ctx context.Context, admin, series string, timeout time.Duration, cond func(float64) bool) error {
	return testenv.Poll(ctx, timeout, func(ctx context.Context) error {
		v, err := testenv.ReadMetric(ctx, b.st.http, "http://"+admin+"/metrics", series)
		if err == nil && !cond(v) {
			err = fmt.Errorf("%s is %v", series, v)
		}
		return err
	})
}

// hold sends reqs through env, each on a connection of its own, and waits
// until idem has acquired them all (within ready).
func (b *bench) hold(ctx context.Context, env, idem *server, reqs [][]byte, timeout, ready time.Duration) (*holders, error) {
	start, err := testenv.ReadMetric(ctx, b.st.http, "http://"+idem.admin+"/metrics", acquiredSeries)
	if err != nil {
		return nil, err
	}
	h, err := startHolders(ctx, env.addr, reqs, timeout)
	if err != nil {
		return nil, err
	}
	if err := b.waitMetric(ctx, idem.admin, acquiredSeries, ready,
		func(v float64) bool { return v >= start+float64(len(reqs)) }); err != nil {
		h.cut()
		h.wait()
		return nil, err
	}
	return h, nil
}
