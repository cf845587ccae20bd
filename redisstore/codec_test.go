package redisstore

import (
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/idemproxy/idemproxy/internal/idem"
)

func TestEncodeHeaders(t *testing.T) {
	t.Run("round trip keeps order, repeats and binary values", func(t *testing.T) {
		hs := []idem.Header{
			{Name: "set-cookie", Value: "a=1"},
			{Name: "content-type", Value: "application/json"},
			{Name: "set-cookie", Value: "b=2"},
			{Name: "x-empty", Value: ""},
			{Name: "x-bin", Value: "\x00\xff\r\n:\x01"},
			{Name: "x-long", Value: string(make([]byte, 300))},
		}
		got, err := decodeHeaders(encodeHeaders(hs))
		require.NoError(t, err)
		require.Equal(t, hs, got)
	})
	t.Run("no headers round trip to none", func(t *testing.T) {
		got, err := decodeHeaders(encodeHeaders(nil))
		require.NoError(t, err)
		require.Empty(t, got)
	})
	t.Run("encoding is compact", func(t *testing.T) {
		b := encodeHeaders([]idem.Header{{Name: "ab", Value: "cde"}})
		require.Equal(t, []byte{headersV1, 2, 'a', 'b', 3, 'c', 'd', 'e'}, b)
	})
}

func TestDecodeHeaders(t *testing.T) {
	valid := encodeHeaders([]idem.Header{{Name: "a", Value: "bc"}})
	cases := map[string][]byte{
		"empty input":              {},
		"unknown version":          {2, 1, 'a', 1, 'b'},
		"truncated length prefix":  {headersV1, 0x80},
		"length beyond the end":    {headersV1, 5, 'a'},
		"name without value":       {headersV1, 1, 'a'},
		"huge length":              {headersV1, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01},
		"overlong varint":          {headersV1, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x01},
		"valid encoding truncated": valid[:len(valid)-1],
	}
	for name, in := range cases {
		t.Run(name+" is an error", func(t *testing.T) {
			_, err := decodeHeaders(in)
			require.ErrorIs(t, err, ErrCorruptRecord)
		})
	}
}

// FuzzDecodeHeaders checks that decoding never panics, and that whatever
// decodes survives an encode and decode unchanged. (Bytes need not match:
// Uvarint accepts non-minimal length prefixes.)
func FuzzDecodeHeaders(f *testing.F) {
	f.Add(encodeHeaders([]idem.Header{{Name: "a", Value: "b"}, {Name: "a", Value: "c"}}))
	f.Add([]byte{headersV1, 0x80})
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		hs, err := decodeHeaders(b)
		if err != nil {
			return
		}
		again, err := decodeHeaders(encodeHeaders(hs))
		require.NoError(t, err)
		require.Equal(t, hs, again)
	})
}
