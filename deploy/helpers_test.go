package deploy

import (
	"encoding/json"
	"errors"
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	sigsjson "sigs.k8s.io/json"
	"sigs.k8s.io/yaml"

	"github.com/idemproxy/idemproxy/internal/testenv"
)

// root is the repository root, seen from this module's directory (go test
// runs each package in its own directory).
const root = ".."

// repoPath joins path elements under the repository root.
func repoPath(elem ...string) string {
	return filepath.Join(append([]string{root}, elem...)...)
}

func readRepoFile(t *testing.T, elem ...string) []byte {
	t.Helper()
	b, err := os.ReadFile(repoPath(elem...))
	require.NoError(t, err)
	return b
}

// yamlDocs splits a multi-document YAML file, dropping empty documents.
func yamlDocs(t *testing.T, raw []byte) [][]byte {
	t.Helper()
	var docs [][]byte
	for _, d := range regexp.MustCompile(`(?m)^---\s*$`).Split(string(raw), -1) {
		if strings.TrimSpace(stripComments(d)) != "" {
			docs = append(docs, []byte(d))
		}
	}
	return docs
}

func stripComments(doc string) string {
	var b strings.Builder
	for _, line := range strings.Split(doc, "\n") {
		if !strings.HasPrefix(strings.TrimSpace(line), "#") {
			b.WriteString(line + "\n")
		}
	}
	return b.String()
}

// decodeStrict decodes one YAML document into v the way the API server's
// strict field validation does (`kubectl apply --validate=strict`): field
// names match case-sensitively, and an unknown or duplicated field is an
// error.
func decodeStrict(t *testing.T, doc []byte, v any) {
	t.Helper()
	js, err := yaml.YAMLToJSON(doc)
	require.NoError(t, err)
	strictErrs, err := sigsjson.UnmarshalStrict(js, v, sigsjson.DisallowDuplicateFields, sigsjson.DisallowUnknownFields)
	require.NoError(t, err, "decode into %T:\n%s", v, doc)
	require.NoError(t, errors.Join(strictErrs...), "strict decode into %T:\n%s", v, doc)
}

// typeOf reads a manifest's apiVersion and kind.
func typeOf(t *testing.T, doc []byte) (apiVersion, kind string) {
	t.Helper()
	var tm struct {
		APIVersion string `json:"apiVersion"`
		Kind       string `json:"kind"`
	}
	require.NoError(t, yaml.Unmarshal(doc, &tm))
	require.NotEmpty(t, tm.Kind, "manifest without kind:\n%s", doc)
	return tm.APIVersion, tm.Kind
}

// generic is decoded YAML as maps and slices, for configs (Envoy's) that
// have no Go types here or are compared as a whole.
type generic = map[string]any

func loadGeneric(t *testing.T, elem ...string) generic {
	t.Helper()
	var m generic
	require.NoError(t, yaml.Unmarshal(readRepoFile(t, elem...), &m))
	return m
}

// dig walks maps by key and slices by index ("0", "1"...).
func dig(t *testing.T, v any, path ...string) any {
	t.Helper()
	for i, p := range path {
		switch c := v.(type) {
		case map[string]any:
			next, ok := c[p]
			require.True(t, ok, "no %q at %s", p, strings.Join(path[:i], "."))
			v = next
		case []any:
			var n int
			_, err := fmt.Sscan(p, &n)
			require.NoError(t, err, "index %q at %s", p, strings.Join(path[:i], "."))
			require.Less(t, n, len(c), "index %d at %s", n, strings.Join(path[:i], "."))
			v = c[n]
		default:
			require.FailNow(t, "cannot descend", "%q at %s: %T", p, strings.Join(path[:i], "."), v)
		}
	}
	return v
}

// deepCopy copies decoded YAML, so a test can edit it.
func deepCopy(t *testing.T, v any) any {
	t.Helper()
	b, err := json.Marshal(v)
	require.NoError(t, err)
	var out any
	require.NoError(t, json.Unmarshal(b, &out))
	return out
}

// envoyVersion is the pinned Envoy version: internal/testenv's, the one
// place the demo, the tests and the benchmark take it from.
func envoyVersion(t *testing.T) string {
	t.Helper()
	return testenv.EnvoyVersion
}

func mustAbs(t *testing.T, path string) string {
	t.Helper()
	abs, err := filepath.Abs(path)
	require.NoError(t, err)
	return abs
}

func mustDuration(t *testing.T, s string) time.Duration {
	t.Helper()
	d, err := time.ParseDuration(s)
	require.NoError(t, err)
	return d
}

// portOf reads port_value of an Envoy socket_address.
func portOf(t *testing.T, socketAddress any) string {
	t.Helper()
	return fmt.Sprint(dig(t, socketAddress, "port_value"))
}

// idemproxyEnvVars lists the environment variables idemproxy reads: one per
// flag defined in cmd/idemproxy/config.go (IDEMPROXY_ + the flag's name in
// upper case, dashes as underscores). Read from the source, so a renamed
// flag breaks this test instead of silently dropping a setting.
func idemproxyEnvVars(t *testing.T) []string {
	t.Helper()
	path := repoPath("cmd", "idemproxy", "config.go")
	f, err := parser.ParseFile(token.NewFileSet(), path, nil, 0)
	require.NoError(t, err)
	definers := map[string]bool{"StringVar": true, "DurationVar": true, "BoolVar": true, "IntVar": true,
		"TextVar": true, "Var": true, "Func": true, "UintVar": true, "Int64Var": true, "Float64Var": true}
	var out []string
	ast.Inspect(f, func(n ast.Node) bool {
		call, ok := n.(*ast.CallExpr)
		if !ok {
			return true
		}
		sel, ok := call.Fun.(*ast.SelectorExpr)
		if !ok || !definers[sel.Sel.Name] {
			return true
		}
		if x, ok := sel.X.(*ast.Ident); !ok || x.Name != "fs" {
			return true
		}
		for _, arg := range call.Args {
			if lit, ok := arg.(*ast.BasicLit); ok && lit.Kind == token.STRING {
				name, err := strconv.Unquote(lit.Value)
				require.NoError(t, err)
				out = append(out, "IDEMPROXY_"+strings.ToUpper(strings.ReplaceAll(name, "-", "_")))
				break
			}
		}
		return true
	})
	require.Contains(t, out, "IDEMPROXY_REDIS_URL", "no flags found in %s", path)
	return out
}
