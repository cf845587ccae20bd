package processor

import (
	"testing"

	"go.uber.org/goleak"
)

// TestMain fails the package if a test leaves a goroutine behind: a
// watchdog that outlives its stream would keep renewing a lock forever.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}
