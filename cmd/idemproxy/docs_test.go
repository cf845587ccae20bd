package main

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/idemproxy/idemproxy/processor"
)

// The flag table of docs/configuration.md sits between these markers; the
// prose around it is written by hand.
const (
	flagTableBegin = "<!-- BEGIN GENERATED FLAG TABLE: do not edit, see the note at the top -->"
	flagTableEnd   = "<!-- END GENERATED FLAG TABLE -->"
)

// configDoc is docs/configuration.md, relative to this package.
var configDoc = filepath.Join("..", "..", "docs", "configuration.md")

// TestDocs_configurationMatchesFlags keeps the configuration reference a
// rendering of the flag definitions, so the two cannot drift apart: the
// table is built from the same FlagSet parseSettings builds.
// UPDATE_DOCS=1 rewrites it instead of failing.
func TestDocs_configurationMatchesFlags(t *testing.T) {
	doc, err := os.ReadFile(configDoc)
	require.NoError(t, err)
	before, rest, ok := strings.Cut(string(doc), flagTableBegin+"\n")
	require.True(t, ok, "%s has no %q marker", configDoc, flagTableBegin)
	got, after, ok := strings.Cut(rest, flagTableEnd)
	require.True(t, ok, "%s has no %q marker", configDoc, flagTableEnd)
	want := flagTable(docsFlagSet())
	if os.Getenv("UPDATE_DOCS") != "" {
		doc := before + flagTableBegin + "\n" + want + flagTableEnd + after
		require.NoError(t, os.WriteFile(configDoc, []byte(doc), 0o644))
		return
	}
	require.Equal(t, want, got,
		"docs/configuration.md differs from the flag definitions; regenerate it with\n"+
			"  UPDATE_DOCS=1 go test ./cmd/idemproxy -run TestDocs")
}

// docsFlagSet is the FlagSet parseSettings builds, before parsing.
func docsFlagSet() *flag.FlagSet {
	s := settings{Processor: processor.DefaultConfig()}
	fs := flag.NewFlagSet("idemproxy", flag.ContinueOnError)
	defineFlags(fs, &s)
	return fs
}

var (
	// perRouteRE finds the route metadata a flag's usage text names.
	perRouteRE = regexp.MustCompile(`per route: (x-idemproxy-[a-z-]+)`)
	// usageDefaultRE finds a default given in the usage text, for flags
	// whose Value cannot print it (fs.Func).
	usageDefaultRE = regexp.MustCompile(`\(default "?([^";)]*)`)
)

// flagTable renders one markdown row per flag, in the order --help lists them.
func flagTable(fs *flag.FlagSet) string {
	var b strings.Builder
	b.WriteString("| Flag | Environment | Default | Per route | Description |\n")
	b.WriteString("| --- | --- | --- | --- | --- |\n")
	fs.VisitAll(func(f *flag.Flag) {
		kind, usage := flag.UnquoteUsage(f)
		name := "`--" + f.Name + "`"
		if kind != "" {
			name += " _" + kind + "_"
		}
		route := "-"
		if m := perRouteRE.FindStringSubmatch(usage); m != nil {
			route = "`" + m[1] + "`"
		}
		fmt.Fprintf(&b, "| %s | `%s` | %s | %s | %s |\n",
			name, envName(f.Name), docDefault(f, usage), route, mdEscape(usage))
	})
	return b.String()
}

// docDefault is the default as a reader should type it.
func docDefault(f *flag.Flag, usage string) string {
	d := f.DefValue
	if m := usageDefaultRE.FindStringSubmatch(usage); d == "" && m != nil {
		d = m[1]
	}
	switch d {
	case "", "[]", time.Time{}.Format(time.RFC3339):
		return "(none)"
	}
	if strings.Contains(d, " ") {
		return mdEscape(d) // a sentence, such as --redis-min-replicas's
	}
	return "`" + d + "`"
}

// mdEscape keeps usage text literal inside a table cell.
func mdEscape(s string) string {
	return strings.NewReplacer("|", `\|`, "<", "&lt;", ">", "&gt;").Replace(s)
}
