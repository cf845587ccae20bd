package redistopo

import (
	"testing"

	"go.uber.org/goleak"
)

// TestMain checks that no goroutine outlives the tests: every client and
// every process supervisor is closed or reaped in t.Cleanup.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}
