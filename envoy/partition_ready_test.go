package envoy

import (
	"context"
	"fmt"
	"net/http"
	"sync"
	"time"
)

// readiness samples one side's /readyz every 100 ms while a scenario
// runs: the side the nemesis does not cut must stay ready once a replica
// took over the cut primary's slots, whichever node its health check
// happens to ask first (issue 18, item 4).
type readiness struct {
	mu      sync.Mutex
	samples []readySample
	stop    chan struct{}
	done    chan struct{}
}

type readySample struct {
	at time.Time
	ok bool
}

// sampleReadiness starts sampling s until stop.
func sampleReadiness(ctx context.Context, s *side) *readiness {
	r := &readiness{stop: make(chan struct{}), done: make(chan struct{})}
	c := s.host.HTTPClient(500*time.Millisecond, 1)
	go func() {
		defer close(r.done)
		defer c.CloseIdleConnections()
		t := time.NewTicker(100 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-r.stop:
				return
			case <-t.C:
			}
			ok := false
			if resp, err := c.Get("http://" + partitionAdminAddr + "/readyz"); err == nil {
				ok = resp.StatusCode == http.StatusOK
				resp.Body.Close()
			}
			r.mu.Lock()
			r.samples = append(r.samples, readySample{at: time.Now(), ok: ok})
			r.mu.Unlock()
		}
	}()
	return r
}

// end stops sampling and waits for the sampler.
func (r *readiness) end() {
	close(r.stop)
	<-r.done
}

// notReady counts the samples between from and to that were not ready,
// and all samples there.
func (r *readiness) notReady(from, to time.Time) (bad, all int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, s := range r.samples {
		if s.at.Before(from) || s.at.After(to) {
			continue
		}
		all++
		if !s.ok {
			bad++
		}
	}
	return bad, all
}

// figure says it for the figures line: "3/100".
func (r *readiness) figure(from, to time.Time) string {
	bad, all := r.notReady(from, to)
	return fmt.Sprintf("%d/%d", bad, all)
}
