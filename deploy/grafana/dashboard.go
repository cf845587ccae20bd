// Package grafana builds idemproxy's Grafana dashboard with the Grafana
// Foundation SDK. `go run ./grafana/gen` (from deploy/) writes it to
// idemproxy-dashboard.json, the file to import; the deploy tests check the
// file is what this code builds, and run every panel's query in a real
// Prometheus that scraped a real idemproxy.
package grafana

import (
	"encoding/json"

	"github.com/grafana/grafana-foundation-sdk/go/cog"
	"github.com/grafana/grafana-foundation-sdk/go/common"
	"github.com/grafana/grafana-foundation-sdk/go/dashboard"
	"github.com/grafana/grafana-foundation-sdk/go/prometheus"
	"github.com/grafana/grafana-foundation-sdk/go/stat"
	"github.com/grafana/grafana-foundation-sdk/go/timeseries"
)

// UID is the dashboard's stable uid, so re-imports replace it.
const UID = "idemproxy-overview"

// keyed selects the requests idemproxy decided about.
const keyed = `outcome!="passthrough"`

// ds is the panels' datasource: the dashboard's ${datasource} variable.
var ds = common.DataSourceRef{Type: cog.ToPtr("prometheus"), Uid: cog.ToPtr("${datasource}")}

func query(expr, legend string) *prometheus.DataqueryBuilder {
	return prometheus.NewDataqueryBuilder().Expr(expr).LegendFormat(legend).Range()
}

func series(title, desc, unit string, queries ...*prometheus.DataqueryBuilder) *timeseries.PanelBuilder {
	p := timeseries.NewPanelBuilder().Title(title).Description(desc).Unit(unit).Datasource(ds).Height(8).Span(12).Min(0)
	for i, q := range queries {
		p.WithTarget(q.RefId(string(rune('A' + i))))
	}
	return p
}

func single(title, desc, unit string, q *prometheus.DataqueryBuilder) *stat.PanelBuilder {
	return stat.NewPanelBuilder().Title(title).Description(desc).Unit(unit).Datasource(ds).Height(4).Span(6).
		ReduceOptions(common.NewReduceDataOptionsBuilder().Calcs([]string{"lastNotNull"})).
		WithTarget(q.RefId("A"))
}

// Build returns the dashboard.
func Build() (dashboard.Dashboard, error) {
	rate := func(sel string) string { return `rate(idemproxy_requests_total{` + sel + `}[$__rate_interval])` }
	return dashboard.NewDashboardBuilder("IdemProxy").
		Uid(UID).
		Description("Decisions, keys and Redis of idemproxy, the Envoy ext_proc idempotency server. Alerts and runbook: docs/operating.md.").
		Tags([]string{"idemproxy", "envoy", "redis"}).
		Refresh("30s").
		Time("now-3h", "now").
		Timezone(common.TimeZoneBrowser).
		WithVariable(dashboard.NewDatasourceVariableBuilder("datasource").Label("Prometheus").Type("prometheus")).
		WithRow(dashboard.NewRowBuilder("Requests")).
		WithPanel(single("Ready replicas", "Replicas whose Redis answers and may be trusted (idemproxy_ready).", "none",
			query(`sum(idemproxy_ready)`, "ready"))).
		WithPanel(single("Replayed", "Share of keyed requests answered from a stored response.", "percentunit",
			query(`sum(`+rate(`outcome="replayed"`)+`) / sum(`+rate(keyed)+`)`, "replayed"))).
		WithPanel(single("Refused: store (503)", "Share of keyed requests refused because Redis failed or is unsafe.", "percentunit",
			query(`sum(`+rate(`outcome=~"store_error|store_unsafe"`)+`) / sum(`+rate(keyed)+`)`, "store errors"))).
		WithPanel(single("Conflicts (409)", "Share of keyed requests that met their key still running.", "percentunit",
			query(`sum(`+rate(`outcome="in_progress_conflict"`)+`) / sum(`+rate(keyed)+`)`, "conflicts"))).
		WithPanel(series("Decisions", "Keyed requests by what idemproxy decided (idemproxy_requests_total).", "reqps",
			query(`sum by (outcome) (`+rate(keyed)+`)`, "{{outcome}}"))).
		WithPanel(series("Unguarded and refused", "Requests let through unguarded (fail_open) or refused by the store.", "reqps",
			query(`sum by (outcome) (`+rate(`outcome=~"fail_open|store_error|store_unsafe|outcome_unknown"`)+`)`, "{{outcome}}"))).
		WithRow(dashboard.NewRowBuilder("Keys")).
		WithPanel(series("What became of acquired keys", "Stored, released, or unknown (idemproxy_responses_total).", "ops",
			query(`sum by (result) (rate(idemproxy_responses_total[$__rate_interval]))`, "{{result}}"))).
		WithPanel(series("Held keys", "Keys in progress and keys held as unknown outcomes, at the last count.", "short",
			query(`sum by (state) (idemproxy_held_keys)`, "{{state}}"))).
		WithPanel(series("Leases", "Leases lost, and watchdog renewals that failed.", "short",
			query(`sum by (stage) (increase(idemproxy_leases_lost_total[$__rate_interval]))`, "lost at {{stage}}"),
			query(`sum by (result) (increase(idemproxy_lock_renewals_total{result!="ok"}[$__rate_interval]))`, "renewal {{result}}"))).
		WithPanel(series("Settling writes retried", "Store, release and abandon writes tried again after a failure.", "ops",
			query(`sum by (op) (rate(idemproxy_store_retries_total[$__rate_interval]))`, "{{op}}"))).
		WithRow(dashboard.NewRowBuilder("Redis")).
		WithPanel(series("Redis latency", "99th and 50th percentile of store calls by operation.", "s",
			query(`histogram_quantile(0.99, sum by (op, le) (rate(idemproxy_redis_duration_seconds_bucket[$__rate_interval])))`, "p99 {{op}}"),
			query(`histogram_quantile(0.5, sum by (op, le) (rate(idemproxy_redis_duration_seconds_bucket[$__rate_interval])))`, "p50 {{op}}"))).
		WithPanel(series("Redis safety", "1 while Redis may evict keys; persistence kind (none: a restart forgets every key); primaries held after a store reset (their keys get 503 store-reset).", "short",
			query(`max(idemproxy_redis_evicting)`, "evicting"),
			query(`max by (kind) (idemproxy_redis_persistence)`, "persistence {{kind}}"),
			query(`max(idemproxy_store_reset_held_primaries)`, "held after a store reset"))).
		WithPanel(series("Open streams", "ext_proc streams open now, per replica.", "short",
			query(`sum by (instance) (idemproxy_active_streams)`, "{{instance}}"))).
		Build()
}

// JSON is the dashboard as the file to import, indented, newline-ended.
func JSON() ([]byte, error) {
	d, err := Build()
	if err != nil {
		return nil, err
	}
	b, err := json.MarshalIndent(d, "", "  ")
	if err != nil {
		return nil, err
	}
	return append(b, '\n'), nil
}
