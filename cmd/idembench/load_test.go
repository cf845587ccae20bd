package main

import (
	"net/http"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/idemproxy/idemproxy/internal/loadgen"
)

// keyServer answers 200 and records every idempotency key it sees.
func keyServer(t *testing.T) (*httptest.Server, func() map[string]int) {
	t.Helper()
	var mu sync.Mutex
	keys := map[string]int{}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		keys[r.Header.Get("Idempotency-Key")]++
		mu.Unlock()
	}))
	t.Cleanup(srv.Close)
	return srv, func() map[string]int {
		mu.Lock()
		defer mu.Unlock()
		return keys
	}
}

func TestRunLoad(t *testing.T) {
	t.Run("closed loop: every key is new and every response is counted", func(t *testing.T) {
		srv, keys := keyServer(t)
		var answered atomic.Int64
		res := loadgen.Run(t.Context(), loadgen.Spec{Addr: srv.Listener.Addr().String(), Conns: 4,
			Gen: newKeys("k-"), Answered: &answered}, loadgen.NewWindow(50*time.Millisecond, 200*time.Millisecond))
		require.Zero(t, res.Errors)
		require.Positive(t, res.Completed())
		require.Equal(t, map[int]int{200: res.Completed()}, res.Statuses)
		seen := keys()
		require.EqualValues(t, answered.Load(), len(seen), "one key per request")
		for k, n := range seen {
			require.Equal(t, 1, n, k)
		}
	})

	t.Run("open loop sends one request per slot of the window", func(t *testing.T) {
		srv, _ := keyServer(t)
		// 200/s over 250 ms: slots 20..69 of the run fall in the window.
		res := loadgen.Run(t.Context(), loadgen.Spec{Addr: srv.Listener.Addr().String(), Conns: 4, Rate: 200,
			Gen: noKey()}, loadgen.NewWindow(100*time.Millisecond, 250*time.Millisecond))
		require.Zero(t, res.Errors)
		require.InDelta(t, 50, res.Completed(), 1)
		require.Len(t, res.Lag, res.Completed()-res.Behind)
	})

	t.Run("cycled keys repeat in turn across connections", func(t *testing.T) {
		srv, keys := keyServer(t)
		gen := cycledKeys("r-", 5, 2)
		for seq := range uint64(5) {
			for conn := range 2 {
				c := loadgen.NewConn(srv.Listener.Addr().String(), time.Second)
				_, err := c.RoundTrip(gen(nil, conn, seq))
				c.Close()
				require.NoError(t, err)
			}
		}
		require.Equal(t, map[string]int{"r-0": 2, "r-1": 2, "r-2": 2, "r-3": 2, "r-4": 2}, keys())
	})
}
