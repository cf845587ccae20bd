package redistopo

import (
	"testing"

	"github.com/idemproxy/idemproxy/internal/testenv"
)

// TestMain checks that no goroutine outlives the tests: every client and
// every process supervisor is closed or reaped in t.Cleanup.
func TestMain(m *testing.M) {
	testenv.VerifyNoLeaks(m)
}
