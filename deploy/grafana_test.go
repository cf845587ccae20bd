package deploy

import (
	"encoding/json"
	"testing"

	"github.com/grafana/grafana-foundation-sdk/go/cog/plugins"
	"github.com/grafana/grafana-foundation-sdk/go/dashboard"
	"github.com/stretchr/testify/require"

	"github.com/idemproxy/idemproxy/deploy/grafana"
)

// TestGrafanaDashboard_isGenerated: the committed JSON is what the
// Foundation SDK code builds (regenerate with `go run ./grafana/gen`), and
// the SDK reads it back into its Dashboard type.
func TestGrafanaDashboard_isGenerated(t *testing.T) {
	want, err := grafana.JSON()
	require.NoError(t, err)
	got := readRepoFile(t, "deploy", "grafana", "idemproxy-dashboard.json")
	require.Equal(t, string(want), string(got), "deploy/grafana/idemproxy-dashboard.json is stale: cd deploy && go run ./grafana/gen")

	plugins.RegisterDefaultPlugins()
	var d dashboard.Dashboard
	require.NoError(t, json.Unmarshal(got, &d))
	require.Equal(t, grafana.UID, *d.Uid)
	require.NotEmpty(t, dashboardQueries(t))
}

// dashboardQueries returns every panel target's PromQL, by panel title.
func dashboardQueries(t *testing.T) map[string][]string {
	t.Helper()
	var d struct {
		Panels []struct {
			Type, Title string
			Targets     []struct{ Expr string }
		}
	}
	require.NoError(t, json.Unmarshal(readRepoFile(t, "deploy", "grafana", "idemproxy-dashboard.json"), &d))
	out := map[string][]string{}
	for _, p := range d.Panels {
		if p.Type == "row" {
			continue
		}
		require.NotEmpty(t, p.Targets, p.Title)
		for _, tg := range p.Targets {
			require.NotEmpty(t, tg.Expr, p.Title)
			out[p.Title] = append(out[p.Title], tg.Expr)
		}
	}
	return out
}
