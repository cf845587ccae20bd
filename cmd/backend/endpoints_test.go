package main

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// requireCharge checks a successful charge response and returns its body.
func requireCharge(t *testing.T, rec *httptest.ResponseRecorder, amount int64) charge {
	t.Helper()
	require.Equal(t, http.StatusOK, rec.Code, rec.Body.String())
	require.Equal(t, "application/json", rec.Header().Get("Content-Type"))
	require.Equal(t, []string{"validated", "captured"}, rec.Header().Values("X-Charge-Step"))
	require.Equal(t, "session=demo", rec.Header().Get("Set-Cookie"))
	var c charge
	require.NoError(t, json.Unmarshal(rec.Body.Bytes(), &c))
	require.Regexp(t, `^ch_[0-9a-f]{12}$`, c.ID)
	require.Equal(t, amount, c.Amount)
	require.Equal(t, "usd", c.Currency)
	require.Equal(t, "succeeded", c.Status)
	require.InDelta(t, time.Now().UnixNano(), c.Created, float64(time.Minute))
	return c
}

func requireError(t *testing.T, rec *httptest.ResponseRecorder, status int) {
	t.Helper()
	require.Equal(t, status, rec.Code, rec.Body.String())
	require.Equal(t, "application/json", rec.Header().Get("Content-Type"))
	var e errorBody
	require.NoError(t, json.Unmarshal(rec.Body.Bytes(), &e))
	require.NotEmpty(t, e.Error)
}

func TestBackend_Charge(t *testing.T) {
	t.Run("root and charge succeed for any method", func(t *testing.T) {
		_, h := newTestBackend(t, time.Millisecond)
		for _, target := range []string{"/", "/charge"} {
			for _, method := range []string{http.MethodGet, http.MethodPost, http.MethodPut} {
				requireCharge(t, send(t, h, method, target, "", "k"), defaultAmount)
			}
		}
	})

	t.Run("every execution gets a new id", func(t *testing.T) {
		_, h := newTestBackend(t, time.Millisecond)
		first := requireCharge(t, send(t, h, http.MethodPost, "/charge", "", "k"), defaultAmount)
		second := requireCharge(t, send(t, h, http.MethodPost, "/charge", "", "k"), defaultAmount)
		require.NotEqual(t, first.ID, second.ID)
	})

	valid := []struct {
		name, target, body string
		want               int64
	}{
		{"amount from the query", "/charge?amount=1234", "", 1234},
		{"amount from a JSON body", "/charge", `{"amount": 700, "currency": "usd"}`, 700},
		{"query wins over body", "/charge?amount=5", `{"amount":700}`, 5},
		{"default without amount", "/charge", `{"currency":"usd"}`, defaultAmount},
		{"default for a body that is not a JSON object", "/charge", `amount=700`, defaultAmount},
		{"default for a JSON array", "/charge", `[1,2]`, defaultAmount},
	}
	for _, tc := range valid {
		t.Run(tc.name, func(t *testing.T) {
			_, h := newTestBackend(t, time.Millisecond)
			requireCharge(t, send(t, h, http.MethodPost, tc.target, tc.body, ""), tc.want)
		})
	}

	invalid := []struct{ name, target, body string }{
		{"query amount not a number", "/charge?amount=abc", ""},
		{"query amount zero", "/charge?amount=0", ""},
		{"query amount negative", "/charge?amount=-5", ""},
		{"query amount fractional", "/charge?amount=1.5", ""},
		{"query amount empty", "/charge?amount=", ""},
		{"body amount fractional", "/charge", `{"amount":1.5}`},
		{"body amount exponent", "/charge", `{"amount":1e3}`},
		{"body amount a string", "/charge", `{"amount":"100"}`},
		{"body amount null", "/charge", `{"amount":null}`},
		{"body amount negative", "/", `{"amount":-1}`},
	}
	for _, tc := range invalid {
		t.Run("rejects "+tc.name, func(t *testing.T) {
			_, h := newTestBackend(t, time.Millisecond)
			requireError(t, send(t, h, http.MethodPost, tc.target, tc.body, ""), http.StatusBadRequest)
		})
	}
}

func TestBackend_Slow(t *testing.T) {
	t.Run("charges after the delay from the query", func(t *testing.T) {
		_, h := newTestBackend(t, time.Hour)
		requireCharge(t, send(t, h, http.MethodPost, "/slow?delay=10ms&amount=42", "", "k"), 42)
	})

	t.Run("uses the configured delay by default", func(t *testing.T) {
		_, h := newTestBackend(t, time.Millisecond)
		requireCharge(t, send(t, h, http.MethodPost, "/slow", "", "k"), defaultAmount)
	})

	for _, delay := range []string{"abc", "-1s", "11m", "10"} {
		t.Run("rejects delay "+delay, func(t *testing.T) {
			_, h := newTestBackend(t, time.Millisecond)
			requireError(t, send(t, h, http.MethodPost, "/slow?delay="+delay, "", "k"), http.StatusBadRequest)
		})
	}

	t.Run("stops waiting when the client goes, and still counts", func(t *testing.T) {
		b, h := newTestBackend(t, time.Hour)
		ctx, cancel := context.WithCancel(t.Context())
		req := httptest.NewRequestWithContext(ctx, http.MethodPost, "/slow?delay=10m", nil)
		req.Header.Set(headerIdempotencyKey, "gone")
		rec := httptest.NewRecorder()
		done := make(chan struct{})
		go func() {
			defer close(done)
			h.ServeHTTP(rec, req)
		}()

		// Counted as soon as it starts executing, while it still waits.
		require.Eventually(t, func() bool { return b.snapshot().Keys["gone"] == 1 },
			5*time.Second, time.Millisecond)
		cancel()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			t.Fatal("slow handler kept waiting after the request was cancelled")
		}
		requireError(t, rec, http.StatusServiceUnavailable)
		require.Equal(t, stats{Total: 1, Keys: map[string]int{"gone": 1}, StaleFences: map[string]int{}, Fences: map[string]int64{}}, b.snapshot())
	})
}

func TestBackend_Fail(t *testing.T) {
	_, h := newTestBackend(t, time.Millisecond)
	requireError(t, send(t, h, http.MethodPost, "/fail", "", "k"), http.StatusInternalServerError)
	require.Equal(t, 1, getStats(t, h).Keys["k"])
}

func TestBackend_Large(t *testing.T) {
	sizes := []struct {
		name, target string
		want         int
	}{
		{"default size", "/large", defaultLargeBytes},
		{"requested size", "/large?bytes=100000", 100000},
		{"empty body", "/large?bytes=0", 0},
		{"largest size", "/large?bytes=" + strconv.Itoa(maxLargeBytes), maxLargeBytes},
		{"slow body", "/large?bytes=100000&pause=1ms", 100000},
	}
	for _, tc := range sizes {
		t.Run(tc.name, func(t *testing.T) {
			_, h := newTestBackend(t, time.Millisecond)
			rec := send(t, h, http.MethodGet, tc.target, "", "k")
			require.Equal(t, http.StatusOK, rec.Code)
			require.Equal(t, "application/octet-stream", rec.Header().Get("Content-Type"))
			require.Equal(t, strconv.Itoa(tc.want), rec.Header().Get("Content-Length"))
			body := rec.Body.Bytes()
			require.Len(t, body, tc.want)
			for i, c := range body {
				if c != largePattern[i%len(largePattern)] {
					require.FailNow(t, "body deviates from the pattern", "offset %d", i)
				}
			}
			require.Equal(t, 1, getStats(t, h).Keys["k"])
		})
	}

	for _, bytes := range []string{"-1", "abc", strconv.Itoa(maxLargeBytes + 1)} {
		t.Run("rejects bytes="+bytes, func(t *testing.T) {
			_, h := newTestBackend(t, time.Millisecond)
			requireError(t, send(t, h, http.MethodGet, "/large?bytes="+bytes, "", ""), http.StatusBadRequest)
		})
	}
	for _, pause := range []string{"-1s", "soon", "11m"} {
		t.Run("rejects pause="+pause, func(t *testing.T) {
			_, h := newTestBackend(t, time.Millisecond)
			requireError(t, send(t, h, http.MethodGet, "/large?pause="+pause, "", ""), http.StatusBadRequest)
		})
	}
}

func TestBackend_Status(t *testing.T) {
	for _, code := range []int{200, 201, 409, 422, 503, 599} {
		t.Run("answers "+strconv.Itoa(code), func(t *testing.T) {
			_, h := newTestBackend(t, time.Millisecond)
			rec := send(t, h, http.MethodPost, "/status?code="+strconv.Itoa(code), "", "k")
			require.Equal(t, code, rec.Code)
			require.Equal(t, "application/json", rec.Header().Get("Content-Type"))
			var body struct {
				Status int `json:"status"`
			}
			require.NoError(t, json.Unmarshal(rec.Body.Bytes(), &body))
			require.Equal(t, code, body.Status)
			require.Equal(t, 1, getStats(t, h).Keys["k"])
		})
	}

	t.Run("answers 204 without a body", func(t *testing.T) {
		_, h := newTestBackend(t, time.Millisecond)
		rec := send(t, h, http.MethodPost, "/status?code=204", "", "")
		require.Equal(t, http.StatusNoContent, rec.Code)
		require.Empty(t, rec.Body.Bytes())
	})

	for _, code := range []string{"100", "600", "0", "-1", "abc", ""} {
		t.Run("rejects code="+code, func(t *testing.T) {
			_, h := newTestBackend(t, time.Millisecond)
			requireError(t, send(t, h, http.MethodPost, "/status?code="+code, "", "k"), http.StatusBadRequest)
			require.Equal(t, 1, getStats(t, h).Keys["k"])
		})
	}

	t.Run("rejects a missing code", func(t *testing.T) {
		_, h := newTestBackend(t, time.Millisecond)
		requireError(t, send(t, h, http.MethodPost, "/status", "", ""), http.StatusBadRequest)
	})
}

func TestBackend_StatusExactBody(t *testing.T) {
	_, h := newTestBackend(t, time.Millisecond)
	rec := send(t, h, http.MethodPost, "/status?code=201&body=&type=application/json", "", "k")
	require.Equal(t, http.StatusCreated, rec.Code)
	require.Equal(t, "application/json", rec.Header().Get("Content-Type"))
	require.Empty(t, rec.Body.String())
	rec = send(t, h, http.MethodPost, "/status?code=200&body=hello", "", "k2")
	require.Equal(t, "hello", rec.Body.String())
	_, has := rec.Header()["Content-Type"]
	require.False(t, has && rec.Header().Get("Content-Type") != "", "no Content-Type, not even a sniffed one")
}

func TestBackend_Trailers(t *testing.T) {
	_, h := newTestBackend(t, time.Millisecond)
	rec := send(t, h, http.MethodPost, "/trailers", `{"amount":1}`, "k")
	require.Equal(t, http.StatusOK, rec.Code)
	require.Contains(t, rec.Body.String(), `"request_body_bytes":12`)
	require.Equal(t, "sha256:demo", rec.Result().Trailer.Get("X-Charge-Checksum"))
}

func TestBackend_Busy(t *testing.T) {
	t.Run("the first executions of a key answer 429, later ones charge", func(t *testing.T) {
		_, h := newTestBackend(t, time.Hour)
		for range 2 {
			rec := send(t, h, http.MethodPost, "/busy?times=2&delay=1ms", "", "k")
			requireError(t, rec, http.StatusTooManyRequests)
			require.Equal(t, "1", rec.Header().Get("Retry-After"))
		}
		requireCharge(t, send(t, h, http.MethodPost, "/busy?times=2&delay=1ms", "", "k"), defaultAmount)
		requireError(t, send(t, h, http.MethodPost, "/busy?delay=1ms", "", "other"), http.StatusTooManyRequests)
	})
	t.Run("rejects a bad times", func(t *testing.T) {
		_, h := newTestBackend(t, time.Millisecond)
		requireError(t, send(t, h, http.MethodPost, "/busy?times=-1", "", "k"), http.StatusBadRequest)
	})
}

// TestBackend_Hangup: /hangup counts the request, then resets the
// connection without a response.
func TestBackend_Hangup(t *testing.T) {
	_, h := newTestBackend(t, time.Millisecond)
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	req, err := http.NewRequestWithContext(t.Context(), http.MethodPost, srv.URL+"/hangup", strings.NewReader(`{"amount":1}`))
	require.NoError(t, err)
	req.Header.Set(headerIdempotencyKey, "k")
	resp, err := srv.Client().Do(req)
	if err == nil {
		resp.Body.Close()
	}
	require.Error(t, err, "no response at all")
	require.Equal(t, 1, getStats(t, h).Keys["k"], "the request ran before the hangup")
}
