package testenv

import "syscall"

// sysProcAttr puts the child in its own process group, so a Ctrl-C in the
// terminal reaches only the parent, which then stops its children in order;
// and has the kernel SIGKILL it when the parent dies without cleaning up (a
// `go test` timeout, a killed test binary). Pdeathsig fires when the thread
// that started the child exits; Go only ends a thread whose goroutine locked
// it, which nothing here does.
func sysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
}
