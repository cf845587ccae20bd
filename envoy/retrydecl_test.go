package envoy

import (
	"os"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
	"go.yaml.in/yaml/v3"
)

// neverSentRetryOn are the retry_on reasons that only re-send a request
// that never reached the upstream.
var neverSentRetryOn = map[string]bool{"reset-before-request": true, "connect-failure": true, "refused-stream": true}

// TestShippedConfigs_retryDeclarations: every virtual host of the shipped
// configs asks for Envoy's attempt counts, no keyed route retries what may
// have reached the upstream, and a route declares x-idemproxy-retries:
// never-sent exactly when it has a retry policy limited to never-sent
// reasons (undeclared, each of its retries would be alerted as a possible
// double run; declared without one, a double run would go unseen).
func TestShippedConfigs_retryDeclarations(t *testing.T) {
	for _, file := range []string{"envoy.yaml", "envoy-compose.yaml"} {
		raw, err := os.ReadFile(file)
		require.NoError(t, err)
		var doc map[string]any
		require.NoError(t, yaml.Unmarshal(raw, &doc))
		hosts := 0
		for _, hcm := range find(doc, "route_config") {
			for _, vh := range list(get(hcm, "virtual_hosts")) {
				hosts++
				name := get(vh, "name")
				require.Equal(t, true, get(vh, "include_attempt_count_in_response"), "%s: virtual host %v", file, name)
				require.Equal(t, true, get(vh, "include_request_attempt_count"), "%s: virtual host %v", file, name)
				for _, r := range list(get(vh, "routes")) {
					where := file + ": route " + strings.TrimSpace(yamlString(t, get(r, "match")))
					policy := get(get(r, "route"), "retry_policy")
					if policy == nil {
						policy = get(vh, "retry_policy")
					}
					extProc := get(get(r, "typed_per_filter_config"), "envoy.filters.http.ext_proc")
					keyed := get(extProc, "disabled") != true
					declared := ""
					for _, md := range list(get(get(extProc, "overrides"), "grpc_initial_metadata")) {
						if get(md, "key") == "x-idemproxy-retries" {
							declared, _ = get(md, "value").(string)
						}
					}
					if policy == nil {
						require.NotEqual(t, "never-sent", declared, "%s declares never-sent retries without a retry policy", where)
						continue
					}
					retryOn, _ := get(policy, "retry_on").(string)
					safe := true
					for _, reason := range strings.Split(retryOn, ",") {
						safe = safe && neverSentRetryOn[strings.TrimSpace(reason)]
					}
					if !keyed {
						continue
					}
					require.True(t, safe, "%s retries %q on a keyed route: a retry may run the request twice", where, retryOn)
					require.Equal(t, "never-sent", declared, "%s has a never-sent retry policy (%s) but does not declare it: "+
						"add - { key: x-idemproxy-retries, value: never-sent } to its grpc_initial_metadata", where, retryOn)
				}
			}
		}
		require.NotZero(t, hosts, file)
	}
}

// find returns every map under v that has key k, and its value there.
func find(v any, k string) []any {
	var out []any
	switch x := v.(type) {
	case map[string]any:
		for key, val := range x {
			if key == k {
				out = append(out, val)
			} else {
				out = append(out, find(val, k)...)
			}
		}
	case []any:
		for _, e := range x {
			out = append(out, find(e, k)...)
		}
	}
	return out
}

func get(v any, k string) any {
	m, _ := v.(map[string]any)
	return m[k]
}

func list(v any) []any {
	l, _ := v.([]any)
	return l
}

func yamlString(t *testing.T, v any) string {
	out, err := yaml.Marshal(v)
	require.NoError(t, err)
	return strings.ReplaceAll(string(out), "\n", " ")
}
