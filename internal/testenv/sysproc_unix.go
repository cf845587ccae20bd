//go:build unix && !linux

package testenv

import "syscall"

// sysProcAttr puts the child in its own process group. Only Linux has a
// parent-death signal: elsewhere a killed test binary can leave children
// behind, and the cleanup that normally stops them is all there is.
func sysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true}
}
