package redisstore

import (
	"fmt"
	"strconv"
	"time"

	"github.com/idemproxy/idemproxy/processor"
)

// parseAcquire turns the reply of acquire.lua into an Acquisition. The reply
// shapes are listed in the header of lua/acquire.lua.
func parseAcquire(reply []any) (processor.Acquisition, error) {
	state := ""
	if len(reply) > 0 {
		state, _ = reply[0].(string)
	}
	switch {
	case state == "acquired" && len(reply) == 1:
		return processor.Acquisition{State: processor.StateAcquired}, nil
	case state == "in_progress" && len(reply) == 3:
		fp, ok := reply[1].(string)
		pttl, ok2 := reply[2].(int64)
		if !ok || !ok2 {
			return processor.Acquisition{}, fmt.Errorf("%w: acquire: in-progress record lacks fields", ErrCorruptRecord)
		}
		// PTTL is negative only for a key without expiry, which the scripts
		// never create; report no time left rather than a negative duration.
		return processor.Acquisition{
			State:       processor.StateInProgress,
			Fingerprint: []byte(fp),
			LockTTL:     time.Duration(max(pttl, 0)) * time.Millisecond,
		}, nil
	case state == "completed" && len(reply) == 6:
		rec, err := parseRecord(reply[1:])
		if err != nil {
			return processor.Acquisition{}, err
		}
		return processor.Acquisition{
			State:       processor.StateCompleted,
			Fingerprint: []byte(rec.Fingerprint),
			Record:      rec,
		}, nil
	default:
		return processor.Acquisition{}, fmt.Errorf("%w: acquire: unexpected reply %q with %d elements", ErrCorruptRecord, state, len(reply))
	}
}

// parseRecord decodes fp, status, hdr, body, bs of a completed record.
func parseRecord(f []any) (*processor.Record, error) {
	var s [5]string
	for i := range s {
		v, ok := f[i].(string)
		if !ok {
			return nil, fmt.Errorf("%w: completed record lacks field %d", ErrCorruptRecord, i)
		}
		s[i] = v
	}
	fp, status, hdr, body, bs := s[0], s[1], s[2], s[3], s[4]
	code, err := strconv.Atoi(status)
	if err != nil {
		return nil, fmt.Errorf("%w: status %q", ErrCorruptRecord, status)
	}
	headers, err := decodeHeaders([]byte(hdr))
	if err != nil {
		return nil, err
	}
	rec := &processor.Record{Fingerprint: []byte(fp), Status: code, Headers: headers}
	switch bs {
	case "1":
		rec.Body, rec.BodyStored = []byte(body), true
	case "0":
	default:
		return nil, fmt.Errorf("%w: body-stored flag %q", ErrCorruptRecord, bs)
	}
	return rec, nil
}
