package main

import (
	"log/slog"
	"net/http"
	"time"
)

// stripeCharge is the object Stripe's POST /v1/charges returns, as much
// of it as its SDKs need to decode one.
type stripeCharge struct {
	ID       string `json:"id"`
	Object   string `json:"object"`
	Amount   int64  `json:"amount"`
	Currency string `json:"currency"`
	Status   string `json:"status"`
	Created  int64  `json:"created"`
}

// stripeCharges handles POST /v1/charges the way Stripe's SDKs send it: a
// form body (amount, currency), answered with a charge object or Stripe's
// {"error":{...}} envelope, so a real SDK can be pointed at the proxy.
// Two extra form fields drive tests: delay (a duration, the charge takes
// that long) and hangup=true (the charge runs, then the connection is
// reset with no answer, an unknown outcome for the proxy).
func (b *backend) stripeCharges(w http.ResponseWriter, r *http.Request) {
	r.Body = http.MaxBytesReader(w, r.Body, maxChargeBody)
	if err := r.ParseForm(); err != nil {
		writeStripeError(w, http.StatusBadRequest, "invalid_request_error", "parameter_invalid", err.Error())
		return
	}
	amount, err := validAmount(r.PostForm.Get("amount"))
	if err != nil {
		writeStripeError(w, http.StatusBadRequest, "invalid_request_error", "parameter_invalid_integer", "amount: "+err.Error())
		return
	}
	var delay time.Duration
	if v := r.PostForm.Get("delay"); v != "" {
		if delay, err = time.ParseDuration(v); err != nil || delay < 0 || delay > maxSlowDelay {
			writeStripeError(w, http.StatusBadRequest, "invalid_request_error", "parameter_invalid", "delay must be a duration up to "+maxSlowDelay.String())
			return
		}
	}
	t := time.NewTimer(delay)
	defer t.Stop()
	select {
	case <-t.C:
	case <-r.Context().Done():
		b.log.LogAttrs(r.Context(), slog.LevelDebug, "stripe charge abandoned", slog.String("error", r.Context().Err().Error()))
		return
	}
	if r.PostForm.Get("hangup") == "true" {
		b.hangup(w, r)
		return
	}
	currency := r.PostForm.Get("currency")
	if currency == "" {
		currency = "usd"
	}
	writeJSON(w, http.StatusOK, stripeCharge{ID: newChargeID(), Object: "charge", Amount: amount, Currency: currency,
		Status: "succeeded", Created: time.Now().Unix()})
}

// writeStripeError answers in Stripe's error envelope.
func writeStripeError(w http.ResponseWriter, status int, typ, code, msg string) {
	type stripeError struct {
		Type    string `json:"type"`
		Code    string `json:"code"`
		Message string `json:"message"`
	}
	writeJSON(w, status, struct {
		Error stripeError `json:"error"`
	}{stripeError{typ, code, msg}})
}
