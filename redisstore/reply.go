package redisstore

import (
	"fmt"
	"math"
	"strconv"
	"time"

	"github.com/idemproxy/idemproxy/internal/idem"
)

// parseAcquire turns the reply of acquire.lua into an Acquisition. The reply
// shapes are listed in the header of lua/acquire.lua.
// open decrypts a field when the record was sealed (enc is its key id).
func parseAcquire(reply []any, open func(enc, field string, blob []byte) ([]byte, error)) (idem.Acquisition, error) {
	state := ""
	if len(reply) > 0 {
		state, _ = reply[0].(string)
	}
	switch {
	case state == "late" && len(reply) == 1:
		return idem.Acquisition{}, ErrLate
	case state == "reset" && len(reply) == 1:
		return idem.Acquisition{}, ErrResetMarker
	case state == "free" && len(reply) == 1:
		return idem.Acquisition{State: idem.StateFree}, nil
	case state == "acquired" && len(reply) == 2:
		fence, ok := reply[1].(int64)
		if !ok || fence <= 0 {
			return idem.Acquisition{}, fmt.Errorf("%w: acquire: no fence", ErrCorruptRecord)
		}
		return idem.Acquisition{State: idem.StateAcquired, Fence: fence}, nil
	case (state == "in_progress" && (len(reply) == 3 || len(reply) == 4)) || (state == "unknown" && len(reply) == 4):
		fp, ok := reply[1].(string)
		ms, ok2 := reply[2].(int64)
		if !ok || !ok2 {
			return idem.Acquisition{}, fmt.Errorf("%w: acquire: %s record lacks fields", ErrCorruptRecord, state)
		}
		acq := idem.Acquisition{
			State:       idem.StateInProgress,
			Fingerprint: []byte(fp),
			// PTTL is negative only for a key without expiry, which the
			// scripts never create: report no time left rather than a
			// negative duration, and clamp so a corrupt value cannot
			// overflow into a negative wait.
			LockTTL: msDuration(ms),
		}
		if state == "in_progress" && len(reply) == 4 {
			// Since its grant; -1 (a record without a grant time) and a
			// missing element (a script of the previous version) leave 0.
			if run, ok := reply[3].(int64); ok && run > 0 {
				acq.Running = msDuration(run)
			}
		}
		if state == "unknown" {
			why, _ := reply[3].(string)
			if why != "expired" && why != "abandoned" {
				return idem.Acquisition{}, fmt.Errorf("%w: acquire: unknown outcome for reason %q", ErrCorruptRecord, why)
			}
			acq.State, acq.Expired = idem.StateUnknown, why == "expired"
		}
		return acq, nil
	case state == "completed" && (len(reply) == 7 || len(reply) == 8):
		// An 8th element says a replay token was issued (Store.Acquire).
		rec, err := parseRecord(reply[1:], open)
		if err != nil {
			return idem.Acquisition{}, err
		}
		return idem.Acquisition{
			State:       idem.StateCompleted,
			Fingerprint: []byte(rec.Fingerprint),
			Record:      rec,
		}, nil
	default:
		return idem.Acquisition{}, fmt.Errorf("%w: acquire: unexpected reply %q with %d elements", ErrCorruptRecord, state, len(reply))
	}
}

// msDuration is ms milliseconds, clamped to [0, the largest Duration] so a
// corrupt value cannot overflow into a negative wait.
func msDuration(ms int64) time.Duration {
	return time.Duration(min(max(ms, 0), math.MaxInt64/int64(time.Millisecond))) * time.Millisecond
}

// parseRecord decodes fp, status, hdr, body, bs, enc of a completed record.
// bs "T" (a version with replays served as upstream responses): the body
// is stored, and hdr (headersV2) carries the trailers too.
func parseRecord(f []any, open func(enc, field string, blob []byte) ([]byte, error)) (*idem.Record, error) {
	var s [6]string
	for i := range s {
		v, ok := f[i].(string)
		if !ok {
			return nil, fmt.Errorf("%w: completed record lacks field %d", ErrCorruptRecord, i)
		}
		s[i] = v
	}
	fp, status, hdr, body, bs, enc := s[0], s[1], s[2], s[3], s[4], s[5]
	code, err := strconv.Atoi(status)
	if err != nil || code < 200 || code > 599 {
		return nil, fmt.Errorf("%w: status %q", ErrCorruptRecord, status)
	}
	hdrPlain, err := open(enc, "hdr", []byte(hdr))
	if err != nil {
		return nil, err
	}
	var headers, trailers []idem.Header
	if bs == "T" {
		headers, trailers, err = decodeWithTrailers(hdrPlain)
	} else {
		headers, err = decodeHeaders(hdrPlain)
	}
	if err != nil {
		return nil, err
	}
	rec := &idem.Record{Fingerprint: []byte(fp), Status: code, Headers: headers, TrailerHeaders: trailers, Trailers: bs == "T"}
	switch bs {
	case "1", "T":
		plain, err := open(enc, "body", []byte(body))
		if err != nil {
			return nil, err
		}
		rec.Body, rec.BodyStored = plain, true
	case "0":
	case "i":
		rec.Incomplete = true
	case "t":
		rec.Trailers = true
	case "s":
		rec.StoreFailed = true
	default:
		return nil, fmt.Errorf("%w: body-stored flag %q", ErrCorruptRecord, bs)
	}
	return rec, nil
}
