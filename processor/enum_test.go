package processor

import (
	"encoding"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestChoices_text(t *testing.T) {
	type choice interface {
		encoding.TextUnmarshaler
		encoding.TextMarshaler
	}
	tests := []struct {
		name    string
		dst     choice
		names   []string
		badText string
		wantErr string
	}{
		{"in progress", new(InProgress), []string{"conflict", "wait"}, "linger", `"linger" must be conflict or wait`},
		{"mode", new(Mode), []string{"enforce", "shadow"}, "audit", `"audit" must be enforce or shadow`},
		{"on unknown", new(OnUnknown), []string{"hold", "rerun-after-ttl"}, "retry", `"retry" must be hold or rerun-after-ttl`},
		{"on unknown, the old name", new(OnUnknown), []string{"hold", "rerun-after-ttl"}, "expire", "expire is no longer accepted"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			for _, name := range tc.names {
				require.NoError(t, tc.dst.UnmarshalText([]byte(name)))
				got, err := tc.dst.MarshalText()
				require.NoError(t, err)
				require.Equal(t, name, string(got), "a name reads back as itself")
			}
			require.ErrorContains(t, tc.dst.UnmarshalText([]byte(tc.badText)), tc.wantErr)
			got, _ := tc.dst.MarshalText()
			require.Equal(t, tc.names[len(tc.names)-1], string(got), "a refused value leaves the choice as it was")
		})
	}
	var zero Config
	require.Equal(t, InProgressConflict, zero.InProgress, "the zero values are the safe defaults")
	require.Equal(t, ModeEnforce, zero.Mode)
	require.Equal(t, OnUnknownHold, zero.OnUnknown)
	require.Equal(t, "invalid(7)", Mode(7).String())
	bad := DefaultConfig()
	bad.OnUnknown = OnUnknown(2)
	require.ErrorContains(t, bad.Validate(), "must be valid choices")
}
