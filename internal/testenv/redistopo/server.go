// Package redistopo starts real redis-server processes for tests and the
// benchmark, on free loopback ports with persistence off, as one Server or
// as a topology of several: a Cluster (3 primaries, 3 replicas) or a
// Sentinel setup (1 primary, 2 replicas, 3 sentinels), with the helpers a
// failover test needs. Processes are supervised by internal/testenv. A
// topology can also be spread over test hosts in network namespaces, one
// node per host (Place, internal/testenv/netlab), for partition tests.
//
// Persistence is off everywhere, which has one hazard: a primary restarted
// before its replica took over comes back empty, and its replica then
// copies the empty data set. Restart refuses to do that.
package redistopo

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/idemproxy/idemproxy/internal/testenv"
)

// StartTimeout bounds how long a server may take to answer PING.
const StartTimeout = 10 * time.Second

// Options configure one redis-server.
type Options struct {
	// Bin is redis-server; "" finds it (testenv.FindRedisServer).
	Bin string
	// Port to listen on; 0 picks a free one.
	Port int
	// Args are added to the command line (after the port and persistence).
	Args []string
	// LogFile, if set, receives the output (see testenv.Command).
	LogFile string
	// Name tells servers apart in messages; "" is "redis".
	Name string
	// Config, if set, is a config file, the first argument (a sentinel's).
	Config string
	// Dir is the server's working directory (--dir). A replica writes what
	// it receives there, and every server loads a dump.rdb it finds there,
	// so it is never the caller's: "" makes a new temp dir, left behind.
	Dir string
	// TLS, if set, makes the server accept TLS as well, on a port of its
	// own (Server.TLSAddr).
	TLS *TLS
	// Place, if set, runs the server on a test host (see Place); it then
	// needs an explicit Port, and TLS is not offered there.
	Place Place
}

// TLS are the PEM files of a server that accepts TLS on a second port
// besides its plain one, and replicates over TLS. Clients need no
// certificate of their own. The plain port stays because the helpers
// here use it; Redis tells a client the ports of its own kind (CLUSTER
// SLOTS over TLS names TLS ports), so a TLS client never meets a plain one.
type TLS struct {
	CertFile, KeyFile, CAFile string
	// ClientCertFile and ClientKeyFile are what a server shows when it is
	// the client (of its primary, or of another node on the cluster bus,
	// which always asks for a certificate); "" uses CertFile and KeyFile,
	// which then must allow client authentication.
	ClientCertFile, ClientKeyFile string
}

// args are redis-server's TLS settings, listening on port.
func (t *TLS) args(port string) []string {
	args := []string{"--tls-port", port, "--tls-cert-file", t.CertFile, "--tls-key-file", t.KeyFile,
		"--tls-ca-cert-file", t.CAFile, "--tls-auth-clients", "no", "--tls-replication", "yes"}
	if t.ClientCertFile != "" {
		args = append(args, "--tls-client-cert-file", t.ClientCertFile, "--tls-client-key-file", t.ClientKeyFile)
	}
	return args
}

// Server is one redis-server process. Stop and Restart keep its port.
type Server struct {
	// Addr is host:port of the server, for redis.Options.Addr.
	Addr string
	// TLSAddr is host:port of its TLS port, "" without Options.TLS.
	TLSAddr string

	opts Options
	mu   sync.Mutex
	proc *testenv.Process
}

// StartServer starts redis-server on 127.0.0.1 (or o.Place) with
// persistence off and returns once it answers PING. With Port 0 it tries
// three free ports, as another process may take one before redis-server
// binds it.
func StartServer(o Options) (*Server, error) {
	if o.Place.placed() && o.Port == 0 {
		return nil, errPlacedPort
	}
	if o.Place.placed() && o.TLS != nil {
		return nil, errors.New("a placed server has no TLS port: the tests that need TLS run on loopback")
	}
	if o.Bin == "" {
		bin, err := testenv.FindRedisServer()
		if err != nil {
			return nil, err
		}
		o.Bin = bin
	}
	if o.Name == "" {
		o.Name = "redis"
	}
	if o.Dir == "" {
		dir, err := os.MkdirTemp("", "redistopo-")
		if err != nil {
			return nil, err
		}
		o.Dir = dir
	}
	s := &Server{opts: o}
	var err error
	for range 3 {
		port := o.Port
		if port == 0 {
			if port, err = testenv.FreePort(); err != nil {
				return nil, err
			}
		}
		s.Addr = net.JoinHostPort(o.Place.ip(), strconv.Itoa(port))
		if o.TLS != nil {
			tlsPort, perr := testenv.FreePort()
			if perr != nil {
				return nil, perr
			}
			s.TLSAddr = net.JoinHostPort("127.0.0.1", strconv.Itoa(tlsPort))
		}
		if err = s.start(); err == nil || o.Port != 0 {
			break
		}
	}
	return s, err
}

// URL returns the server address as a redis:// URL selecting database 0.
func (s *Server) URL() string { return "redis://" + s.Addr + "/0" }

// ReplicationAddr is where replicas and sentinels reach the server: its
// TLS port if it has one.
func (s *Server) ReplicationAddr() string {
	if s.TLSAddr != "" {
		return s.TLSAddr
	}
	return s.Addr
}

// Pid is the running server's process id, or 0.
func (s *Server) Pid() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.proc == nil {
		return 0
	}
	return s.proc.Pid()
}

// Running reports whether the server process is up.
func (s *Server) Running() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.proc == nil {
		return false
	}
	done, _ := s.proc.Exited()
	return !done
}

// Output is what the current (or last) process wrote.
func (s *Server) Output() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.proc == nil {
		return ""
	}
	return s.proc.Output()
}

// Stop kills the server (SIGKILL: nothing is saved anyway) and waits until
// it is reaped. It may be called more than once, for example to test what
// happens when Redis is down.
func (s *Server) Stop() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.proc != nil {
		s.proc.Kill()
	}
}

// Pause freezes the server (SIGSTOP): its connections stay open but it
// reads nothing, like a replica that falls behind or a node cut off by the
// network. Resume undoes it; Stop works on a paused server too.
func (s *Server) Pause() error { return s.signal(syscall.SIGSTOP) }

// Resume lets a paused server run again (SIGCONT).
func (s *Server) Resume() error { return s.signal(syscall.SIGCONT) }

func (s *Server) signal(sig syscall.Signal) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.proc == nil {
		return fmt.Errorf("redis-server %s is not running", s.Addr)
	}
	return s.proc.Signal(sig)
}

// restart stops the server if it runs and starts it again on the same port.
func (s *Server) restart() error {
	s.Stop()
	return s.start()
}

// start runs redis-server on s.Addr and waits until it answers PING.
func (s *Server) start() error {
	_, port, _ := net.SplitHostPort(s.Addr)
	var args []string
	if s.opts.Config != "" {
		args = append(args, s.opts.Config)
	}
	args = append(args,
		"--port", port, "--bind", s.opts.Place.ip(),
		"--save", "", "--appendonly", "no", "--daemonize", "no", "--dir", s.opts.Dir)
	if s.opts.TLS != nil {
		_, tlsPort, _ := net.SplitHostPort(s.TLSAddr)
		args = append(args, s.opts.TLS.args(tlsPort)...)
	}
	args = append(append(args, s.opts.Place.args()...), s.opts.Args...)
	bin, args := s.opts.Place.command(s.opts.Bin, args)
	p, err := testenv.StartProcess(testenv.Command{Name: s.opts.Name + "@" + port, Path: bin, Args: args, LogFile: s.opts.LogFile})
	if err != nil {
		return err
	}
	s.mu.Lock()
	s.proc = p
	s.mu.Unlock()
	dial := s.opts.Place.dialer()
	err = p.WaitReady(context.Background(), StartTimeout, func(ctx context.Context) error { return PingVia(ctx, dial, s.Addr) })
	if err != nil {
		p.Kill()
		return fmt.Errorf("redis-server on %s: %w", s.Addr, err)
	}
	return nil
}

// Start is StartServer for a test (skipped under -short): a server on a
// free port with args, stopped in t.Cleanup, its output printed if the
// test failed.
func Start(t testenv.TB, args ...string) *Server {
	t.Helper()
	s, err := StartServer(Options{Bin: testenv.RedisServerBin(t), Args: args, Dir: t.TempDir()})
	if s != nil {
		cleanup(t, s)
	}
	if err != nil {
		t.Fatalf("redistopo: %v", err)
	}
	return s
}

// cleanup stops s when the test ends and shows its output if it failed.
func cleanup(t testenv.TB, s *Server) {
	t.Cleanup(func() {
		s.Stop()
		if t.Failed() {
			t.Logf("--- output of redis-server %s ---\n%s", s.Addr, s.Output())
		}
	})
}

// Client returns a client connected to the server, closed in t.Cleanup.
func (s *Server) Client(t testenv.TB) *redis.Client {
	t.Helper()
	c := redis.NewClient(&redis.Options{Addr: s.Addr, Dialer: s.opts.Place.Dial})
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// Restart stops the server if it runs and starts it again on the same port.
// Persistence is off, so the new server is empty: no data, no scripts.
func (s *Server) Restart(t testenv.TB) {
	t.Helper()
	if err := s.restart(); err != nil {
		t.Fatalf("redistopo: restart: %v", err)
	}
}
