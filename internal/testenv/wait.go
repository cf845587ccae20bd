package testenv

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"time"
)

// pollEvery is how often the waits here check again.
const pollEvery = 20 * time.Millisecond

// Poll calls check every 20 ms until it returns nil or an error made by
// Permanent, ctx ends or timeout passes; each call gets a context of at
// most a second. The error names check's last error.
func Poll(ctx context.Context, timeout time.Duration, check func(context.Context) error) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	tick := time.NewTicker(pollEvery)
	defer tick.Stop()
	for {
		cctx, ccancel := context.WithTimeout(ctx, time.Second)
		err := check(cctx)
		ccancel()
		var perm permanentError
		if err == nil || errors.As(err, &perm) {
			return err
		}
		select {
		case <-ctx.Done():
			if errors.Is(ctx.Err(), context.DeadlineExceeded) {
				return fmt.Errorf("not ready after %s: %w", timeout, err)
			}
			return ctx.Err()
		case <-tick.C:
		}
	}
}

// Permanent makes check's error end a Poll at once: waiting longer cannot help.
func Permanent(err error) error { return permanentError{err} }

type permanentError struct{ err error }

func (e permanentError) Error() string { return e.err.Error() }
func (e permanentError) Unwrap() error { return e.err }

// WaitReady polls check (see Poll) and gives up early if the child exits;
// a failure carries the child's last lines of output.
func (p *Process) WaitReady(ctx context.Context, timeout time.Duration, check func(context.Context) error) error {
	err := Poll(ctx, timeout, func(ctx context.Context) error {
		if done, werr := p.Exited(); done {
			return Permanent(exitedError{werr})
		}
		return check(ctx)
	})
	var exited exitedError
	switch {
	case err == nil:
		return nil
	case errors.As(err, &exited):
		return p.Failure(fmt.Errorf("exited before it was ready: %v", exited.err))
	case errors.Is(err, context.Canceled):
		return err
	}
	return p.Failure(err)
}

// exitedError ends a Poll because the child is gone.
type exitedError struct{ err error }

func (e exitedError) Error() string { return fmt.Sprintf("exited: %v", e.err) }

// HTTPOK is a readiness check: GET url answers 200.
func HTTPOK(c *http.Client, url string) func(context.Context) error {
	return func(ctx context.Context) error {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		if err != nil {
			return err
		}
		resp, err := c.Do(req)
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("GET %s: %s", url, resp.Status)
		}
		return nil
	}
}

// FindLogAddr returns the addr field of the first JSON log line in logs
// whose msg is msg, or "".
func FindLogAddr(logs, msg string) string {
	for _, line := range splitLines(logs) {
		var rec struct{ Msg, Addr string }
		if json.Unmarshal([]byte(line), &rec) == nil && rec.Msg == msg && rec.Addr != "" {
			return rec.Addr
		}
	}
	return ""
}

// WaitLogAddr waits for the child's JSON log line msg (a server that bound
// port 0 says where it listens) and returns its addr field.
func (p *Process) WaitLogAddr(ctx context.Context, timeout time.Duration, msg string) (string, error) {
	var addr string
	err := p.WaitReady(ctx, timeout, func(context.Context) error {
		if addr = FindLogAddr(p.Output(), msg); addr == "" {
			return fmt.Errorf("no %q log line with an addr", msg)
		}
		return nil
	})
	return addr, err
}

// LogAddr is WaitLogAddr for a test: it waits up to 15 s.
func (p *Process) LogAddr(t TB, msg string) string {
	t.Helper()
	addr, err := p.WaitLogAddr(t.Context(), 15*time.Second, msg)
	if err != nil {
		t.Fatalf("testenv: %v", err)
	}
	return addr
}

// Ready is WaitReady for a test.
func (p *Process) Ready(t TB, timeout time.Duration, check func(context.Context) error) {
	t.Helper()
	if err := p.WaitReady(t.Context(), timeout, check); err != nil {
		t.Fatalf("testenv: %v", err)
	}
}

// WaitFor polls cond every 20 ms until it holds, and fails the test if
// timeout passes first. cond may use require: WaitFor runs on the test
// goroutine, the only one where that is allowed.
func WaitFor(t TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(pollEvery)
	}
}

// Receive waits up to timeout for a value on ch and fails the test if none
// comes: a test's wait on a channel always has a deadline, so a goroutine
// that died without sending fails the test instead of hanging it.
func Receive[T any](t TB, ch <-chan T, timeout time.Duration, what string) T {
	t.Helper()
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	select {
	case v := <-ch:
		return v
	case <-timer.C:
		t.Fatalf("timed out after %v waiting for %s", timeout, what)
		var zero T
		return zero
	}
}
