package redisstore

import (
	"encoding/binary"
	"fmt"

	"github.com/idemproxy/idemproxy/internal/idem"
)

// headersV1 is the first byte of every encoded header list. Records outlive
// a deploy (they are kept for the retention period), so a later format can
// tell old encodings apart instead of misreading them.
const headersV1 byte = 1

// headersV2 is the encoding of a response that ended with trailers (body
// flag "T"): version byte, uvarint(number of headers), the headers as in
// v1, then the trailers as in v1. A version that knows only v1 refuses it
// as a corrupt record (and the "T" flag before it): fails closed.
const headersV2 byte = 2

// encodeHeaders encodes headers as a version byte followed, for each header
// in order, by uvarint(len(name)) name uvarint(len(value)) value. Length
// prefixes make it binary-safe (no separator can clash with a value) and
// keep it compact: a short header costs two bytes over its text.
func encodeHeaders(hs []idem.Header) []byte {
	n := 1
	for _, h := range hs {
		n += len(h.Name) + len(h.Value) + 2*binary.MaxVarintLen32
	}
	b := make([]byte, 0, n)
	b = append(b, headersV1)
	for _, h := range hs {
		b = binary.AppendUvarint(b, uint64(len(h.Name)))
		b = append(b, h.Name...)
		b = binary.AppendUvarint(b, uint64(len(h.Value)))
		b = append(b, h.Value...)
	}
	return b
}

// decodeHeaders reverses encodeHeaders. Redis is outside the process, so its
// contents are input like any other: corrupt bytes give ErrCorruptRecord,
// never a panic or an over-long allocation.
func decodeHeaders(b []byte) ([]idem.Header, error) {
	if len(b) == 0 {
		return nil, fmt.Errorf("%w: headers: empty encoding", ErrCorruptRecord)
	}
	if b[0] != headersV1 {
		return nil, fmt.Errorf("%w: headers: unknown encoding version %d", ErrCorruptRecord, b[0])
	}
	b = b[1:]
	var hs []idem.Header
	for len(b) > 0 {
		var h idem.Header
		var err error
		if h.Name, b, err = readField(b); err != nil {
			return nil, err
		}
		if h.Value, b, err = readField(b); err != nil {
			return nil, err
		}
		hs = append(hs, h)
	}
	return hs, nil
}

// readField reads one length-prefixed field and returns the rest of b.
func readField(b []byte) (string, []byte, error) {
	n, k := binary.Uvarint(b)
	if k <= 0 {
		return "", nil, fmt.Errorf("%w: headers: bad length prefix", ErrCorruptRecord)
	}
	b = b[k:]
	if n > uint64(len(b)) {
		return "", nil, fmt.Errorf("%w: headers: field of %d bytes, %d left", ErrCorruptRecord, n, len(b))
	}
	return string(b[:n]), b[n:], nil
}

// encodeWithTrailers encodes headers and trailers (headersV2).
func encodeWithTrailers(hs, trailers []idem.Header) []byte {
	v1 := encodeHeaders(append(hs[:len(hs):len(hs)], trailers...))
	b := make([]byte, 0, len(v1)+binary.MaxVarintLen32)
	b = append(b, headersV2)
	b = binary.AppendUvarint(b, uint64(len(hs)))
	return append(b, v1[1:]...)
}

// decodeWithTrailers reverses encodeWithTrailers; it also reads v1 (no
// trailers).
func decodeWithTrailers(b []byte) (hs, trailers []idem.Header, err error) {
	if len(b) == 0 || b[0] != headersV2 {
		hs, err = decodeHeaders(b)
		return hs, nil, err
	}
	n, k := binary.Uvarint(b[1:])
	if k <= 0 {
		return nil, nil, fmt.Errorf("%w: headers: bad header count", ErrCorruptRecord)
	}
	all, err := decodeHeaders(append([]byte{headersV1}, b[1+k:]...))
	if err != nil {
		return nil, nil, err
	}
	if n > uint64(len(all)) {
		return nil, nil, fmt.Errorf("%w: headers: %d headers of %d fields", ErrCorruptRecord, n, len(all))
	}
	return all[:n:n], all[n:], nil
}
