package processor

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
)

// maxKeyLen follows Stripe's limit; the IETF draft sets none.
const maxKeyLen = 255

// Key parsing errors; their text reaches the client in a problem detail.
var (
	errKeyEmpty    = errors.New("the idempotency key is empty")
	errKeyTooLong  = fmt.Errorf("the idempotency key is longer than %d characters", maxKeyLen)
	errKeyChars    = errors.New("the idempotency key may contain only visible ASCII characters")
	errKeyQuoting  = errors.New("the idempotency key is not a valid structured-field string")
	errKeyConflict = errors.New("the request carries several different idempotency keys")
)

// parseKey accepts an RFC 8941 sf-string ("...") as the IETF draft sends it,
// or a bare token as most APIs (Stripe) send it, and returns the key itself.
func parseKey(raw string) (string, error) {
	v := strings.Trim(raw, " \t")
	if strings.HasPrefix(v, `"`) {
		unq, err := unquoteSFString(v)
		if err != nil {
			return "", err
		}
		v = unq
	}
	if v == "" {
		return "", errKeyEmpty
	}
	if len(v) > maxKeyLen {
		return "", errKeyTooLong
	}
	for i := 0; i < len(v); i++ {
		if v[i] < 0x21 || v[i] > 0x7e {
			return "", errKeyChars
		}
	}
	return v, nil
}

// unquoteSFString decodes an RFC 8941 section 3.3.3 string: printable ASCII
// between double quotes, with only \" and \\ as escapes.
func unquoteSFString(v string) (string, error) {
	if len(v) < 2 || v[len(v)-1] != '"' {
		return "", errKeyQuoting
	}
	var b strings.Builder
	inner := v[1 : len(v)-1]
	for i := 0; i < len(inner); i++ {
		c := inner[i]
		switch {
		case c == '\\':
			i++
			if i == len(inner) || (inner[i] != '"' && inner[i] != '\\') {
				return "", errKeyQuoting
			}
			b.WriteByte(inner[i])
		case c == '"':
			return "", errKeyQuoting
		case c < 0x20 || c > 0x7e:
			return "", errKeyChars
		default:
			b.WriteByte(c)
		}
	}
	return b.String(), nil
}

// storeKey builds the composite key: scope parts, then the client key, each
// length-prefixed so no choice of values can make two scopes collide.
func storeKey(scope []string, key string) string {
	var b []byte
	for _, part := range append(scope, key) {
		b = binary.AppendUvarint(b, uint64(len(part)))
		b = append(b, part...)
	}
	return string(b)
}

// scopeLabel describes a scope for operators, without the client's key:
// the authority, and a short hash of the identity parts when there are any
// (scope header values can be tenant ids, credentials hashes: not shown in
// clear, but comparable with what the admin endpoint computes).
func scopeLabel(scope []string) string {
	if len(scope) < 2 {
		return scope[0]
	}
	sum := sha256.Sum256([]byte(storeKey(scope[1:], "")))
	return scope[0] + " identity=" + hex.EncodeToString(sum[:8])
}

// fingerprint binds the key to the request: method, path with query, body.
func fingerprint(method, path string, body []byte) []byte {
	h := sha256.New()
	var n []byte
	for _, part := range []string{method, path} {
		n = binary.AppendUvarint(n[:0], uint64(len(part)))
		h.Write(n)
		h.Write([]byte(part))
	}
	h.Write(body)
	return h.Sum(nil)
}

// validHeaderName accepts lower-case RFC 9110 tokens.
func validHeaderName(h string) bool {
	if h == "" {
		return false
	}
	for i := 0; i < len(h); i++ {
		c := h[i]
		switch {
		case c >= 'a' && c <= 'z', c >= '0' && c <= '9':
		case strings.IndexByte("!#$%&'*+-.^_`|~", c) >= 0:
		default:
			return false
		}
	}
	return true
}
