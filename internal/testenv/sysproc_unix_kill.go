//go:build unix

package testenv

import (
	"os"
	"syscall"
)

// killGroup SIGKILLs the child's whole process group (it leads it, see
// sysProcAttr), so a helper it started dies with it.
func killGroup(p *os.Process) {
	_ = syscall.Kill(-p.Pid, syscall.SIGKILL)
	_ = p.Kill()
}
