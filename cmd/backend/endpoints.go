package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"strings"
	"time"
)

const (
	defaultAmount     = 5000
	maxChargeBody     = 1 << 20
	maxSlowDelay      = 10 * time.Minute
	defaultLargeBytes = 2 << 20
	maxLargeBytes     = 64 << 20
	// largePattern repeats through /large bodies, so tests can check any byte
	// at offset i against largePattern[i%len(largePattern)].
	largePattern = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ+/"
)

// charge is the body of a successful charge.
type charge struct {
	ID       string `json:"id"`
	Amount   int64  `json:"amount"`
	Currency string `json:"currency"`
	Status   string `json:"status"`
	Created  int64  `json:"created"`
}

// charge handles / and /charge: a charge that succeeds at once.
func (b *backend) charge(w http.ResponseWriter, r *http.Request) {
	amount, err := parseAmount(w, r)
	if err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	writeCharge(w, amount)
}

// slow handles /slow: a charge that takes a while, so tests can send a
// duplicate while the first request is still executing.
func (b *backend) slow(w http.ResponseWriter, r *http.Request) {
	delay, err := b.delay(r)
	if err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	amount, err := parseAmount(w, r)
	if err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	t := time.NewTimer(delay)
	defer t.Stop()
	select {
	case <-t.C:
		writeCharge(w, amount)
	case <-r.Context().Done():
		// The client left or the server is stopping. The request was already
		// counted; a 503 reaches whoever is still listening.
		b.log.LogAttrs(r.Context(), slog.LevelDebug, "slow charge abandoned",
			slog.String("cause", context.Cause(r.Context()).Error()))
		writeError(w, http.StatusServiceUnavailable, "charge abandoned: request cancelled")
	}
}

// busy handles /busy?times=N&delay=D[&code=C]: after the delay, the first N
// executions of a key answer 429 Too Many Requests, or C (a status the proxy
// does not store: the key is given back; or, with 503, one Envoy retries
// under Istio's old default policy), later ones charge. Tests use it to
// see what happens to requests waiting on a key that is given back.
func (b *backend) busy(w http.ResponseWriter, r *http.Request) {
	times, err := queryInt(r, "times", 1, 0, 1000)
	if err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	delay, err := b.delay(r)
	if err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	t := time.NewTimer(delay)
	defer t.Stop()
	select {
	case <-t.C:
	case <-r.Context().Done():
		writeError(w, http.StatusServiceUnavailable, "charge abandoned: request cancelled")
		return
	}
	code, err := queryInt(r, "code", http.StatusTooManyRequests, 400, 599)
	if err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	// This execution is already counted.
	if b.executions(idempotencyKey(r.Header)) <= int(times) {
		w.Header().Set("Retry-After", "1")
		writeError(w, int(code), "busy: try again")
		return
	}
	writeCharge(w, defaultAmount)
}

// fail handles /fail: the upstream failure the proxy must not cache as success.
func (b *backend) fail(w http.ResponseWriter, _ *http.Request) {
	writeError(w, http.StatusInternalServerError, "simulated payment failure")
}

// large handles /large?bytes=N[&pause=D]: a body big enough to exercise
// streaming and size limits in the proxy. With pause, each 32 KiB chunk is
// flushed and followed by that wait: a body slow enough for a client to
// hang up in the middle of it.
func (b *backend) large(w http.ResponseWriter, r *http.Request) {
	n, err := queryInt(r, "bytes", defaultLargeBytes, 0, maxLargeBytes)
	var pause time.Duration
	if err == nil && r.URL.Query().Has("pause") {
		pause, err = time.ParseDuration(r.URL.Query().Get("pause"))
		if err == nil && (pause < 0 || pause > maxSlowDelay) {
			err = fmt.Errorf("pause must be a duration between 0s and %s, got %q", maxSlowDelay, r.URL.Query().Get("pause"))
		}
	}
	if err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	w.Header().Set("Content-Type", "application/octet-stream")
	w.Header().Set("Content-Length", strconv.FormatInt(n, 10))
	w.WriteHeader(http.StatusOK)
	// The chunk holds whole patterns, so every chunk starts in phase.
	chunk := []byte(strings.Repeat(largePattern, 512))
	for n > 0 {
		c := chunk[:min(n, int64(len(chunk)))]
		if _, err := w.Write(c); err != nil {
			return // client gone
		}
		n -= int64(len(c))
		if pause > 0 {
			if f, ok := w.(http.Flusher); ok {
				f.Flush()
			}
			select {
			case <-r.Context().Done():
				return
			case <-time.After(pause):
			}
		}
	}
}

// trailers handles /trailers: a charge whose response ends with a trailer
// (X-Charge-Checksum), to show what the proxy does with trailers. The body
// says how many trailers the request itself carried.
func (b *backend) trailers(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(r.Body)
	if err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	w.Header().Set("Trailer", "X-Charge-Checksum")
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusOK)
	fmt.Fprintf(w, `{"id":%q,"request_body_bytes":%d,"request_trailers":%d}`, newChargeID(), len(body), len(r.Trailer))
	w.Header().Set("X-Charge-Checksum", "sha256:demo")
}

// hangup handles /hangup: the request runs (it was counted, its body read)
// and the connection is then reset with no answer at all: an upstream that
// acted on a request and died before it could respond. Tests use it to
// check that nothing retries what may have run.
func (b *backend) hangup(w http.ResponseWriter, r *http.Request) {
	_, _ = io.Copy(io.Discard, r.Body)
	conn, _, err := http.NewResponseController(w).Hijack()
	if err != nil {
		writeError(w, http.StatusInternalServerError, "hangup: "+err.Error())
		return
	}
	if tc, ok := conn.(*net.TCPConn); ok {
		_ = tc.SetLinger(0) // a reset, not an orderly close
	}
	_ = conn.Close()
}

// status handles /status?code=N[&body=B[&type=T]]: any status the proxy must
// decide whether to cache; with body, exactly that body and Content-Type T
// (none without type), plus a Location header.
func (b *backend) status(w http.ResponseWriter, r *http.Request) {
	code, err := queryInt(r, "code", -1, 101, 599)
	if err == nil && code < 0 {
		err = errors.New("query parameter code is required")
	}
	if err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	status := int(code)
	if q := r.URL.Query(); q.Has("body") {
		// An exact response for replay checks: this body, and this
		// Content-Type or none at all (net/http would otherwise sniff one).
		if q.Has("type") {
			w.Header().Set("Content-Type", q.Get("type"))
		} else {
			w.Header()["Content-Type"] = nil
		}
		w.Header().Set("Location", "/orders/1")
		w.WriteHeader(status)
		_, _ = io.WriteString(w, q.Get("body"))
		return
	}
	if !bodyAllowed(status) {
		w.WriteHeader(status)
		return
	}
	writeJSON(w, status, struct {
		Status int    `json:"status"`
		Text   string `json:"text"`
	}{status, http.StatusText(status)})
}

// bodyAllowed mirrors net/http: 1xx, 204 and 304 responses carry no body.
func bodyAllowed(status int) bool {
	return status >= 200 && status != http.StatusNoContent && status != http.StatusNotModified
}

func writeCharge(w http.ResponseWriter, amount int64) {
	h := w.Header()
	// Two lines of one header, in order: the proxy must replay both, in order.
	h.Add("X-Charge-Step", "validated")
	h.Add("X-Charge-Step", "captured")
	// A per-client header the proxy must not replay to another client.
	h.Set("Set-Cookie", "session=demo")
	writeJSON(w, http.StatusOK, charge{
		ID:       newChargeID(),
		Amount:   amount,
		Currency: "usd",
		Status:   "succeeded",
		Created:  time.Now().UnixNano(),
	})
}

// newChargeID returns a fresh id, so a replayed response is recognisable: it
// repeats the id of the first execution instead of minting a new one.
func newChargeID() string {
	var b [6]byte
	_, _ = rand.Read(b[:]) // crypto/rand.Read never fails since Go 1.24
	return "ch_" + hex.EncodeToString(b[:])
}

// delay is the /slow wait: the query's delay, else the configured default.
func (b *backend) delay(r *http.Request) (time.Duration, error) {
	q := r.URL.Query()
	if !q.Has("delay") {
		return b.slowDelay, nil
	}
	d, err := time.ParseDuration(q.Get("delay"))
	if err != nil || d < 0 || d > maxSlowDelay {
		return 0, fmt.Errorf("delay must be a duration between 0s and %s, got %q", maxSlowDelay, q.Get("delay"))
	}
	return d, nil
}

// parseAmount takes the amount from the query, else from a JSON object body,
// else the default. Bodies that are not JSON objects are fine (demo clients
// send empty or form bodies), but an amount that is given must be valid.
func parseAmount(w http.ResponseWriter, r *http.Request) (int64, error) {
	if q := r.URL.Query(); q.Has("amount") {
		return validAmount(q.Get("amount"))
	}
	if r.Body == nil {
		return defaultAmount, nil
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxChargeBody))
	if err != nil {
		return 0, fmt.Errorf("read body: %w", err)
	}
	var fields map[string]json.RawMessage
	if err := json.Unmarshal(body, &fields); err != nil {
		return defaultAmount, nil
	}
	raw, ok := fields["amount"]
	if !ok {
		return defaultAmount, nil
	}
	// raw is valid JSON, so it parses as an integer only if it is an integer
	// literal: strings, floats and exponents are rejected.
	return validAmount(string(bytes.TrimSpace(raw)))
}

func validAmount(s string) (int64, error) {
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil || n <= 0 {
		return 0, fmt.Errorf("amount must be a positive integer in cents, got %q", s)
	}
	return n, nil
}

// queryInt parses an optional integer query parameter within [lo, hi].
func queryInt(r *http.Request, name string, def, lo, hi int64) (int64, error) {
	q := r.URL.Query()
	if !q.Has(name) {
		return def, nil
	}
	n, err := strconv.ParseInt(q.Get(name), 10, 64)
	if err != nil || n < lo || n > hi {
		return 0, fmt.Errorf("%s must be an integer between %d and %d, got %q", name, lo, hi, q.Get(name))
	}
	return n, nil
}
