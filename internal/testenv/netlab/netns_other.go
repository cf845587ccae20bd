//go:build !linux

package netlab

import (
	"errors"
	"os"
)

var errNotLinux = errors.New("the network-namespace tests need Linux (CI runs them on Debian)")

func platformCheck() error                   { return errNotLinux }
func enter(_ *os.File, _ func() error) error { return errNotLinux }
func killPid(int) error                      { return errNotLinux }
func pidAlive(int) bool                      { return true }
