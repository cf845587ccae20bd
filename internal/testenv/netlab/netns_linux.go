package netlab

import (
	"errors"
	"fmt"
	"os"
	"runtime"
	"syscall"

	"golang.org/x/sys/unix"
)

// platformCheck: namespaces are Linux's.
func platformCheck() error { return nil }

// enter runs fn on a fresh goroutine whose thread has joined the network
// namespace target, and brings the thread back before it serves anything
// else. A goroutine of its own, so the caller's thread is never moved, and
// so that when the way back fails the goroutine can end while still locked
// to the thread: the runtime then ends the thread too, rather than let
// other goroutines run in the wrong namespace. (A child process started
// from that thread earlier would get its parent-death signal then; see
// testenv's sysProcAttr. That is the price of a failure that should not
// happen.)
func enter(target *os.File, fn func() error) error {
	errc := make(chan error, 1)
	go func() { errc <- enterLocked(target, fn) }()
	return <-errc
}

func enterLocked(target *os.File, fn func() error) error {
	runtime.LockOSThread()
	self, err := os.Open(fmt.Sprintf("/proc/self/task/%d/ns/net", unix.Gettid()))
	if err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("netlab: this thread's namespace: %w", err)
	}
	defer self.Close()
	if err := unix.Setns(int(target.Fd()), unix.CLONE_NEWNET); err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("netlab: entering %s: %w", target.Name(), err)
	}
	ferr := fn()
	if err := unix.Setns(int(self.Fd()), unix.CLONE_NEWNET); err != nil {
		return errors.Join(ferr, fmt.Errorf("netlab: leaving %s (the thread is dropped): %w", target.Name(), err))
	}
	runtime.UnlockOSThread()
	return ferr
}

// killPid SIGKILLs pid.
func killPid(pid int) error { return syscall.Kill(pid, syscall.SIGKILL) }

// pidAlive reports whether a process pid exists.
func pidAlive(pid int) bool {
	err := syscall.Kill(pid, 0)
	return err == nil || errors.Is(err, syscall.EPERM)
}
