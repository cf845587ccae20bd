package testenv

import (
	"fmt"
	"net"
	"strconv"
)

// FreePort asks the kernel for a loopback port that was free a moment ago.
// Another process could take it before the child binds it; a child that
// then fails to start says so.
func FreePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("free port: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// FreeAddr is FreePort as 127.0.0.1:port.
func FreeAddr() (string, error) {
	port, err := FreePort()
	if err != nil {
		return "", err
	}
	return net.JoinHostPort("127.0.0.1", strconv.Itoa(port)), nil
}

// Port is FreePort for a test.
func Port(t TB) int {
	t.Helper()
	port, err := FreePort()
	if err != nil {
		t.Fatalf("testenv: %v", err)
	}
	return port
}

// Addr is FreeAddr for a test.
func Addr(t TB) string {
	t.Helper()
	return net.JoinHostPort("127.0.0.1", strconv.Itoa(Port(t)))
}

// PortOf returns the port of a host:port address.
func PortOf(addr string) (string, error) {
	_, port, err := net.SplitHostPort(addr)
	if err != nil {
		return "", fmt.Errorf("address %q: %w", addr, err)
	}
	return port, nil
}
