package main

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func postForm(h http.Handler, path, form, key string) *httptest.ResponseRecorder {
	req := httptest.NewRequest(http.MethodPost, path, strings.NewReader(form))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set(headerIdempotencyKey, key)
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	return rec
}

func TestBackend_StripeCharges(t *testing.T) {
	b, h := newTestBackend(t, time.Millisecond)
	rec := postForm(h, "/v1/charges", "amount=250&currency=eur&delay=5ms", "k1")
	require.Equal(t, http.StatusOK, rec.Code, rec.Body.String())
	var c stripeCharge
	require.NoError(t, json.Unmarshal(rec.Body.Bytes(), &c))
	require.Equal(t, "charge", c.Object)
	require.Equal(t, int64(250), c.Amount)
	require.Equal(t, "eur", c.Currency)
	require.Regexp(t, `^ch_[0-9a-f]{12}$`, c.ID)
	require.Equal(t, 1, b.executions("k1"))

	rec = postForm(h, "/v1/charges", "amount=abc", "k2")
	require.Equal(t, http.StatusBadRequest, rec.Code)
	var e struct {
		Error struct{ Type, Code, Message string } `json:"error"`
	}
	require.NoError(t, json.Unmarshal(rec.Body.Bytes(), &e))
	require.Equal(t, "invalid_request_error", e.Error.Type)
	require.Equal(t, "parameter_invalid_integer", e.Error.Code)

	require.Equal(t, http.StatusBadRequest, postForm(h, "/v1/charges", "amount=1&delay=soon", "k3").Code)
}
