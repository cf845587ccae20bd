package auth

import (
	"testing"

	"github.com/stretchr/testify/require"
)

func TestBearer(t *testing.T) {
	for in, want := range map[string]string{"Bearer abc": "abc", "bearer abc": "abc", "BEARER  abc ": "abc"} {
		got, ok := Bearer(in)
		require.True(t, ok, in)
		require.Equal(t, want, got, in)
	}
	for _, in := range []string{"", "Bearer", "Bearer ", "Basic abc", "Bearerabc", "abc"} {
		_, ok := Bearer(in)
		require.False(t, ok, in)
	}
}
