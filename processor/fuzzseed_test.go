package processor

import (
	"bytes"
	"fmt"
	"slices"
	"strings"
)

// Seed builders, in the format decodeFuzzInput reads.

func seedInput(config byte, streams ...[]byte) []byte {
	return append([]byte{config}, bytes.Join(streams, nil)...)
}

// seedStream: end and env as in the format; msgs from the builders below.
func seedStream(end, env byte, msgs ...[]byte) []byte {
	return append([]byte{end, env, byte(len(msgs))}, bytes.Join(msgs, nil)...)
}

// seedHeaders takes name, value pairs from fuzzNames and fuzzValues.
func seedHeaders(kind fuzzKind, flags byte, kv ...string) []byte {
	out := []byte{kind, flags, byte(len(kv) / 2)}
	for i := 0; i+1 < len(kv); i += 2 {
		out = append(out, byte(slices.Index(fuzzNames, kv[i])), byte(slices.Index(fuzzValues, kv[i+1])))
	}
	if bytes.IndexByte(out, 0xff) >= 0 {
		panic(fmt.Sprintf("seed header not in the tables: %q", kv))
	}
	return out
}

func seedBody(kind fuzzKind, eos bool, body string) []byte {
	flags := byte(0)
	if eos {
		flags = 1
	}
	return append([]byte{kind, flags, byte(len(body))}, body...)
}

func seedKeyed(eos bool, key string) []byte {
	flags := byte(3 << 1) // protocol_config: BUFFERED
	if eos {
		flags |= 1
	}
	return seedHeaders(fkReqHeaders, flags, ":method", "POST", ":path", "/charge", ":authority", "api.example.com",
		"idempotency-key", key)
}

func processSeeds() [][]byte {
	post := [][]byte{seedKeyed(false, "k1"), seedBody(fkReqBody, true, `{"amount":5000}`)}
	ok := [][]byte{seedHeaders(fkRespHeaders, 1<<1, ":status", "201", "content-type", "application/json",
		"set-cookie", "abc", "link", "abc", "link", "true"), seedBody(fkRespBody, false, `{"id":`), seedBody(fkRespBody, true, `42}`)}
	flow := append(append([][]byte{}, post...), ok...)
	return [][]byte{
		// A keyed POST with a body, stored, then replayed, then a mismatch.
		seedInput(0, seedStream(1, 0, flow...), seedStream(1, 0, post...),
			seedStream(0, 0, seedKeyed(false, "k1"), seedBody(fkReqBody, true, "other"))),
		// Without a key: passthrough; with a route that requires one: 400.
		seedInput(0, seedStream(0, 0, seedHeaders(fkReqHeaders, 0, ":method", "POST", ":path", "/charge")),
			seedStream(0, 3, seedHeaders(fkReqHeaders, 0, ":method", "POST", ":path", "/charge"))),
		// A 5xx releases the key; the retry runs and is stored.
		seedInput(0, seedStream(0, 0, seedKeyed(true, "k2"), seedHeaders(fkRespHeaders, 1, ":status", "500")),
			seedStream(1, 0, seedKeyed(true, `"k2"`), seedHeaders(fkRespHeaders, 1, ":status", "204"))),
		// The stream ends after the request went upstream, with hold: the retry gets 409.
		seedInput(2, seedStream(1, 0, seedKeyed(true, "k1")), seedStream(0, 0, seedKeyed(true, "k1"))),
		// Invalid and conflicting keys.
		seedInput(0, seedStream(0, 0, seedHeaders(fkReqHeaders, 0, ":method", "POST", "idempotency-key", "a\tb")),
			seedStream(0, 0, seedHeaders(fkReqHeaders, 1, "idempotency-key", "k1", "x-idempotency-key", "k2"))),
		// Protocol violations: headers twice, a streamed body, no oneof.
		seedInput(0, seedStream(0, 0, seedKeyed(false, "k1"), seedKeyed(false, "k1")),
			seedStream(0, 0, seedKeyed(false, "k1"), seedBody(fkReqBody, false, "part")),
			seedStream(0, 0, []byte{fkNoRequest, 0})),
		// Redis down: 503, then fail-open.
		seedInput(0, seedStream(0, 1<<2, seedKeyed(true, "k1"))),
		seedInput(1, seedStream(0, 1<<2, post...)),
		// An Envoy local reply before the request left; a timeout after.
		seedInput(0, seedStream(0, 0, seedKeyed(true, "k1"), seedHeaders(fkRespHeaders, 2<<1, ":status", "500")),
			seedStream(0, 0, seedKeyed(true, "k2"), seedHeaders(fkRespHeaders, 3<<1, ":status", "500"))),
		// The lease is taken by another owner mid-response; a short route TTL.
		seedInput(0, seedStream(0, 1, append(append([][]byte{}, post...), ok[0], []byte{fkSteal, 0}, ok[1], ok[2])...)),
		// A response body over the 8-byte cap, then its retry.
		seedInput(4, seedStream(0, 0, flow...), seedStream(0, 0, post...)),
		// A failing Send, a receive error, an invalid route policy.
		seedInput(0, seedStream(1<<2, 0, post...), seedStream(2, 0, post...), seedStream(0, 2, post...)),
		// The response before the request, trailers, nil messages.
		seedInput(0, seedStream(0, 0, ok[0], ok[2], []byte{fkReqTrailers, 0}, []byte{fkRespTrailers, 0},
			[]byte{fkNilReqHeaders, 0}, []byte{fkNilReqBody, 0}, []byte{fkNilRespHeaders, 0}, []byte{fkNilRespBody, 0})),
		// A 101 response: released, never stored, so never replayed.
		seedInput(0, seedStream(0, 0, seedKeyed(true, "k1"), seedHeaders(fkRespHeaders, 1, ":status", "101")),
			seedStream(0, 0, seedKeyed(true, "k1"))),
		// A keyed body Envoy does not buffer, and huge headers.
		seedInput(0, seedStream(0, 0, seedHeaders(fkReqHeaders, 1<<1, ":method", "POST", "idempotency-key", "k1")),
			seedStream(0, 0, seedHeaders(fkReqHeaders, 1, ":method", "POST", "idempotency-key",
				strings.Repeat("k", 256), "x-trace", strings.Repeat("h", 64<<10)))),
	}
}
