package main

import (
	"flag"
	"fmt"
	"runtime"
	"runtime/debug"
	"strings"
)

// Set at build time, e.g. by the Dockerfile:
//
//	go build -ldflags "-X main.version=v1.2.3 -X main.commit=$(git rev-parse HEAD)"
//
// Without them, version reports what the Go toolchain recorded in the
// binary (module version, VCS revision), or "unknown".
var (
	version string
	commit  string
)

// earlyExit ends run before it serves, successfully: --help and --version.
// main prints text on stdout and exits 0; tests read it from the error.
type earlyExit struct{ text string }

func (e earlyExit) Error() string { return e.text }

// versionFlag is the one flag without an environment variable: an
// IDEMPROXY_VERSION left in an environment must not turn a server into a
// program that prints a line and exits.
const versionFlag = "version"

// versionText is what --version prints: version, commit and Go version.
func versionText() string {
	v, c := buildVersion()
	return fmt.Sprintf("idemproxy %s (commit %s, %s, %s/%s)\n", v, c, runtime.Version(), runtime.GOOS, runtime.GOARCH)
}

// versionString is the version alone, for the trace resource.
func versionString() string {
	v, _ := buildVersion()
	return v
}

// buildVersion is the version and commit from -ldflags, else from the
// build information the Go toolchain records, else "unknown".
func buildVersion() (v, c string) {
	v, c = version, commit
	if info, ok := debug.ReadBuildInfo(); ok {
		if v == "" && info.Main.Version != "" && info.Main.Version != "(devel)" {
			v = info.Main.Version
		}
		for _, s := range info.Settings {
			if s.Key == "vcs.revision" && c == "" {
				c = s.Value
			}
		}
	}
	if v == "" {
		v = "unknown"
	}
	if c == "" {
		c = "unknown"
	}
	return v, c
}

// usageText lists every flag with its environment variable and default.
func usageText(fs *flag.FlagSet) string {
	var b strings.Builder
	b.WriteString("Usage: idemproxy [flags]\n\n" +
		"IdemProxy, the Envoy ext_proc idempotency server. Every flag can also be set\n" +
		"with the environment variable shown next to it; a flag on the command line wins.\n" +
		"Tracing is configured with the standard OTEL_* variables (see docs/operating.md).\n\n")
	fs.VisitAll(func(f *flag.Flag) {
		kind, usage := flag.UnquoteUsage(f)
		fmt.Fprintf(&b, "  --%s", f.Name)
		if kind != "" {
			fmt.Fprintf(&b, " %s", kind)
		}
		var notes []string
		if f.Name != versionFlag {
			notes = append(notes, "env "+envName(f.Name))
		}
		if f.DefValue != "" && f.DefValue != "false" && f.DefValue != "[]" {
			notes = append(notes, fmt.Sprintf("default %q", f.DefValue))
		}
		if len(notes) > 0 {
			fmt.Fprintf(&b, "  (%s)", strings.Join(notes, ", "))
		}
		fmt.Fprintf(&b, "\n      %s\n", usage)
	})
	return b.String()
}
