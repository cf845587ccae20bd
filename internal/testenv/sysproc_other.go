//go:build !unix

package testenv

import (
	"os"
	"syscall"
)

// sysProcAttr has nothing to add where there are no process groups.
func sysProcAttr() *syscall.SysProcAttr { return nil }

// killGroup kills the child alone.
func killGroup(p *os.Process) { _ = p.Kill() }
