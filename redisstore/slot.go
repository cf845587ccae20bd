package redisstore

// Redis Cluster's key-to-slot function, so idemproxy can name a key of any
// slot it chooses: the store-reset markers live one per slot (marker.go),
// and the acquire script checks the one in its record's slot.

import (
	"fmt"
	"strconv"
	"strings"
)

// slotCount is the number of hash slots of Redis Cluster.
const slotCount = 16384

// crc16 is CRC-16/XMODEM (polynomial 0x1021, initial value 0), the
// checksum Redis Cluster hashes keys with.
func crc16(b []byte) uint16 {
	var crc uint16
	for _, c := range b {
		crc ^= uint16(c) << 8
		for range 8 {
			if crc&0x8000 != 0 {
				crc = crc<<1 ^ 0x1021
			} else {
				crc <<= 1
			}
		}
	}
	return crc
}

// keySlot is the slot of key: of its hash tag (the part between the first
// "{" and the "}" after it) when that is not empty, else of the whole key.
func keySlot(key string) int {
	if open := strings.IndexByte(key, '{'); open >= 0 {
		if end := strings.IndexByte(key[open+1:], '}'); end > 0 {
			key = key[open+1 : open+1+end]
		}
	}
	return int(crc16([]byte(key)) % slotCount)
}

// slotTags finds, for every slot, the smallest decimal number whose hash
// is that slot: "{n}" inside a key puts the key there. About 160,000
// checksums of short strings, a few milliseconds, done once per process.
func slotTags() ([slotCount]string, error) {
	var tags [slotCount]string
	left := slotCount
	for n := 0; left > 0; n++ {
		if n > 100*slotCount {
			return tags, fmt.Errorf("redisstore: no hash tag found for %d slots", left)
		}
		tag := strconv.Itoa(n)
		if s := crc16([]byte(tag)) % slotCount; tags[s] == "" {
			tags[s] = tag
			left--
		}
	}
	return tags, nil
}
