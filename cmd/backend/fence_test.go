package main

import (
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func TestBackend_fence(t *testing.T) {
	b, h := newTestBackend(t, 0)
	charge := func(key, fence string) int {
		req := httptest.NewRequest(http.MethodPost, "/charge", nil)
		req.Header.Set(headerIdempotencyKey, key)
		if fence != "" {
			req.Header.Set(headerFence, fence)
		}
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		return rec.Code
	}

	t.Run("growing and equal fences run", func(t *testing.T) {
		require.Equal(t, http.StatusOK, charge("a", "1"))
		require.Equal(t, http.StatusOK, charge("a", "2"))
		require.Equal(t, http.StatusOK, charge("a", "2"))
	})
	t.Run("a lower fence is refused and does not count as an execution", func(t *testing.T) {
		require.Equal(t, http.StatusConflict, charge("a", "1"))
		st := b.snapshot()
		require.Equal(t, 3, st.Keys["a"])
		require.Equal(t, 1, st.StaleFences["a"])
		require.EqualValues(t, 2, st.Fences["a"])
	})
	t.Run("fences are per key", func(t *testing.T) {
		require.Equal(t, http.StatusOK, charge("b", "1"))
	})
	t.Run("no fence is not checked", func(t *testing.T) {
		require.Equal(t, http.StatusOK, charge("a", ""))
	})
	t.Run("a malformed fence is a client error", func(t *testing.T) {
		require.Equal(t, http.StatusBadRequest, charge("a", "x"))
		require.Equal(t, http.StatusBadRequest, charge("a", "-3"))
	})
}

func TestBackend_countsFencedKeylessRequests(t *testing.T) {
	_, h := newTestBackend(t, time.Millisecond)
	req := httptest.NewRequest(http.MethodPost, "/charge", nil)
	req.Header.Set(headerFence, "7")
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	require.Equal(t, http.StatusOK, rec.Code)
	require.Equal(t, 1, getStats(t, h).FencedWithoutKey, "a fence a proxy should have removed")
}
