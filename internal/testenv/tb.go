package testenv

import (
	"context"
	"flag"
)

// TB is the part of testing.TB the wrappers use; *testing.T, *testing.B
// and *testing.F satisfy it. It is declared here instead of imported so
// that a binary linking the error-returning cores (cmd/idembench) does
// not link the testing package, its flags and its runtime hooks.
type TB interface {
	Helper()
	Cleanup(f func())
	Context() context.Context
	Errorf(format string, args ...any)
	Failed() bool
	Fatalf(format string, args ...any)
	Logf(format string, args ...any)
	Skip(args ...any)
	TempDir() string
}

// short reports whether the test binary runs under -short, as
// testing.Short does: the testing package registers -test.short before
// any test runs, and nothing registers it outside a test binary.
func short() bool {
	f := flag.Lookup("test.short")
	return f != nil && f.Value.String() == "true"
}
