package envoy

import (
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/idemproxy/idemproxy/internal/testenv"
)

// TestConfigs_Validate passes every Envoy configuration we ship through the
// real Envoy's own validation.
func TestConfigs_Validate(t *testing.T) {
	t.Parallel()
	bin := testenv.EnvoyBin(t)
	configs, err := filepath.Glob("*.yaml")
	require.NoError(t, err)
	require.NotEmpty(t, configs)
	for _, cfg := range configs {
		t.Run(cfg, func(t *testing.T) {
			testenv.ValidateEnvoy(t, bin, cfg)
		})
	}
}
