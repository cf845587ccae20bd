package main

import (
	"strconv"

	"github.com/idemproxy/idemproxy/internal/loadgen"
)

// chargeBody is the small JSON body of every benchmark charge.
const chargeBody = `{"amount":5000}`

// appendPost appends a POST of the charge body to target, with key (none
// when nil). One Host for all, because the authority is part of a key's
// scope.
func appendPost(dst []byte, target string, key func([]byte) []byte) []byte {
	dst = append(dst, "POST "...)
	dst = append(dst, target...)
	dst = append(dst, " HTTP/1.1\r\nHost: bench.local\r\nContent-Type: application/json\r\n"...)
	if key != nil {
		dst = append(dst, "Idempotency-Key: "...)
		dst = key(dst)
		dst = append(dst, "\r\n"...)
	}
	dst = append(dst, "Content-Length: "...)
	dst = strconv.AppendInt(dst, int64(len(chargeBody)), 10)
	dst = append(dst, "\r\n\r\n"...)
	return append(dst, chargeBody...)
}

// appendCharge appends POST /charge with key (none when nil).
func appendCharge(dst []byte, key func([]byte) []byte) []byte { return appendPost(dst, "/charge", key) }

// noKey sends charges without a key: the route skips ext_proc.
func noKey() loadgen.Gen {
	req := appendCharge(nil, nil)
	return func(dst []byte, _ int, _ uint64) []byte { return append(dst, req...) }
}

// newKeys sends every request with a key never used before: prefix, then
// the connection and the sequence number.
func newKeys(prefix string) loadgen.Gen {
	return func(dst []byte, conn int, seq uint64) []byte {
		return appendCharge(dst, func(b []byte) []byte {
			b = append(b, prefix...)
			b = strconv.AppendInt(b, int64(conn), 10)
			b = append(b, '-')
			return strconv.AppendUint(b, seq, 10)
		})
	}
}

// cycledKeys sends keys prefix0..prefix(n-1) in turn, spread over the
// connections so that concurrent requests carry different keys.
func cycledKeys(prefix string, n, conns int) loadgen.Gen {
	return func(dst []byte, conn int, seq uint64) []byte {
		return appendCharge(dst, func(b []byte) []byte {
			return indexedKey(b, prefix, (seq*uint64(conns)+uint64(conn))%uint64(n))
		})
	}
}

func indexedKey(b []byte, prefix string, i uint64) []byte {
	return strconv.AppendUint(append(b, prefix...), i, 10)
}

// slowRequest is a keyed request to the backend's /slow, which answers
// after delay: a request idemproxy holds a lock for all that time. prefix
// is a route prefix of envoy.yaml ("/wait": duplicates wait for the
// replay; "": they do not).
func slowRequest(prefix, key string, delay string) []byte {
	return appendPost(nil, prefix+"/slow?delay="+delay, func(b []byte) []byte { return append(b, key...) })
}
