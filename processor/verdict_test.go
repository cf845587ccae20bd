package processor

import (
	"errors"
	"fmt"
	"log/slog"
	"testing"
	"time"

	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"github.com/stretchr/testify/require"

	"github.com/idemproxy/idemproxy/internal/idem"
)

// judgeCase is one state a look at the key can report, and what it means.
type judgeCase struct {
	name     string
	look     look
	pol      policy
	failOpen bool
	outcome  string
	then     step
	status   int  // of the immediate answer; 0: the request goes upstream (or the step decides)
	fenced   bool // a request sent upstream gets the fence header handled
	fence    int64
	level    slog.Level // of the log line, when logs
	logs     bool
}

// judgeCases lists every state a look at the key can report.
func judgeCases() []judgeCase {
	fp, other := []byte("fp"), []byte("other")
	conflict := policy{}
	waits := policy{inProgress: InProgressWait}
	shadowWaits := policy{inProgress: InProgressWait, mode: ModeShadow}
	stored := &idem.Record{Fingerprint: fp, Status: 201, BodyStored: true, Body: []byte("ok")}
	storeErr := errors.New("redis: i/o timeout")
	unreplicated := fmt.Errorf("acquire: %w", idem.ErrUnreplicated)
	return []judgeCase{
		{"acquired: the request is granted its key", look{acq: idem.Acquisition{State: idem.StateAcquired, Fence: 7}}, conflict, false,
			outcomeAcquired, stepGrant, 0, true, 7, 0, false},
		{"in progress, same request: 409 with retry-after", look{acq: idem.Acquisition{State: idem.StateInProgress, Fingerprint: fp, LockTTL: 2500 * time.Millisecond}}, conflict, false,
			outcomeConflict, stepReply, 409, false, 0, 0, false},
		{"in progress, same request, --in-progress=wait: wait", look{acq: idem.Acquisition{State: idem.StateInProgress, Fingerprint: fp}}, waits, false,
			"", stepWait, 0, false, 0, 0, false},
		{"in progress, waiting, after the wait: 409", look{acq: idem.Acquisition{State: idem.StateInProgress, Fingerprint: fp}}, waits.noWait(), false,
			outcomeConflict, stepReply, 409, false, 0, 0, false},
		{"in progress, waiting, in shadow: never held", look{acq: idem.Acquisition{State: idem.StateInProgress, Fingerprint: fp}}, shadowWaits, false,
			outcomeConflict, stepReply, 409, false, 0, 0, false},
		{"in progress, another request: mismatch, not a wait", look{acq: idem.Acquisition{State: idem.StateInProgress, Fingerprint: other}}, waits, false,
			outcomeMismatch, stepReply, 422, false, 0, 0, false},
		{"completed: the replay", look{acq: idem.Acquisition{State: idem.StateCompleted, Fingerprint: fp, Record: stored}}, conflict, false,
			outcomeReplayed, stepReply, 201, false, 0, 0, false},
		{"completed by another request: mismatch", look{acq: idem.Acquisition{State: idem.StateCompleted, Fingerprint: other, Record: stored}}, conflict, false,
			outcomeMismatch, stepReply, 422, false, 0, 0, false},
		{"completed without its body: response not stored", look{acq: idem.Acquisition{State: idem.StateCompleted, Fingerprint: fp,
			Record: &idem.Record{Status: 200, Incomplete: true}}}, conflict, false,
			outcomeNotStored, stepReply, 409, false, 0, 0, false},
		{"completed, no record: response not stored", look{acq: idem.Acquisition{State: idem.StateCompleted, Fingerprint: fp}}, conflict, false,
			outcomeNotStored, stepReply, 409, false, 0, 0, false},
		{"unknown outcome, marked: 409, no log", look{acq: idem.Acquisition{State: idem.StateUnknown, Fingerprint: fp}}, conflict, false,
			outcomeUnknown, stepReply, 409, false, 0, 0, false},
		{"unknown outcome, lease ran out: 409 and the crash's trace", look{acq: idem.Acquisition{State: idem.StateUnknown, Fingerprint: fp, Expired: true, LockTTL: time.Minute}}, conflict, false,
			outcomeUnknown, stepReply, 409, false, 0, slog.LevelWarn, true},
		{"unknown outcome of another request: mismatch", look{acq: idem.Acquisition{State: idem.StateUnknown, Fingerprint: other}}, conflict, false,
			outcomeMismatch, stepReply, 422, false, 0, 0, false},
		{"store error: 503, fail-closed", look{err: storeErr}, conflict, false,
			outcomeStoreError, stepReply, 503, false, 0, slog.LevelError, true},
		{"too few replicas: 503", look{err: unreplicated}, conflict, false,
			outcomeStoreError, stepReply, 503, false, 0, slog.LevelWarn, true},
		{"store error, fail-open: upstream without a fence", look{err: storeErr}, conflict, true,
			outcomeFailOpen, stepReply, 0, true, 0, slog.LevelWarn, true},
		{"a store error wins over what the look says", look{acq: idem.Acquisition{State: idem.StateAcquired, Fence: 3}, err: storeErr}, conflict, false,
			outcomeStoreError, stepReply, 503, false, 0, slog.LevelError, true},
	}
}

// TestJudge decides every state a look at the key can report, with no
// store and no stream.
func TestJudge(t *testing.T) {
	fp := []byte("fp")
	claim := idem.Claim{Token: "t", Fingerprint: fp, Scope: "example.com"}
	for _, tc := range judgeCases() {
		t.Run(tc.name, func(t *testing.T) {
			v := judge(tc.look, claim, tc.pol, tc.failOpen)
			require.Equal(t, tc.outcome, v.outcome)
			require.Equal(t, tc.then, v.then)
			require.Equal(t, tc.fenced, v.fenced)
			require.Equal(t, tc.fence, v.fence)
			if tc.status == 0 {
				require.Nil(t, answerOf(v))
			} else {
				ir, _ := immediateOf(t, answerOf(v))
				require.EqualValues(t, tc.status, ir.GetStatus().GetCode())
			}
			require.Equal(t, tc.logs, v.note.msg != "", "log line: %q", v.note.msg)
			if tc.logs {
				require.Equal(t, tc.level, v.note.level)
			}
		})
	}
}

func TestJudge_answers(t *testing.T) {
	fp := []byte("fp")
	claim := idem.Claim{Fingerprint: fp}
	v := judge(look{acq: idem.Acquisition{State: idem.StateInProgress, Fingerprint: fp, LockTTL: 25 * time.Second, Running: 500 * time.Millisecond},
		typical: 3 * time.Second}, claim, policy{}, false)
	_, hs := requireProblem(t, answerOf(v), 409, "in-progress")
	require.Equal(t, "3", headerGet(hs, "retry-after"), "the route's typical duration less the time run, rounded up; not the lease left")
	require.Equal(t, retryHint{wait: 2500 * time.Millisecond, basis: basisTypical}, v.hint)

	v = judge(look{err: idem.ErrUnreplicated}, claim, policy{}, false)
	p, hs := requireProblem(t, answerOf(v), 503, "store-unavailable")
	require.Contains(t, p.Detail, "durable on enough replicas")
	require.Equal(t, "1", headerGet(hs, "retry-after"))

	rec := &idem.Record{Status: 201, BodyStored: true, Body: []byte(`{"id":1}`),
		Headers: []idem.Header{{Name: "content-type", Value: "application/json"}}}
	v = judge(look{acq: idem.Acquisition{State: idem.StateCompleted, Fingerprint: fp, Record: rec}}, claim, policy{}, false)
	ir, hs := immediateOf(t, answerOf(v))
	require.Equal(t, `{"id":1}`, string(ir.GetBody()))
	require.Equal(t, "true", headerGet(hs, replayedHeader))

	v = judge(look{acq: idem.Acquisition{State: idem.StateUnknown, Fingerprint: fp, Expired: true, LockTTL: 1400 * time.Millisecond}},
		idem.Claim{Fingerprint: fp, Scope: "example.com"}, policy{}, false)
	require.Equal(t, []any{"scope", "example.com", "held_for", "1s"}, v.note.attrs, "the scope, never the key")
}

// answerOf is v's immediate response as a problem+json route gets it.
func answerOf(v verdict) *extprocv3.ProcessingResponse {
	if v.refused != nil {
		return problemReply(*v.refused, shape{})
	}
	return v.answer
}
