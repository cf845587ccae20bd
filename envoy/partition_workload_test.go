package envoy

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"math/rand/v2"
	"net/http"
	"sync"
	"time"
)

// partitionAuthority is the host name the clients call the service by.
const partitionAuthority = "payments.partition.test"

// attempt is one request a client sent, as the client saw it: the history
// the checker reads.
type attempt struct {
	key        string
	side       int // 0: i1, 1: i2
	final      bool
	start, end time.Time
	status     int    // -1: no response (a network error or the client's timeout)
	problem    string // the application/problem+json type, if any
	replayed   bool   // Idempotent-Replayed: true
	body       string // the response body, or the error
}

// workload is the clients' side of a scenario: keys, each sent through
// both sides and retried until a final answer or its deadline.
type workload struct {
	keys []string
	// path is what each key's request asks of the backend.
	path string
	// spread: key i starts at i*spread/len(keys); firstSide, if set, sends
	// every key first through that side instead of alternating.
	spread    time.Duration
	firstSide *int
	// deadline bounds each key's clients from their start; pace is a
	// client's wait between retries.
	deadline, pace time.Duration
}

// retryable are the answers a client retries: in progress, unavailable,
// overloaded, timed out, or no answer at all.
func retryable(a attempt) bool {
	switch a.status {
	case -1, http.StatusTooManyRequests, http.StatusBadGateway, http.StatusServiceUnavailable, http.StatusGatewayTimeout:
		return true
	case http.StatusConflict:
		return a.problem == problem+"in-progress"
	}
	return false
}

// run sends every key from two clients, one starting on each side, the
// second a moment after the first (a duplicate in flight); each client
// alternates sides on its retries, as a load balancer would. It returns
// every attempt once every client is done: each stops by its deadline.
func (w workload) run(ctx context.Context, sides [2]*side, c *http.Client, rng *rand.Rand) []attempt {
	var mu sync.Mutex
	var history []attempt
	record := func(a attempt) {
		mu.Lock()
		history = append(history, a)
		mu.Unlock()
	}
	var wg sync.WaitGroup
	t0 := time.Now()
	for i, k := range w.keys {
		first := i % 2
		if w.firstSide != nil {
			first = *w.firstSide
		}
		at := t0.Add(time.Duration(i) * w.spread / time.Duration(len(w.keys)))
		lag := time.Duration(rng.Int64N(int64(150 * time.Millisecond)))
		for n, side := range []int{first, 1 - first} {
			start := at.Add(time.Duration(n) * lag)
			wg.Go(func() { w.client(ctx, sides, c, k, side, start, start.Add(w.deadline), record) })
		}
	}
	wg.Wait()
	return history
}

// client sends key from start on, first through side, until a final
// answer or deadline.
func (w workload) client(ctx context.Context, sides [2]*side, c *http.Client, key string, side int, start, deadline time.Time, record func(attempt)) {
	if !sleepUntil(ctx, start) {
		return
	}
	for n := 0; time.Now().Before(deadline); n++ {
		a := sendAttempt(ctx, c, sides[(side+n)%2].url+w.path, key)
		a.side = (side + n) % 2
		record(a)
		if !retryable(a) || !sleepUntil(ctx, time.Now().Add(w.pace)) {
			return
		}
	}
}

// sleepUntil waits until t (a client's pacing, not a synchronisation) and
// reports false if ctx ended first.
func sleepUntil(ctx context.Context, t time.Time) bool {
	timer := time.NewTimer(time.Until(t))
	defer timer.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-timer.C:
		return true
	}
}

// sendAttempt POSTs url with key and says what came back.
func sendAttempt(ctx context.Context, c *http.Client, url, key string) (a attempt) {
	a = attempt{key: key, start: time.Now(), status: -1}
	defer func() { a.end = time.Now() }()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, nil)
	if err != nil {
		a.body = err.Error()
		return a
	}
	// One name for both sides, as behind a load balancer: the authority is
	// part of a key's scope, so each side's own address would make the
	// same key two keys.
	req.Host = partitionAuthority
	req.Header.Set("Idempotency-Key", key)
	resp, err := c.Do(req)
	if err != nil {
		a.body = err.Error()
		return a
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		a.body = errors.Join(errors.New("reading the body"), err).Error()
		return a
	}
	a.status, a.body, a.replayed = resp.StatusCode, string(b), resp.Header.Get("Idempotent-Replayed") == "true"
	if resp.Header.Get("Content-Type") == "application/problem+json" {
		var p struct{ Type string }
		if json.Unmarshal(b, &p) == nil {
			a.problem = p.Type
		}
	}
	return a
}

// finalLook sends every key once more after everything healed, retrying
// what is retryable for up to settle: a late retry by its client. A key
// whose record a failover lost runs again here; one still held answers
// 409 (outcome-unknown, or in-progress until its lease ends).
func finalLook(ctx context.Context, sides [2]*side, c *http.Client, path string, keys []string, settle time.Duration) []attempt {
	out := make([]attempt, len(keys))
	var wg sync.WaitGroup
	sem := make(chan struct{}, 32) // a bounded burst, not every key at once
	for i, k := range keys {
		wg.Go(func() {
			sem <- struct{}{}
			defer func() { <-sem }()
			deadline := time.Now().Add(settle)
			for n := 0; ; n++ {
				side := (i + n) % 2
				a := sendAttempt(ctx, c, sides[side].url+path, k)
				a.side, a.final = side, true
				out[i] = a
				if !retryable(a) || time.Now().After(deadline) || !sleepUntil(ctx, time.Now().Add(250*time.Millisecond)) {
					return
				}
			}
		})
	}
	wg.Wait()
	return out
}
