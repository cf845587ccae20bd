// Package redistest starts a real redis-server for tests, on a free port,
// and stops it when the test ends. It is a non-test package so that the
// tests of every package can use it.
package redistest

import (
	"bufio"
	"bytes"
	"fmt"
	"net"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// startTimeout bounds how long Start and Restart wait for PING to succeed.
const startTimeout = 10 * time.Second

// Server is a redis-server process owned by one test.
type Server struct {
	// Addr is host:port of the server, for redis.Options.Addr.
	Addr string

	path string
	args []string

	mu   sync.Mutex
	cmd  *exec.Cmd
	done chan struct{} // closed when cmd has exited
	out  *syncBuffer
}

// Start starts redis-server on a free 127.0.0.1 port, with persistence off,
// plus args, and stops it in t.Cleanup. It returns once the server answers
// PING, and fails the test if redis-server is missing or does not come up.
func Start(t testing.TB, args ...string) *Server {
	t.Helper()
	path, err := exec.LookPath("redis-server")
	if err != nil {
		t.Fatalf("redistest: redis-server not found on PATH (%v); install it with `apt-get update && apt-get install -y redis-server`", err)
	}
	s := &Server{path: path, args: args, out: &syncBuffer{}}
	t.Cleanup(s.Stop)
	// Another process can take the free port before redis-server binds it;
	// a fresh port makes that race harmless.
	const attempts = 3
	for i := 1; ; i++ {
		s.Addr = net.JoinHostPort("127.0.0.1", strconv.Itoa(freePort(t)))
		err := s.start()
		if err == nil {
			return s
		}
		if i == attempts {
			t.Fatalf("redistest: %v\nredis-server output:\n%s", err, s.out.String())
		}
	}
}

// URL returns the server address as a redis:// URL selecting database 0.
func (s *Server) URL() string {
	return "redis://" + s.Addr + "/0"
}

// Client returns a client connected to the server, closed in t.Cleanup.
func (s *Server) Client(t testing.TB) *redis.Client {
	t.Helper()
	c := redis.NewClient(&redis.Options{Addr: s.Addr})
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// Stop kills the server and waits for it to exit. It may be called more
// than once, for example to test what happens when Redis is down.
func (s *Server) Stop() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd == nil {
		return
	}
	_ = s.cmd.Process.Kill()
	<-s.done
	s.cmd = nil
}

// Restart stops the server if it runs and starts it again on the same port.
// Persistence is off, so the new server is empty: no data, no cached scripts.
func (s *Server) Restart(t testing.TB) {
	t.Helper()
	s.Stop()
	if err := s.start(); err != nil {
		t.Fatalf("redistest: restart: %v\nredis-server output:\n%s", err, s.out.String())
	}
}

// start runs redis-server on s.Addr and waits until it answers PING.
func (s *Server) start() error {
	_, port, err := net.SplitHostPort(s.Addr)
	if err != nil {
		return err
	}
	args := append([]string{
		"--port", port, "--bind", "127.0.0.1",
		"--save", "", "--appendonly", "no", "--daemonize", "no",
	}, s.args...)
	out := &syncBuffer{}
	s.mu.Lock()
	s.out = out
	s.mu.Unlock()
	cmd := exec.Command(s.path, args...)
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		return err
	}
	done := make(chan struct{})
	go func() {
		_ = cmd.Wait()
		close(done)
	}()
	s.mu.Lock()
	s.cmd, s.done = cmd, done
	s.mu.Unlock()
	if err := waitReady(s.Addr, done); err != nil {
		s.Stop()
		return err
	}
	return nil
}

// waitReady polls PING until it succeeds, the process exits or the
// deadline passes.
func waitReady(addr string, exited <-chan struct{}) error {
	deadline := time.Now().Add(startTimeout)
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for {
		err := ping(addr)
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("redis-server on %s did not answer PING within %v: %w", addr, startTimeout, err)
		}
		select {
		case <-exited:
			return fmt.Errorf("redis-server on %s exited before answering PING", addr)
		case <-tick.C:
		}
	}
}

// ping sends one PING over a plain connection. It does not use go-redis so
// that waiting leaves no client pool behind.
func ping(addr string) error {
	conn, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		return err
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(time.Second))
	if _, err := conn.Write([]byte("PING\r\n")); err != nil {
		return err
	}
	line, err := bufio.NewReader(conn).ReadString('\n')
	if err != nil {
		return err
	}
	// A server that requires authentication (ACL tests) answers NOAUTH:
	// it is up, and authenticating is the test's business.
	if line != "+PONG\r\n" && !strings.HasPrefix(line, "-NOAUTH") {
		return fmt.Errorf("PING answered %q", line)
	}
	return nil
}

// freePort returns a TCP port that was free a moment ago on 127.0.0.1.
func freePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("redistest: find a free port: %v", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// syncBuffer collects the server output; os/exec writes it from its own
// goroutine while a failing test may read it.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}
