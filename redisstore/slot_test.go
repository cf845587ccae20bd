package redisstore

import (
	"testing"

	"github.com/stretchr/testify/require"
)

// TestKeySlot: the slot function is Redis Cluster's (the CRC16/XMODEM
// check value, and slots redis-cli's CLUSTER KEYSLOT gives), and every
// slot has a tag that lands there.
func TestKeySlot(t *testing.T) {
	require.Equal(t, uint16(0x31C3), crc16([]byte("123456789")))
	require.Equal(t, 12182, keySlot("foo"))
	require.Equal(t, 5061, keySlot("bar"))
	require.Equal(t, keySlot("user1000"), keySlot("{user1000}.following"), "the hash tag decides")
	require.Equal(t, keySlot("{}x"), int(crc16([]byte("{}x"))%slotCount), "an empty tag is no tag")
	tags, err := slotTags()
	require.NoError(t, err)
	for slot, tag := range tags {
		require.Equal(t, slot, keySlot("idemproxy:store-marker{"+tag+"}"))
	}
}

// TestMarkers_keys: one marker outside a cluster; one per slot on a
// cluster, in the slot of the record it guards; one when the prefix has a
// hash tag of its own.
func TestMarkers_keys(t *testing.T) {
	m, err := NewMarkers("", ModeStandalone)
	require.NoError(t, err)
	require.Equal(t, "idemproxy:store-marker", m.forRecord(recordKey("idemproxy:", "k")))
	require.Equal(t, 1, m.slots())

	c, err := NewMarkers("idemproxy:", ModeCluster)
	require.NoError(t, err)
	rk := recordKey("idemproxy:", "k")
	require.Equal(t, keySlot(rk), keySlot(c.forRecord(rk)))
	require.Equal(t, slotCount, c.slots())
	require.True(t, c.isMarker(c.key(7)))

	tagged, err := NewMarkers("{app}:", ModeCluster)
	require.NoError(t, err)
	require.Equal(t, "{app}:store-marker", tagged.forRecord(recordKey("{app}:", "k")))
}

// TestDecideMarker: what each marker read means.
func TestDecideMarker(t *testing.T) {
	e1 := marker{present: true, epoch: "e1", born: 1}
	e2 := marker{present: true, epoch: "e2", born: 2}
	noted := marker{present: true, epoch: "e2", reset: 5, was: "e1"}
	ackedNote := marker{present: true, epoch: "e2", acked: 6, was: "e1"}
	for _, tc := range []struct {
		name    string
		m       marker
		seen    string
		others  bool
		created bool
		want    markerAction
	}{
		{"a new store", marker{}, "", false, false, markerCreate},
		{"the marker we read is gone", marker{}, "e1", false, false, markerReset},
		{"none here, others have theirs", marker{}, "", true, false, markerReset},
		{"none here, others too, but we wrote this one", marker{}, "", true, true, markerCreate},
		{"as we read it", e1, "e1", false, false, markerKeep},
		{"first read", e1, "", true, false, markerKeep},
		{"another epoch, nothing noted", e2, "e1", false, false, markerReset},
		{"another epoch, the reset noted", noted, "e1", false, false, markerKeep},
		{"another epoch, the reset noted and acknowledged", ackedNote, "e1", false, false, markerKeep},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, why := decideMarker(tc.m, tc.seen, tc.others, tc.created)
			require.Equal(t, tc.want, got)
			require.Equal(t, got == markerReset, why != "")
		})
	}
}
