package testenv

import (
	"strings"
)

// Start starts c for one test and stops it in t.Cleanup (SIGTERM,
// StopGrace, then SIGKILL). When the test failed, the child's output is
// printed; a child built with -race that reported a data race fails it.
func Start(t TB, c Command) *Process {
	t.Helper()
	p, err := StartProcess(c)
	if err != nil {
		t.Fatalf("testenv: %v", err)
	}
	t.Cleanup(func() {
		p.Stop(StopGrace)
		out := p.Output()
		raced := strings.Contains(out, "DATA RACE")
		if t.Failed() || raced {
			t.Logf("--- output of %s ---\n%s", p.name, out)
		}
		if raced {
			t.Errorf("%s had a data race", p.name)
		}
	})
	return p
}
