package main

import "strconv"

// chargeBody is the small JSON body of every benchmark charge.
const chargeBody = `{"amount":5000}`

// chargeHead is every charge's request line and headers before the key.
// One Host for all, because the authority is part of a key's scope.
const chargeHead = "POST /charge HTTP/1.1\r\nHost: bench.local\r\nContent-Type: application/json\r\n"

// appendCharge appends POST /charge with key (none when nil).
func appendCharge(dst []byte, key func([]byte) []byte) []byte {
	dst = append(dst, chargeHead...)
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

// noKey sends charges without a key: the route skips ext_proc.
func noKey() reqGen {
	req := appendCharge(nil, nil)
	return func(dst []byte, _ int, _ uint64) []byte { return append(dst, req...) }
}

// newKeys sends every request with a key never used before: prefix, then
// the connection and the sequence number.
func newKeys(prefix string) reqGen {
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
func cycledKeys(prefix string, n, conns int) reqGen {
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
// after delay: a request idemproxy holds a lock for all that time.
func slowRequest(key string, delay string) []byte {
	return slowRequestAt("", key, delay)
}

// slowRequestAt is slowRequest under a route prefix of envoy.yaml
// ("/wait": duplicates wait for the replay).
func slowRequestAt(prefix, key string, delay string) []byte {
	b := append([]byte(nil), "POST "+prefix+"/slow?delay="+delay+" HTTP/1.1\r\nHost: bench.local\r\nContent-Type: application/json\r\nIdempotency-Key: "...)
	b = append(b, key...)
	b = append(b, "\r\nContent-Length: "...)
	b = strconv.AppendInt(b, int64(len(chargeBody)), 10)
	b = append(b, "\r\n\r\n"...)
	return append(b, chargeBody...)
}
