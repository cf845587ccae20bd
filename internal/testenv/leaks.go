package testenv

import (
	"fmt"
	"os"
	"testing"
	"time"

	"go.uber.org/goleak"
)

// settleLeaks is how long VerifyNoLeaks gives goroutines that end on their
// own after their owner closed: go-redis's dial prober (pool.tryDial)
// sleeps a second between probes and notices a closed pool only then.
const settleLeaks = 2 * time.Second

// VerifyNoLeaks runs m's tests and fails the package if a goroutine
// outlives them, as goleak.VerifyTestMain does, except that it looks a
// second time, settleLeaks later, before it calls one a leak.
func VerifyNoLeaks(m *testing.M) {
	code := m.Run()
	if code == 0 && goleak.Find() != nil {
		time.Sleep(settleLeaks)
		if err := goleak.Find(); err != nil {
			fmt.Fprintf(os.Stderr, "goleak: errors on successful test run: %v\n", err)
			code = 1
		}
	}
	os.Exit(code)
}
