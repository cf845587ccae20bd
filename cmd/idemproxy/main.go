// Command idemproxy is the IdemProxy ext_proc server: Envoy streams each
// HTTP request to it, and it makes a retried request with the same
// idempotency key run at most once upstream.
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Getenv, os.Stderr)
	stop()
	var early earlyExit
	if errors.As(err, &early) {
		fmt.Fprint(os.Stdout, early.text)
		return
	}
	if err != nil {
		if !errors.As(err, new(loggedError)) {
			fmt.Fprintln(os.Stderr, "idemproxy:", err)
		}
		var usage usageError
		if errors.As(err, &usage) {
			os.Exit(2)
		}
		os.Exit(1)
	}
}
