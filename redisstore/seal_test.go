package redisstore

import (
	"bytes"
	"crypto/rand"
	"encoding/base64"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/idemproxy/idemproxy/internal/idem"
)

// newKeySpec returns "id:base64" for a fresh random 32-byte key.
func newKeySpec(t *testing.T, id string) string {
	t.Helper()
	var k [32]byte
	_, err := rand.Read(k[:])
	require.NoError(t, err)
	return id + ":" + base64.StdEncoding.EncodeToString(k[:])
}

func TestParseKeyring(t *testing.T) {
	good := newKeySpec(t, "k1")
	kr, err := ParseKeyring(good + ", " + newKeySpec(t, "k0"))
	require.NoError(t, err)
	require.Equal(t, "k1", kr.current, "the first key seals")

	for name, spec := range map[string]string{
		"empty":             "",
		"no id":             ":" + strings.SplitN(good, ":", 2)[1],
		"not base64":        "k1:%%%",
		"short key":         "k1:" + base64.StdEncoding.EncodeToString([]byte("short")),
		"duplicate id":      good + "," + strings.Replace(newKeySpec(t, "k1"), "k1", "k1", 1),
		"missing separator": "k1",
	} {
		_, err := ParseKeyring(spec)
		require.Error(t, err, name)
		require.NotContains(t, err.Error(), strings.SplitN(good, ":", 2)[1], "errors never show a key")
	}
}

func TestStore_encryptedAtRest(t *testing.T) {
	t.Parallel()
	_, c, _ := newTestStore(t)
	ctx := t.Context()
	spec1 := newKeySpec(t, "2026-01")
	kr1, err := ParseKeyring(spec1)
	require.NoError(t, err)
	s1 := New(c, Options{Keyring: kr1})

	rec := idem.Record{Fingerprint: []byte("fp"), Status: 201, BodyStored: true,
		Headers: []idem.Header{{Name: "x-card-holder", Value: "Jane Doe"}},
		Body:    []byte(`{"card":"4242424242424242"}`)}
	tok := token(t)
	_, err = s1.Acquire(ctx, "secret", claim(tok, []byte("fp"), time.Minute))
	require.NoError(t, err)
	require.NoError(t, s1.Complete(ctx, "secret", tok, rec, time.Hour))

	t.Run("Redis holds no plaintext header or body", func(t *testing.T) {
		raw, err := c.HGetAll(ctx, s1.RedisKey("secret")).Result()
		require.NoError(t, err)
		require.Equal(t, "2026-01", raw["enc"], "the key id is stored with the record")
		for field, v := range raw {
			require.NotContains(t, v, "4242424242424242", field)
			require.NotContains(t, v, "Jane Doe", field)
		}
		dump, err := c.Do(ctx, "DUMP", s1.RedisKey("secret")).Text()
		require.NoError(t, err)
		require.False(t, bytes.Contains([]byte(dump), []byte("4242")), "not even in the serialized value")
	})
	t.Run("the store reads it back", func(t *testing.T) {
		acq, err := s1.Acquire(ctx, "secret", claim(token(t), []byte("fp"), time.Minute))
		require.NoError(t, err)
		require.Equal(t, idem.StateCompleted, acq.State)
		require.Equal(t, rec.Body, acq.Record.Body)
		require.Equal(t, rec.Headers, acq.Record.Headers)
	})
	t.Run("after rotation old records still open", func(t *testing.T) {
		kr2, err := ParseKeyring(newKeySpec(t, "2026-02") + "," + spec1)
		require.NoError(t, err)
		s2 := New(c, Options{Keyring: kr2})
		acq, err := s2.Acquire(ctx, "secret", claim(token(t), []byte("fp"), time.Minute))
		require.NoError(t, err)
		require.Equal(t, rec.Body, acq.Record.Body)
	})
	t.Run("without the key the record is refused, not misread", func(t *testing.T) {
		for name, st := range map[string]*Store{
			"no keys":            New(c, Options{}),
			"other key only":     New(c, Options{Keyring: must(ParseKeyring(newKeySpec(t, "2026-02")))}),
			"same id, wrong key": New(c, Options{Keyring: must(ParseKeyring(newKeySpec(t, "2026-01")))}),
		} {
			_, err := st.Acquire(ctx, "secret", claim(token(t), []byte("fp"), time.Minute))
			require.ErrorIs(t, err, ErrSealed, name)
		}
	})
	t.Run("a sealed body moved to another record does not open", func(t *testing.T) {
		tok := token(t)
		_, err := s1.Acquire(ctx, "other", claim(tok, []byte("fp"), time.Minute))
		require.NoError(t, err)
		require.NoError(t, s1.Complete(ctx, "other", tok, idem.Record{Fingerprint: []byte("fp"), Status: 200, BodyStored: true, Body: []byte("x")}, time.Hour))
		body, err := c.HGet(ctx, s1.RedisKey("secret"), "body").Result()
		require.NoError(t, err)
		require.NoError(t, c.HSet(ctx, s1.RedisKey("other"), "body", body).Err())
		_, err = s1.Acquire(ctx, "other", claim(token(t), []byte("fp"), time.Minute))
		require.ErrorIs(t, err, ErrSealed)
	})
	t.Run("records stored before encryption was turned on still open", func(t *testing.T) {
		plain := New(c, Options{})
		tok := token(t)
		_, err := plain.Acquire(ctx, "legacy", claim(tok, []byte("fp"), time.Minute))
		require.NoError(t, err)
		require.NoError(t, plain.Complete(ctx, "legacy", tok, rec, time.Hour))
		acq, err := s1.Acquire(ctx, "legacy", claim(token(t), []byte("fp"), time.Minute))
		require.NoError(t, err)
		require.Equal(t, rec.Body, acq.Record.Body)
	})
}

func must[T any](v T, err error) T {
	if err != nil {
		panic(err)
	}
	return v
}
