package deploy

import (
	"os/exec"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
	"sigs.k8s.io/yaml"

	"github.com/idemproxy/idemproxy/internal/testenv"
)

// ruleFile is a Prometheus rule file, as far as the tests read it.
type ruleFile struct {
	Groups []struct {
		Name  string `json:"name"`
		Rules []rule `json:"rules"`
	} `json:"groups"`
}

type rule struct {
	Record      string            `json:"record"`
	Alert       string            `json:"alert"`
	Expr        string            `json:"expr"`
	For         string            `json:"for"`
	Labels      map[string]string `json:"labels"`
	Annotations map[string]string `json:"annotations"`
}

func loadRules(t *testing.T) []rule {
	t.Helper()
	var f ruleFile
	require.NoError(t, yaml.UnmarshalStrict(readRepoFile(t, "deploy", "prometheus", "idemproxy-rules.yaml"), &f))
	var out []rule
	for _, g := range f.Groups {
		out = append(out, g.Rules...)
	}
	require.NotEmpty(t, out)
	return out
}

// TestPrometheusRules_promtool runs Debian's promtool on the rules and
// their unit tests.
func TestPrometheusRules_promtool(t *testing.T) {
	t.Parallel()
	bin := testenv.PromtoolBin(t)
	dir := repoPath("deploy", "prometheus")
	for _, args := range [][]string{
		{"check", "rules", "idemproxy-rules.yaml"},
		{"test", "rules", "idemproxy-rules.test.yaml"},
	} {
		cmd := exec.Command(bin, args...)
		cmd.Dir = dir
		out, err := cmd.CombinedOutput()
		require.NoError(t, err, "promtool %s:\n%s", strings.Join(args, " "), out)
		require.Contains(t, string(out), "SUCCESS")
	}
}

// TestPrometheusRules_everyAlertTestedAndDocumented: each alert fires in
// at least one promtool test, has a severity and a runbook, and the
// runbook in docs/operating.md has a line for it.
func TestPrometheusRules_everyAlertTestedAndDocumented(t *testing.T) {
	var tests struct {
		Tests []struct {
			AlertRuleTest []struct {
				Alertname string           `json:"alertname"`
				ExpAlerts []map[string]any `json:"exp_alerts"`
			} `json:"alert_rule_test"`
		} `json:"tests"`
	}
	require.NoError(t, yaml.Unmarshal(readRepoFile(t, "deploy", "prometheus", "idemproxy-rules.test.yaml"), &tests))
	fired := map[string]bool{}
	for _, tc := range tests.Tests {
		for _, a := range tc.AlertRuleTest {
			if len(a.ExpAlerts) > 0 {
				fired[a.Alertname] = true
			}
		}
	}
	operating := string(readRepoFile(t, "docs", "operating.md"))
	_, runbook, ok := strings.Cut(operating, "## Alerts and what to do")
	require.True(t, ok, "docs/operating.md has an alert runbook")
	for _, r := range loadRules(t) {
		if r.Alert == "" {
			require.True(t, strings.HasPrefix(r.Record, "idemproxy:"), "recording rules follow level:metric:operations")
			continue
		}
		require.True(t, fired[r.Alert], "%s never fires in idemproxy-rules.test.yaml", r.Alert)
		require.Contains(t, []string{"critical", "warning", "info"}, r.Labels["severity"], r.Alert)
		require.Equal(t, "docs/operating.md, Alerts and what to do, "+r.Alert, r.Annotations["runbook"])
		require.Contains(t, runbook, "**"+r.Alert+"**", "docs/operating.md runbook line for %s", r.Alert)
	}
}
