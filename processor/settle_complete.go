package processor

// Storing the response: the settling write of a key whose upstream
// answered, what its result means, and the hand-off of one the store did
// not take within --finalize-timeout to the background (pending.go).

import (
	"bytes"
	"context"
	"errors"
	"time"

	"github.com/idemproxy/idemproxy/internal/idem"
)

// complete stores the response for the retention period.
func (e *exchange) complete(inBand bool) {
	e.resp.collecting = false
	e.sampleDuration()
	if e.resp.rec.BodyStored {
		e.resp.rec.Body = e.resp.body.Bytes()
	}
	rec := e.resp.rec
	e.settle(write{op: "complete", untilReplicated: true,
		call: func(ctx context.Context) error {
			return e.srv.store.Complete(ctx, e.req.key, e.lock.token, rec, e.pol.retention)
		},
		done: func(err error, retried bool) {
			e.completed(rec, err, retried)
			e.resp.body.Reset()
		},
		keep: e.keeper(rec),
	}, inBand)
}

// keeper is the keep of rec's completion: nil when completions are not
// kept (FinalizeUntilLease off, or no room at all).
func (e *exchange) keeper(rec idem.Record) func(error) bool {
	cfg := e.srv.cfg
	if !cfg.FinalizeUntilLease || cfg.MaxPendingCompletions == 0 {
		return nil
	}
	return func(error) bool {
		// The exchange ends with the stream: p owns a copy of the body.
		rec.Body = bytes.Clone(rec.Body)
		p := &pending{key: e.req.key, token: e.lock.token, rec: rec, retention: e.pol.retention, lease: e.pol.lease(),
			leaseEnd: e.lock.leaseEnd, received: e.lock.settling, log: e.logger(), afterLease: e.afterLease()}
		if !e.srv.keep(p) {
			return false
		}
		e.settledAs(resultStorePending)
		e.resp.body.Reset()
		return true
	}
}

// completed counts and logs the result of storing rec.
func (e *exchange) completed(rec idem.Record, err error, retried bool) {
	m := e.srv.metrics
	switch {
	case errors.Is(err, idem.ErrLeaseLost) && retried:
		// Not our own earlier attempt: the store answers a repeated
		// completion by its owner with success (it keeps a digest of the
		// token), so the record is someone else's.
		e.settledAs(resultLeaseLost)
		m.leaseLost.WithLabelValues(stageDone).Inc()
		e.logger().Warn("response delivered, but when an attempt to store it got through, after "+e.triedFor()+", the key was no longer ours "+
			"(an operator deleted it, or its lease ended and another request took it over); nothing written", "status", rec.Status)
	case errors.Is(err, idem.ErrLeaseLost):
		e.settledAs(resultLeaseLost)
		m.leaseLost.WithLabelValues(stageDone).Inc()
		e.logger().Warn("lease lost before the response was stored; not overwriting the key's new owner", "status", rec.Status)
	case errors.Is(err, idem.ErrUnreplicated):
		// Written on the primary, and written again on each new one, but
		// never confirmed by the replicas --redis-min-replicas asks for
		// until the lease ended (the response went out long ago: holding
		// it would only turn it into Envoy's 504). A failover before they
		// catch up loses it.
		m.unreplicated.WithLabelValues("complete").Inc()
		m.responses.WithLabelValues(storedResult(rec)).Inc()
		e.logger().Warn("response stored and delivered, but the replicas --redis-min-replicas asks for did not confirm it, tried for "+e.triedFor()+"; "+
			"a failover before they catch up loses it, and the key then reads as an unknown outcome", "error", err, "status", rec.Status)
	case err != nil:
		e.settledAs(resultStoreError)
		e.logger().Error("response delivered, but storing it failed, tried for "+e.triedFor()+"; nothing more will be written: once its lease ends, "+e.afterLease(),
			"error", err, "status", rec.Status, "lease_ends", e.lock.leaseEnd.UTC().Format(time.RFC3339))
	case rec.BodyStored:
		e.settledAs(resultStored)
	case rec.Incomplete:
		e.settledAs(resultStoredIncomplete)
		// Envoy sends no end for a body cut off, nor for one that ended
		// with trailers under response_trailer_mode SKIP (no override).
		e.logger().Info("response stored without its body: its end never reached idemproxy (the body broke off, or it ended with trailers "+
			"that Envoy's ext_proc filter does not send: response_trailer_mode SKIP)", "status", rec.Status)
	case rec.Trailers:
		m.responses.WithLabelValues(resultStoredTrailers).Inc()
		e.logger().Info("response stored without its body: it ended with trailers, which cannot be replayed", "status", rec.Status)
	default:
		e.settledAs(resultStoredNoBody)
		e.logger().Info("response stored without its body (over the cap)", "status", rec.Status, "cap", e.srv.cfg.MaxStoredBody)
	}
}

// storedResult is the responses_total result of a stored rec.
func storedResult(rec idem.Record) string {
	switch {
	case rec.BodyStored:
		return resultStored
	case rec.Incomplete:
		return resultStoredIncomplete
	}
	return resultStoredNoBody
}
