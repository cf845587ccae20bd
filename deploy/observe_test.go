package deploy

import (
	"encoding/json"
	"fmt"
	"net/http"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/idemproxy/idemproxy/internal/testenv"
)

// alertExpr splits an alert's expression into what it measures and its
// threshold: `LHS OP NUMBER`, the shape every alert here has.
var alertExpr = regexp.MustCompile(`(?s)^(.*\S)\s*(>|<|==|!=|>=|<=)\s*([0-9.]+)\s*$`)

// TestPrometheus_rulesAndDashboardOnRealTraffic puts the shipped rules and
// dashboard in front of a real Prometheus (Debian's) that scrapes a real
// idemproxy under traffic through real Envoy and Redis: every rule loads
// and evaluates without error, every recording rule and every alert's
// measure returns series, every dashboard query parses and returns series,
// and the alerts a Redis outage should raise fire. The copy Prometheus
// loads has its `for:` hold times cut to 0s (the expressions are the
// shipped ones), so the test need not wait out minutes.
func TestPrometheus_rulesAndDashboardOnRealTraffic(t *testing.T) {
	t.Parallel()
	s := startObservedStack(t)
	rules := regexp.MustCompile(`(?m)^(\s+for:) \d+m$`).ReplaceAll(readRepoFile(t, "deploy", "prometheus", "idemproxy-rules.yaml"), []byte("$1 0s"))
	prom := testenv.StartPrometheus(t, prometheusConfig(s.adminAddr), map[string][]byte{"rules.yaml": rules})
	// Prometheus starts scraping some seconds after it is ready; rates
	// need the counters seen before the traffic.
	testenv.WaitFor(t, 30*time.Second, "two scrapes of idemproxy", func() bool {
		return len(query(t, prom, `count_over_time(up{job="idemproxy"}[1m]) >= 2`).Data.Result) > 0
	})

	// Traffic: first runs, replays, mismatches and a conflict.
	for i := range 10 {
		key := fmt.Sprintf("obs-%d-%d", time.Now().UnixNano(), i)
		require.Equal(t, http.StatusOK, s.post("/charge", `{"amount":5}`, key))
		require.Equal(t, http.StatusOK, s.post("/charge", `{"amount":5}`, key))
		if i < 2 {
			require.Equal(t, http.StatusUnprocessableEntity, s.post("/charge", `{"amount":6}`, key))
		}
	}
	slow := func(key string) <-chan int {
		ch := make(chan int, 1)
		go func() { ch <- s.post("/slow", "", key) }()
		testenv.WaitFor(t, 10*time.Second, "the slow request to hold its key", func() bool {
			return s.metric(t, "idemproxy_active_streams") >= 1
		})
		return ch
	}
	key := fmt.Sprintf("obs-slow-%d", time.Now().UnixNano())
	done := slow(key)
	require.Equal(t, http.StatusConflict, s.post("/slow", "", key))
	require.Equal(t, http.StatusOK, testenv.Receive(t, done, 20*time.Second, "the slow request"))

	// The outage: Redis goes while a request runs, so its response cannot
	// be stored (retried, then kept for a background completion), and
	// keyed requests get 503.
	done = slow(key + "-outage")
	s.redis.Stop()
	for i := range 10 {
		require.Equal(t, http.StatusServiceUnavailable, s.post("/charge", "{}", fmt.Sprintf("%s-down-%d", key, i)))
	}
	testenv.Receive(t, done, 20*time.Second, "the request cut off from Redis")
	testenv.WaitFor(t, 10*time.Second, "a retried settling write", func() bool {
		return s.metric(t, `idemproxy_store_retries_total{op="complete"}`) >= 1
	})

	t.Run("the outage fires its alerts", func(t *testing.T) {
		for _, name := range []string{"IdemproxyStoreErrors", "IdemproxyNotReady", "IdemproxyStoreRetries", "IdemproxyRedisNoPersistence"} {
			testenv.WaitFor(t, 30*time.Second, name+" firing", func() bool {
				r := query(t, prom, `ALERTS{alertstate="firing",alertname="`+name+`"}`)
				return len(r.Data.Result) > 0
			})
		}
		raw, err := testenv.GetText(t.Context(), http.DefaultClient, prom.URL+"/api/v1/alerts")
		require.NoError(t, err)
		t.Logf("firing alerts: %s", raw)
	})

	t.Run("every rule evaluates and returns series", func(t *testing.T) {
		raw, err := testenv.GetText(t.Context(), http.DefaultClient, prom.URL+"/api/v1/rules")
		require.NoError(t, err)
		var loaded struct {
			Data struct {
				Groups []struct {
					Rules []struct{ Name, Health, LastError string }
				}
			}
		}
		require.NoError(t, json.Unmarshal([]byte(raw), &loaded))
		n := 0
		for _, g := range loaded.Data.Groups {
			for _, r := range g.Rules {
				n++
				require.Equal(t, "ok", r.Health, "%s: %s", r.Name, r.LastError)
			}
		}
		rules := loadRules(t)
		require.Equal(t, len(rules), n, "Prometheus loaded every rule")
		for _, r := range rules {
			if r.Record != "" {
				require.NotEmpty(t, query(t, prom, r.Record).Data.Result, "recording rule %s has no series", r.Record)
				continue
			}
			m := alertExpr.FindStringSubmatch(r.Expr)
			require.NotNil(t, m, "%s: expression is not `measure OP threshold`", r.Alert)
			query(t, prom, r.Expr)
			require.NotEmpty(t, query(t, prom, m[1]).Data.Result, "%s measures nothing: %s", r.Alert, m[1])
		}
	})

	t.Run("every dashboard query returns series", func(t *testing.T) {
		for title, exprs := range dashboardQueries(t) {
			for _, expr := range exprs {
				// Grafana's own interval variable; 1m covers 60 scrapes here.
				e := strings.ReplaceAll(expr, "$__rate_interval", "1m")
				require.NotEmpty(t, query(t, prom, e).Data.Result, "panel %q: %s", title, expr)
			}
		}
	})
}
