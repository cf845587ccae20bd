package main

import (
	"testing"

	"go.uber.org/goleak"
)

// TestMain fails the package if a test leaves a goroutine behind: run must
// stop every server, watchdog, health poller and Redis client it started.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}
