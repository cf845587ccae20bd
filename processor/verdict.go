package processor

// The decision, apart from everything it sets in motion: a verdict says
// what a request gets (its outcome label and its answer, or that it goes
// upstream), and judge makes the verdict of a look at the key with no I/O,
// so every state the store can report is decided in one table-tested
// place. reply (reply.go) carries a verdict out; decide (decide.go) does
// the I/O around it.

import (
	"bytes"
	"errors"
	"fmt"
	"log/slog"
	"time"

	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"

	"github.com/idemproxy/idemproxy/internal/idem"
)

// verdict is what was decided for one request.
type verdict struct {
	// outcome is the idemproxy_requests_total label, idemproxy.outcome.
	outcome string
	// answer is the immediate response of a replay; refused is a refusal,
	// rendered in the route's error format when replied (errorshape.go).
	// Neither sends the request upstream.
	answer  *extprocv3.ProcessingResponse
	refused *refused
	// fenced sets the fence header on a request sent upstream: the
	// grant's fence, or, with fence 0, none (a client's own is removed).
	// Not fenced: the request's headers are left as they are.
	fenced bool
	fence  int64
	// note is the log line the verdict calls for; its msg is "" for none.
	note note
	// then is what the request path must do before replying: reply at
	// once, take the lock it was granted, or wait.
	then step
	// hint is the Retry-After of an in-progress refusal (retryafter.go).
	hint retryHint
	// via is the record of a replay only the replay endpoint can serve
	// (reroute.go); token, once issued, sends the request there: the one
	// the acquire issued with the record (idem.Claim.Replay), or
	// viaEndpoint's.
	via   *idem.Record
	token string
	// recordKey is the store key via lives under when it is not the
	// request's own (a record of the previous scope, fromLegacy).
	recordKey string
	// replayed is the record of any replay (with answer or via).
	replayed *idem.Record
}

// step is what a verdict asks of the request path before its reply.
type step int

const (
	stepReply step = iota
	stepGrant      // the key is ours: become its owner (decide.go's grant)
	stepWait       // a duplicate that waits for the first request (wait.go)
)

// note is one log line: its level, message and attributes.
type note struct {
	level slog.Level
	msg   string
	attrs []any
}

// logged is v with a log line.
func (v verdict) logged(level slog.Level, msg string, attrs ...any) verdict {
	v.note = note{level: level, msg: msg, attrs: attrs}
	return v
}

// refusal answers with a problem, nothing upstream.
func refusal(outcome string, p problemType, detail, retryAfter string) verdict {
	return verdict{outcome: outcome, refused: &refused{p: p, detail: detail, retryAfter: retryAfter}}
}

// passthrough lets a request that does not take part go upstream; a keyed
// one (a method outside --methods) has its client's fence removed, since
// the backend sees its key.
func passthrough(keyed bool) verdict {
	return verdict{outcome: outcomePassthrough, fenced: keyed}
}

// misconfigured refuses a request the proxy's configuration cannot guard.
func misconfigured(detail string) verdict {
	return refusal(outcomeMisconfigured, probMisconfigured, detail, "")
}

// keyRequired refuses a keyless request on a route that requires a key.
func keyRequired() verdict {
	return refusal(outcomeKeyRequired, probKeyRequired, "This endpoint requires an Idempotency-Key header.", "")
}

// invalidKey refuses a request whose key headers do not parse or agree.
func invalidKey(err error) verdict {
	return refusal(outcomeInvalidKey, probInvalidKey, err.Error(), "").
		logged(slog.LevelInfo, "invalid idempotency key", "reason", err.Error())
}

// headersTooLarge refuses a keyed request with no room left for the fence
// header; why says which of Envoy's limits it would break.
func headersTooLarge(why string) verdict {
	return refusal(outcomeHeadersTooLarge, probHeadersTooLarge, why, "")
}

// identityRequired refuses a keyed request without the verified JWT claim
// its keys are scoped by.
func identityRequired(claim string) verdict {
	return refusal(outcomeIdentityRequired, probIdentityRequired, fmt.Sprintf(
		"Idempotency keys here are scoped by the verified JWT claim %q, and this request has none; it was not run.", claim), "")
}

// storeUnsafe refuses every keyed request while the gate says the store
// could lose what it is given: fail-open or not, nothing runs on its word.
// The gate logs the cause itself, once per change, not once per request.
func storeUnsafe() verdict {
	return refusal(outcomeStoreUnsafe, probStoreUnavail, "The idempotency store is not safe to use; the request was not run. Retry later.", "1")
}

// storeReset refuses a request whose key lives on a Redis primary that
// lost its records: a key it calls free may be one whose completed record
// was lost, so running it could run it twice. No Retry-After: only an
// operator's acknowledgement or the end of the retention ends it. The gate
// logs the reset itself, once.
func storeReset() verdict {
	return refusal(outcomeStoreReset, probStoreReset, "The idempotency store lost its records (Redis restarted without persistence, was flushed, "+
		"or failed over to a replica without the data), so this key's earlier outcome cannot be known; the request was not run. "+
		"Requests with keys stored there are refused until an operator acknowledges the reset or the retention has passed since it.", "")
}

// look is one read or acquire of a key: what the store said, or its error;
// and typical, the route's recent duration of a keyed request (0: none
// known), for the Retry-After of a key in progress.
type look struct {
	acq     idem.Acquisition
	err     error
	typical time.Duration
	// storing is the status of the response to the key's first request,
	// received in full and being stored by this process in the background
	// (pending.go); 0 when it is not.
	storing int
}

// judge decides what a look at the key means for the request that made
// claim, under pol: take the key, wait, or answer with what holds it.
// failOpen is --fail-open, for a failed look.
func judge(l look, claim idem.Claim, pol policy, failOpen bool) verdict {
	switch acq := l.acq; {
	case l.err != nil:
		return storeFailure(l.err, failOpen)
	case acq.State == idem.StateAcquired:
		return verdict{outcome: outcomeAcquired, fenced: true, fence: acq.Fence, then: stepGrant}
	case acq.State == idem.StateInProgress && pol.waits() && bytes.Equal(acq.Fingerprint, claim.Fingerprint):
		return verdict{then: stepWait}
	case l.storing != 0 && bytes.Equal(acq.Fingerprint, claim.Fingerprint):
		// Not "still running", nor an unknown outcome once the lease ran
		// out: the upstream answered; only the store has not taken the
		// response yet (it is retried every second or so).
		return refusal(outcomeConflict, probInProgress, fmt.Sprintf("The first request with this idempotency key has completed "+
			"with status %d, and its response is being stored; it will not run again. Retry later to get it replayed.", l.storing), "1")
	default:
		return existing(acq, claim, l.typical)
	}
}

// existing is the answer a record another request made gives; typical is
// the route's recent duration of a keyed request (0: none known).
func existing(acq idem.Acquisition, claim idem.Claim, typical time.Duration) verdict {
	switch {
	case !bytes.Equal(acq.Fingerprint, claim.Fingerprint):
		return refusal(outcomeMismatch, probMismatch, "This idempotency key was first used with a different method, path or body.", "")
	case acq.State == idem.StateUnknown:
		v := refusal(outcomeUnknown, probOutcomeUnknown, "An earlier request with this idempotency key may have run, but its outcome is unknown; it will not run again. An operator can clear the key.", "")
		if acq.Expired {
			// The first time anyone learns of a crash: its owner never
			// said a word, so this log line is the operator's trace of it.
			v = v.logged(slog.LevelWarn, "outcome unknown: the key's lease ran out without word from its owner (crashed or cut off from Redis); refused, not run",
				"scope", claim.Scope, "held_for", acq.LockTTL.Round(time.Second).String())
		}
		return v
	case acq.State == idem.StateInProgress:
		h := estimateRetry(acq.Running, acq.LockTTL, typical)
		v := refusal(outcomeConflict, probInProgress, "The first request with this idempotency key is still running; retry later.", h.header())
		v.hint = h
		return v
	case acq.Record == nil || !acq.Record.BodyStored:
		return refusal(outcomeNotStored, probNotStored, notStoredDetail(acq.Record), "")
	case acq.Record.Trailers:
		// An immediate response cannot carry trailers: the replay
		// endpoint serves it (reroute.go).
		return verdict{outcome: outcomeReplayed, via: acq.Record, replayed: acq.Record, token: acq.ReplayToken}
	default:
		return verdict{outcome: outcomeReplayed, replayed: acq.Record, token: acq.ReplayToken,
			answer: immediate(acq.Record.Status, replayHeaders(acq.Record), acq.Record.Body, "idemproxy_replayed")}
	}
}

// storeFailure fails closed (503, nothing upstream) unless fail-open is
// set: then the request goes upstream unguarded, without a fence.
func storeFailure(err error, failOpen bool) verdict {
	switch {
	case errors.Is(err, idem.ErrStoreReset):
		// The store answered: it lost its records. Not a failure that
		// --fail-open lets requests through.
		return storeReset().logged(slog.LevelWarn, "request refused: the store-reset marker of its key's slot is missing or notes a reset (the health check decides, or decided, whether the store lost its records)", "error", err)
	case failOpen:
		return verdict{outcome: outcomeFailOpen, fenced: true}.
			logged(slog.LevelWarn, "store failed; request let through unguarded (fail-open)", "error", err)
	case errors.Is(err, idem.ErrUnreplicated):
		return refusal(outcomeStoreError, probStoreUnavail,
			"The idempotency store could not make the key durable on enough replicas; the request was not run. Retry later.", "1").
			logged(slog.LevelWarn, "lock taken, but fewer replicas acknowledged it than --redis-min-replicas asks; request refused (fail-closed)", "error", err)
	default:
		return storeDown().logged(slog.LevelError, "store failed; request refused (fail-closed)", "error", err)
	}
}

// storeDown refuses a request the store could not decide on: 503.
func storeDown() verdict {
	return refusal(outcomeStoreError, probStoreUnavail, "The idempotency store did not answer; the request was not run. Retry later.", "1")
}
