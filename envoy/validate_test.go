package envoy

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"
	"go.yaml.in/yaml/v3"

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

// TestConfigs_CircuitBreakers: Envoy's default of 1,024 concurrent requests
// per cluster would make the 1,025th keyed request in flight fail; every
// config we ship sizes the idemproxy cluster far above the loads we test.
func TestConfigs_CircuitBreakers(t *testing.T) {
	t.Parallel()
	configs, err := filepath.Glob("*.yaml")
	require.NoError(t, err)
	for _, cfg := range configs {
		t.Run(cfg, func(t *testing.T) {
			raw, err := os.ReadFile(cfg)
			require.NoError(t, err)
			var bootstrap struct {
				StaticResources struct {
					Clusters []struct {
						Name            string
						CircuitBreakers struct {
							Thresholds []struct {
								MaxRequests        int `yaml:"max_requests"`
								MaxPendingRequests int `yaml:"max_pending_requests"`
							}
						} `yaml:"circuit_breakers"`
					}
				} `yaml:"static_resources"`
			}
			require.NoError(t, yaml.Unmarshal(raw, &bootstrap))
			found := false
			for _, c := range bootstrap.StaticResources.Clusters {
				if c.Name != "idemproxy" {
					continue
				}
				found = true
				require.Len(t, c.CircuitBreakers.Thresholds, 1)
				th := c.CircuitBreakers.Thresholds[0]
				require.GreaterOrEqual(t, th.MaxRequests, 16384)
				require.GreaterOrEqual(t, th.MaxPendingRequests, 16384)
			}
			require.True(t, found, "no idemproxy cluster in %s", cfg)
		})
	}
}
