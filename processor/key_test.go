package processor

import (
	"bytes"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestParseKey(t *testing.T) {
	long := strings.Repeat("a", 255)
	tests := []struct {
		name, raw, want string
		err             error
	}{
		{"bare token", "order-42", "order-42", nil},
		{"uuid", "8e03978e-40d5-43e8-bc93-6894a57f9324", "8e03978e-40d5-43e8-bc93-6894a57f9324", nil},
		{"surrounding blanks trimmed", " \tabc\t ", "abc", nil},
		{"quoted string", `"abc"`, "abc", nil},
		{"quoted with escapes", `"a\"b\\c"`, `a"b\c`, nil},
		{"every visible character", "!#$%&'()*+,-./:;<=>?@[]^_`{|}~", "!#$%&'()*+,-./:;<=>?@[]^_`{|}~", nil},
		{"255 characters", long, long, nil},
		{"255 characters quoted", `"` + long + `"`, long, nil},
		{"empty", "", "", errKeyEmpty},
		{"blank", " \t ", "", errKeyEmpty},
		{"empty quoted", `""`, "", errKeyEmpty},
		{"256 characters", long + "a", "", errKeyTooLong},
		{"inner space", "a b", "", errKeyChars},
		{"space when quoted", `"a b"`, "", errKeyChars},
		{"control character", "a\x00b", "", errKeyChars},
		{"delete character", "a\x7fb", "", errKeyChars},
		{"non-ASCII", "naïve", "", errKeyChars},
		{"lone quote", `"`, "", errKeyQuoting},
		{"unterminated", `"abc`, "", errKeyQuoting},
		{"bare quote inside", `"a"b"`, "", errKeyQuoting},
		{"unknown escape", `"a\nb"`, "", errKeyQuoting},
		{"escape at the end", `"ab\"`, "", errKeyQuoting},
		{"tab inside quotes", "\"a\tb\"", "", errKeyChars},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := parseKey(tc.raw)
			if tc.err != nil {
				require.ErrorIs(t, err, tc.err)
				return
			}
			require.NoError(t, err)
			require.Equal(t, tc.want, got)
		})
	}
}

func TestUnquoteSFString(t *testing.T) {
	tests := []struct {
		name, in, want string
		ok             bool
	}{
		{"empty string", `""`, "", true},
		{"plain", `"hello world"`, "hello world", true},
		{"escaped quote", `"say \"hi\""`, `say "hi"`, true},
		{"escaped backslash", `"a\\b"`, `a\b`, true},
		{"no closing quote", `"abc`, "", false},
		{"too short", `"`, "", false},
		{"trailing backslash", `"abc\"`, "", false},
		{"escaped letter", `"\a"`, "", false},
		{"unescaped quote", `"a"b"`, "", false},
		{"control character", "\"a\x1fb\"", "", false},
		{"non-ASCII", "\"\xc3\xa9\"", "", false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := unquoteSFString(tc.in)
			if !tc.ok {
				require.Error(t, err)
				return
			}
			require.NoError(t, err)
			require.Equal(t, tc.want, got)
		})
	}
}

func TestSingleKey(t *testing.T) {
	k, err := singleKey([]string{"abc", `"abc"`, " abc "})
	require.NoError(t, err)
	require.Equal(t, "abc", k)

	_, err = singleKey([]string{"abc", "abd"})
	require.ErrorIs(t, err, errKeyConflict)

	_, err = singleKey([]string{"abc", "a b"})
	require.ErrorIs(t, err, errKeyChars)
}

func TestStoreKey(t *testing.T) {
	t.Run("no collisions across part boundaries", func(t *testing.T) {
		keys := []string{
			storeKey([]string{"a", "bc"}, "d"),
			storeKey([]string{"ab", "c"}, "d"),
			storeKey([]string{"a", "b"}, "cd"),
			storeKey([]string{"abc"}, "d"),
			storeKey([]string{"abc", ""}, "d"),
			storeKey([]string{"", "abc"}, "d"),
			storeKey([]string{"a"}, "bcd"),
		}
		seen := map[string]int{}
		for i, k := range keys {
			j, dup := seen[k]
			require.False(t, dup, "keys %d and %d collide", j, i)
			seen[k] = i
		}
	})
	t.Run("same input same key", func(t *testing.T) {
		require.Equal(t, storeKey([]string{"h", "tenant"}, "k"), storeKey([]string{"h", "tenant"}, "k"))
	})
	t.Run("tenants are kept apart", func(t *testing.T) {
		require.NotEqual(t, storeKey([]string{"h", "t1"}, "k"), storeKey([]string{"h", "t2"}, "k"))
	})
	t.Run("long parts", func(t *testing.T) {
		long := strings.Repeat("x", 300) // a two-byte length prefix
		require.NotEqual(t, storeKey([]string{long}, "k"), storeKey([]string{long + "k"}, ""))
	})
}

func TestFingerprint(t *testing.T) {
	base := fingerprint("POST", "/charge?a=1", []byte("body"))
	require.Len(t, base, 32)
	require.Equal(t, base, fingerprint("POST", "/charge?a=1", []byte("body")))
	others := map[string][]byte{
		"method":          fingerprint("PUT", "/charge?a=1", []byte("body")),
		"path":            fingerprint("POST", "/charge", []byte("body")),
		"query":           fingerprint("POST", "/charge?a=2", []byte("body")),
		"body":            fingerprint("POST", "/charge?a=1", []byte("Body")),
		"no body":         fingerprint("POST", "/charge?a=1", nil),
		"method boundary": fingerprint("POS", "T/charge?a=1", []byte("body")),
		"path boundary":   fingerprint("POST", "/charge?a=1b", []byte("ody")),
	}
	for name, fp := range others {
		require.False(t, bytes.Equal(base, fp), "a different %s must change the fingerprint", name)
	}
}

func TestValidHeaderName(t *testing.T) {
	for _, ok := range []string{"idempotency-key", "x-tenant-id", "a", "x_1.b~c"} {
		require.True(t, validHeaderName(ok), ok)
	}
	for _, bad := range []string{"", "Idempotency-Key", "a b", "a:b", ":authority", "ключ"} {
		require.False(t, validHeaderName(bad), bad)
	}
}
