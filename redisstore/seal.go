package redisstore

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"strings"
)

// ErrSealed reports a stored response that cannot be opened: encrypted with
// a key this process does not have, or altered.
var ErrSealed = errors.New("redisstore: sealed record cannot be opened")

// Keyring encrypts stored responses (headers and body) at rest with
// AES-256-GCM. The id of the sealing key is stored with each record, so
// keys can rotate: put the new key first, keep the old ones until their
// records have expired (the retention period).
type Keyring struct {
	current string
	aeads   map[string]cipher.AEAD
}

// ParseKeyring reads "id:base64key[,id:base64key...]"; each key is 32
// bytes (AES-256), standard or URL base64. The first key seals.
func ParseKeyring(spec string) (*Keyring, error) {
	k := &Keyring{aeads: map[string]cipher.AEAD{}}
	for _, part := range strings.Split(spec, ",") {
		part = strings.TrimSpace(part)
		if part == "" {
			continue
		}
		id, b64, ok := strings.Cut(part, ":")
		if !ok || id == "" || len(id) > 64 {
			return nil, fmt.Errorf("redisstore: encryption key %q: want id:base64key", redact(part))
		}
		raw, err := base64.StdEncoding.DecodeString(b64)
		if err != nil {
			raw, err = base64.URLEncoding.DecodeString(b64)
		}
		if err != nil || len(raw) != 32 {
			return nil, fmt.Errorf("redisstore: encryption key %q: want 32 bytes in base64", id)
		}
		if _, dup := k.aeads[id]; dup {
			return nil, fmt.Errorf("redisstore: encryption key id %q given twice", id)
		}
		block, err := aes.NewCipher(raw)
		if err != nil {
			return nil, fmt.Errorf("redisstore: encryption key %q: %w", id, err)
		}
		aead, err := cipher.NewGCM(block)
		if err != nil {
			return nil, fmt.Errorf("redisstore: encryption key %q: %w", id, err)
		}
		k.aeads[id] = aead
		if k.current == "" {
			k.current = id
		}
	}
	if k.current == "" {
		return nil, errors.New("redisstore: no encryption key given")
	}
	return k, nil
}

// redact keeps a malformed key spec's id for the error, never its secret.
func redact(part string) string {
	if id, _, ok := strings.Cut(part, ":"); ok {
		return id + ":…"
	}
	return "…"
}

// seal encrypts plain for the record field named by aad: binding the
// ciphertext to its Redis key and field means a blob copied to another
// record does not open.
func (k *Keyring) seal(aad string, plain []byte) ([]byte, error) {
	aead := k.aeads[k.current]
	out := make([]byte, aead.NonceSize(), aead.NonceSize()+len(plain)+aead.Overhead())
	if _, err := rand.Read(out); err != nil {
		return nil, fmt.Errorf("redisstore: nonce: %w", err)
	}
	return aead.Seal(out, out, plain, []byte(aad)), nil
}

// open decrypts a blob sealed with key id.
func (k *Keyring) open(id, aad string, blob []byte) ([]byte, error) {
	if k == nil {
		return nil, fmt.Errorf("%w: encrypted with key %q, but no encryption keys are configured", ErrSealed, id)
	}
	aead, ok := k.aeads[id]
	if !ok {
		return nil, fmt.Errorf("%w: encrypted with key %q, which is not configured", ErrSealed, id)
	}
	if len(blob) < aead.NonceSize() {
		return nil, fmt.Errorf("%w: too short", ErrSealed)
	}
	plain, err := aead.Open(nil, blob[:aead.NonceSize()], blob[aead.NonceSize():], []byte(aad))
	if err != nil {
		return nil, fmt.Errorf("%w: key %q: %v", ErrSealed, id, err)
	}
	return plain, nil
}
