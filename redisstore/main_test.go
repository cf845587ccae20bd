package redisstore

import (
	"testing"

	"go.uber.org/goleak"
)

// TestMain checks that no goroutine outlives the tests: every go-redis
// client and redis-server started by a test is closed in t.Cleanup.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}
