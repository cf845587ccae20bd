package redisstore

import (
	"testing"

	"github.com/idemproxy/idemproxy/internal/testenv"
)

// TestMain checks that no goroutine outlives the tests: every go-redis
// client and redis-server started by a test is closed in t.Cleanup.
func TestMain(m *testing.M) {
	testenv.VerifyNoLeaks(m)
}
