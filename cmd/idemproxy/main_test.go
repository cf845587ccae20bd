package main

import (
	"testing"

	"github.com/idemproxy/idemproxy/internal/testenv"
)

// TestMain fails the package if a test leaves a goroutine behind: run must
// stop every server, watchdog, health poller and Redis client it started.
func TestMain(m *testing.M) {
	testenv.VerifyNoLeaks(m)
}
