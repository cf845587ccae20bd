package redisstore

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/idemproxy/idemproxy/internal/idem"
)

// completeWithTrailers stores a response that ended with trailers under key.
func completeWithTrailers(t *testing.T, s *Store, key string) idem.Record {
	t.Helper()
	tok := token(t)
	acq, err := s.Acquire(t.Context(), key, idem.Claim{Token: tok, Fingerprint: []byte("fp"), Lease: idem.Lease{TTL: time.Minute, Hold: time.Hour}})
	require.NoError(t, err)
	require.Equal(t, idem.StateAcquired, acq.State)
	rec := sampleRecord()
	rec.Fingerprint = []byte("fp")
	rec.Trailers = true
	rec.TrailerHeaders = []idem.Header{{Name: "grpc-status", Value: "0"}, {Name: "x-t", Value: "a"}, {Name: "x-t", Value: "b"}}
	require.NoError(t, s.Complete(t.Context(), key, tok, rec, time.Hour))
	return rec
}

func TestStore_TrailersStored(t *testing.T) {
	s, c, _ := newTestStore(t)
	want := completeWithTrailers(t, s, "k")
	fields, _ := snapshot(t, s, c, "k")
	require.Equal(t, "T", fields["bs"], "an older version refuses the flag: fails closed")
	acq, err := s.Acquire(t.Context(), "k", idem.Claim{Token: token(t), Fingerprint: []byte("fp"), Lease: idem.Lease{TTL: time.Minute, Hold: time.Hour}})
	require.NoError(t, err)
	require.Equal(t, idem.StateCompleted, acq.State)
	require.True(t, acq.Record.BodyStored)
	require.True(t, acq.Record.Trailers)
	require.Equal(t, want.Headers, acq.Record.Headers)
	require.Equal(t, want.TrailerHeaders, acq.Record.TrailerHeaders)
	require.Equal(t, want.Body, acq.Record.Body)
}

func TestStore_Replay(t *testing.T) {
	s, c, _ := newTestStore(t)
	want := completeWithTrailers(t, s, "k")

	t.Run("a token replays its record once", func(t *testing.T) {
		tok, err := s.IssueReplay(t.Context(), "k", 5*time.Second)
		require.NoError(t, err)
		rec, err := s.TakeReplay(t.Context(), tok)
		require.NoError(t, err)
		require.Equal(t, want.Status, rec.Status)
		require.Equal(t, want.Body, rec.Body)
		require.Equal(t, want.TrailerHeaders, rec.TrailerHeaders)
		_, err = s.TakeReplay(t.Context(), tok)
		require.ErrorIs(t, err, ErrNoReplay)
	})
	t.Run("tokens expire", func(t *testing.T) {
		tok, err := s.IssueReplay(t.Context(), "k", 5*time.Second)
		require.NoError(t, err)
		id, random, _ := cutToken(tok)
		ttl, err := c.PTTL(t.Context(), s.prefix+"{"+id+"}"+replaySuffix+random).Result()
		require.NoError(t, err)
		require.Greater(t, ttl, time.Duration(0))
		require.LessOrEqual(t, ttl, 5*time.Second)
	})
	t.Run("made-up and malformed tokens replay nothing", func(t *testing.T) {
		tok, err := s.IssueReplay(t.Context(), "k", 5*time.Second)
		require.NoError(t, err)
		id, _, _ := cutToken(tok)
		for _, bad := range []string{"", "x", id + "." + "00000000000000000000000000000000", id, "../" + tok, tok + "0"} {
			_, err := s.TakeReplay(t.Context(), bad)
			require.ErrorIs(t, err, ErrNoReplay, bad)
		}
	})
	t.Run("a token of a deleted record replays nothing, not its successor", func(t *testing.T) {
		tok, err := s.IssueReplay(t.Context(), "k", 5*time.Second)
		require.NoError(t, err)
		require.NoError(t, c.Del(t.Context(), s.RedisKey("k")).Err())
		completeWithTrailers(t, s, "k")
		_, err = s.TakeReplay(t.Context(), tok)
		require.ErrorIs(t, err, ErrNoReplay)
	})
	t.Run("no token for a key without a stored response", func(t *testing.T) {
		_, err := s.IssueReplay(t.Context(), "free", 5*time.Second)
		require.ErrorIs(t, err, ErrNoReplay)
	})
}

func cutToken(tok string) (id, random string, ok bool) {
	for i := range tok {
		if tok[i] == '.' {
			return tok[:i], tok[i+1:], true
		}
	}
	return "", "", false
}

func TestStore_ReplayEncrypted(t *testing.T) {
	_, c, _ := newTestStore(t)
	kr, err := ParseKeyring(newKeySpec(t, "2026-12"))
	require.NoError(t, err)
	s := New(c, Options{Keyring: kr})
	want := completeWithTrailers(t, s, "k")
	fields, _ := snapshot(t, s, c, "k")
	require.NotContains(t, fields["hdr"], "grpc-status", "the trailers are sealed with the headers")
	tok, err := s.IssueReplay(t.Context(), "k", 5*time.Second)
	require.NoError(t, err)
	rec, err := s.TakeReplay(t.Context(), tok)
	require.NoError(t, err)
	require.Equal(t, want.Headers, rec.Headers)
	require.Equal(t, want.TrailerHeaders, rec.TrailerHeaders)
	require.Equal(t, want.Body, rec.Body)
}

func TestCodec_withTrailers(t *testing.T) {
	hs := []idem.Header{{Name: "content-type", Value: "application/grpc"}, {Name: "x", Value: ""}}
	trailers := []idem.Header{{Name: "grpc-status", Value: "0"}, {Name: "grpc-message", Value: "ok"}}
	gotH, gotT, err := decodeWithTrailers(encodeWithTrailers(hs, trailers))
	require.NoError(t, err)
	require.Equal(t, hs, gotH)
	require.Equal(t, trailers, gotT)
	t.Run("the previous version's decoder (v1 only, unchanged) refuses it: fails closed", func(t *testing.T) {
		_, err := decodeHeaders(encodeWithTrailers(hs, trailers))
		require.ErrorIs(t, err, ErrCorruptRecord)
	})
	t.Run("v1 still reads, without trailers", func(t *testing.T) {
		gotH, gotT, err := decodeWithTrailers(encodeHeaders(hs))
		require.NoError(t, err)
		require.Equal(t, hs, gotH)
		require.Empty(t, gotT)
	})
	t.Run("a header count past the fields is corrupt", func(t *testing.T) {
		b := encodeWithTrailers(hs, nil)
		b[1] = 9
		_, _, err := decodeWithTrailers(b)
		require.ErrorIs(t, err, ErrCorruptRecord)
	})
}
