package redisstore

import (
	"encoding/binary"
	"errors"
	"slices"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/idemproxy/idemproxy/internal/idem"
)

// Redis is outside the process: acquire.lua's reply, read back from a
// record anyone with Redis access could have altered, is input like any
// other. FuzzParseAcquire feeds parseAcquire arbitrary replies, plaintext
// and sealed, and checks it never panics and returns either a corrupt or
// sealed error or a coherent Acquisition.

const fuzzRedisKey = "idemproxy:{fuzz}"

// fuzzKeyring holds key id "k1"; fuzzSealed seals deterministically (a
// zero nonce, test only) so the same fuzz input always decodes the same.
var fuzzKeyring = func() *Keyring {
	k, err := ParseKeyring("k1:" + "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=")
	if err != nil {
		panic(err)
	}
	return k
}()

func fuzzSealed(field string, plain []byte) string {
	aead := fuzzKeyring.aeads["k1"]
	nonce := make([]byte, aead.NonceSize())
	return string(aead.Seal(nonce, nonce, plain, []byte(fuzzRedisKey+"\x00"+field)))
}

var fuzzHeaders = encodeHeaders([]idem.Header{{Name: "content-type", Value: "application/json"},
	{Name: "link", Value: "<a>"}, {Name: "link", Value: "\x80\xff"}})

// fuzzReplyStrings are the string elements a reply is built from by index.
var fuzzReplyStrings = []string{"acquired", "in_progress", "unknown", "completed", "", "0", "1", "200", "101",
	"-5", "99999", "k1", "k2", "fp", string(fuzzHeaders), fuzzSealed("hdr", fuzzHeaders),
	fuzzSealed("body", []byte(`{"id":1}`)), fuzzSealed("body", fuzzHeaders), string([]byte{headersV1, 0x80})}

// decodeFuzzReply reads elements until the input ends (at most 9): a kind
// byte, then for kind%4 0: a fuzzReplyStrings index; 1: a length byte and
// that many bytes; 2: a big-endian int64; 3: nothing (a Redis nil).
func decodeFuzzReply(b []byte) []any {
	next := func(n int) []byte {
		n = min(n, len(b))
		out := b[:n]
		b = b[n:]
		return out
	}
	var reply []any
	for len(b) > 0 && len(reply) < 9 {
		switch next(1)[0] % 4 {
		case 0:
			i := 0
			if v := next(1); len(v) == 1 {
				i = int(v[0]) % len(fuzzReplyStrings)
			}
			reply = append(reply, fuzzReplyStrings[i])
		case 1:
			n := 0
			if v := next(1); len(v) == 1 {
				n = int(v[0])
			}
			reply = append(reply, string(next(n)))
		case 2:
			var v [8]byte
			copy(v[:], next(8))
			reply = append(reply, int64(binary.BigEndian.Uint64(v[:])))
		default:
			reply = append(reply, nil)
		}
	}
	return reply
}

// seedReply encodes elements (string from fuzzReplyStrings, int64, nil).
func seedReply(elems ...any) []byte {
	var b []byte
	for _, e := range elems {
		switch v := e.(type) {
		case string:
			i := slices.Index(fuzzReplyStrings, v)
			if i < 0 {
				panic("seed string not in fuzzReplyStrings: " + v)
			}
			b = append(b, 0, byte(i))
		case int64:
			b = binary.BigEndian.AppendUint64(append(b, 2), uint64(v))
		default:
			b = append(b, 3)
		}
	}
	return b
}

func FuzzParseAcquire(f *testing.F) {
	hdr, sealedHdr := string(fuzzHeaders), fuzzSealed("hdr", fuzzHeaders)
	sealedBody := fuzzSealed("body", []byte(`{"id":1}`))
	for _, seed := range [][]byte{
		seedReply("acquired", int64(7)),
		seedReply("in_progress", "fp", int64(1500)),
		seedReply("in_progress", "fp", int64(1500), int64(700)),
		seedReply("in_progress", "fp", int64(1500), int64(-1)),
		seedReply("unknown", "fp", int64(-1)),
		seedReply("completed", "fp", "200", hdr, "k1", "1", ""),
		seedReply("completed", "fp", "200", hdr, "", "0", ""),
		seedReply("completed", "fp", "200", sealedHdr, sealedBody, "1", "k1"),
		seedReply("completed", "fp", "200", sealedHdr, sealedBody, "1", "k2"),
		seedReply("completed", "fp", "101", hdr, nil, "1", ""),
		seedReply(nil, nil),
	} {
		f.Add(seed)
	}
	s := &Store{keyring: fuzzKeyring}
	open := s.opener(fuzzRedisKey)
	f.Fuzz(func(t *testing.T, b []byte) {
		reply := decodeFuzzReply(b)
		acq, err := parseAcquire(reply, open)
		if err != nil {
			require.True(t, errors.Is(err, ErrCorruptRecord) || errors.Is(err, ErrSealed), "unexpected error %v", err)
			require.Zero(t, acq)
			return
		}
		switch acq.State {
		case idem.StateAcquired:
			require.Nil(t, acq.Record)
		case idem.StateInProgress, idem.StateUnknown:
			require.Nil(t, acq.Record)
			// Even a corrupt PTTL over MaxInt64 ns is clamped, never negative.
			require.GreaterOrEqual(t, acq.LockTTL, time.Duration(0))
			require.GreaterOrEqual(t, acq.Running, time.Duration(0))
		case idem.StateCompleted:
			require.NotNil(t, acq.Record)
			require.Equal(t, acq.Fingerprint, acq.Record.Fingerprint)
			if !acq.Record.BodyStored {
				require.Nil(t, acq.Record.Body)
			}
			again, err := decodeHeaders(encodeHeaders(acq.Record.Headers))
			require.NoError(t, err)
			require.Equal(t, acq.Record.Headers, again)
		default:
			t.Fatalf("state %v", acq.State)
		}
	})
}

// TestParseAcquire_running: the time a key in progress has been held, as
// this version's scripts report it, and as the previous version's (no
// element) and a record without a grant time (-1) leave it: 0, not known.
func TestParseAcquire_running(t *testing.T) {
	open := (&Store{}).opener(fuzzRedisKey)
	for _, tc := range []struct {
		name  string
		reply []any
		want  time.Duration
	}{
		{"held for 700 ms", []any{"in_progress", "fp", int64(1500), int64(700)}, 700 * time.Millisecond},
		{"a record without a grant time", []any{"in_progress", "fp", int64(1500), int64(-1)}, 0},
		{"a reply of the previous version's script", []any{"in_progress", "fp", int64(1500)}, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			acq, err := parseAcquire(tc.reply, open)
			require.NoError(t, err)
			require.Equal(t, idem.StateInProgress, acq.State)
			require.Equal(t, 1500*time.Millisecond, acq.LockTTL)
			require.Equal(t, tc.want, acq.Running)
		})
	}
}
