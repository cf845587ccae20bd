package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/idemproxy/idemproxy/internal/testenv"
	"github.com/idemproxy/idemproxy/internal/testenv/redistopo"
)

// readyTimeout bounds how long one server may take to come up.
const readyTimeout = 30 * time.Second

// stopGrace is how long a child may take to exit after SIGTERM before it is
// killed. Every child is told to shut down fast, so this is rarely reached.
const stopGrace = 5 * time.Second

// server is a started child and the addresses it serves.
type server struct {
	*testenv.Process
	addr  string  // main listener, host:port
	admin string  // admin listener, host:port; "" when it has none
	ext   *server // an Envoy's ext_proc server; nil for none
	// replay is an idemproxy's replay endpoint, host:port; "" for none.
	replay string
}

// envoyKind names the four Envoy setups: which ext_proc server, if any.
type envoyKind string

const (
	envoyBare envoyKind = "bare"      // (a): ext_proc filter removed
	envoyNull envoyKind = "null"      // (b): ext_proc -> null server
	envoyMem  envoyKind = "memory"    // (m): ext_proc -> idemproxy's processor over memory
	envoyIdem envoyKind = "idemproxy" // (c), (d), (e), dup
	envoyHold envoyKind = "hold"      // (f): ext_proc -> the fast-heartbeat idemproxy
	// (c1): ext_proc -> an idemproxy with --redis-min-replicas 1
	envoyDurable envoyKind = "durable"
	// (d2): ext_proc -> an idemproxy serving every replay from its
	// replay endpoint (--replay-all-via-endpoint)
	envoyReplay envoyKind = "replay-endpoint"
)

// stack owns every child process of a run. Servers start when a scenario
// first needs them and all stop, newest first, in close.
type stack struct {
	cfg    config
	logDir string
	token  string // the bearer token Envoy sends idemproxy
	procs  []*testenv.Process
	http   *http.Client

	redis   *redistopo.Server
	replica *redistopo.Server // only when (c1) runs
	rdb     *redis.Client
	backend *server
	// servers are the ext_proc servers by name: idemproxy's instances
	// and idembench's own (null-server, memory-server).
	servers map[string]*server
	envoys  map[envoyKind]*server
}

func newStack(cfg config, logDir string) *stack {
	var b [24]byte
	_, _ = rand.Read(b[:]) // crypto/rand never fails
	return &stack{cfg: cfg, logDir: logDir, token: "bench-" + hex.EncodeToString(b[:]),
		http: &http.Client{Timeout: 5 * time.Second}, servers: map[string]*server{}, envoys: map[envoyKind]*server{}}
}

// close stops every child, newest first: Envoys before the servers behind
// them, Redis last.
func (s *stack) close() {
	if s.rdb != nil {
		_ = s.rdb.Close()
	}
	for i := len(s.procs) - 1; i >= 0; i-- {
		s.procs[i].Stop(stopGrace)
	}
	s.procs = nil
	if s.replica != nil {
		s.replica.Stop()
	}
	if s.redis != nil {
		s.redis.Stop()
	}
}

// start starts a child with env (NAME=value) added to its environment and
// its output in logDir/name.log, and waits until ready passes.
func (s *stack) start(ctx context.Context, name, bin string, env, args []string, ready func(context.Context) error) (*testenv.Process, error) {
	p, err := s.spawn(testenv.Command{Name: name, Path: bin, Args: args, Env: env})
	if err != nil {
		return nil, err
	}
	s.procs = append(s.procs, p)
	return p, p.WaitReady(ctx, readyTimeout, ready)
}

// spawn starts c with its log in the run's log directory, untracked: the
// caller adds it to s.procs once the run depends on it.
func (s *stack) spawn(c testenv.Command) (*testenv.Process, error) {
	c.LogFile = filepath.Join(s.logDir, c.Name+".log")
	return testenv.StartProcess(c)
}

// Redis starts redis-server without persistence: the benchmark measures
// the request path, and a save would be a pause in the middle of a run.
func (s *stack) Redis(ctx context.Context) (*redistopo.Server, error) {
	if s.redis != nil {
		return s.redis, nil
	}
	srv, err := redistopo.StartServer(redistopo.Options{Bin: s.cfg.bins.redis, Dir: s.logDir,
		LogFile: filepath.Join(s.logDir, "redis.log")})
	if err != nil {
		return nil, err
	}
	s.redis = srv
	s.rdb = redis.NewClient(&redis.Options{Addr: srv.Addr, PoolSize: 2})
	return srv, nil
}

// Backend starts the mock payment service.
func (s *stack) Backend(ctx context.Context) (*server, error) {
	if s.backend != nil {
		return s.backend, nil
	}
	addr, err := testenv.FreeAddr()
	if err != nil {
		return nil, err
	}
	p, err := s.start(ctx, "backend", s.cfg.bins.backend, nil, []string{"--addr", addr}, testenv.HTTPOK(s.http, "http://"+addr+"/healthz"))
	if err != nil {
		return nil, err
	}
	s.backend = &server{Process: p, addr: addr}
	return s.backend, nil
}

// Idemproxy starts an idemproxy with its defaults plus extra flags; name
// tells instances apart. The shutdown grace is short so a run ends quickly;
// it plays no part on the request path.
func (s *stack) Idemproxy(ctx context.Context, name string, extra ...string) (*server, error) {
	if srv := s.servers[name]; srv != nil {
		return srv, nil
	}
	rs, err := s.Redis(ctx)
	if err != nil {
		return nil, err
	}
	grpcAddr, err := testenv.FreeAddr()
	if err != nil {
		return nil, err
	}
	adminAddr, err := testenv.FreeAddr()
	if err != nil {
		return nil, err
	}
	tokenFile := filepath.Join(s.logDir, "auth-token")
	if err := os.WriteFile(tokenFile, []byte(s.token+"\n"), 0o600); err != nil {
		return nil, fmt.Errorf("auth token: %w", err)
	}
	args := append([]string{"--grpc-addr", grpcAddr, "--admin-addr", adminAddr,
		"--redis-url", rs.URL(), "--shutdown-grace", "2s", "--auth-token-file", tokenFile}, extra...)
	p, err := s.start(ctx, name, s.cfg.bins.idemproxy, s.cfg.idemproxyEnv, args, testenv.HTTPOK(s.http, "http://"+adminAddr+"/readyz"))
	if err != nil {
		return nil, err
	}
	srv := &server{Process: p, addr: grpcAddr, admin: adminAddr}
	s.servers[name] = srv
	return srv, nil
}

// selfServer runs idembench's own command as a gRPC server, in a process
// of its own so its CPU and memory are measured like idemproxy's, and
// waits until it accepts connections.
// The commands: the null ext_proc server (b), idemproxy's processor over
// memory (m).
func (s *stack) selfServer(ctx context.Context, command string) (*server, error) {
	if srv := s.servers[command]; srv != nil {
		return srv, nil
	}
	exe, err := os.Executable()
	if err != nil {
		return nil, fmt.Errorf("%s: own executable: %w", command, err)
	}
	addr, err := testenv.FreeAddr()
	if err != nil {
		return nil, err
	}
	accepts := func(ctx context.Context) error {
		var d net.Dialer
		c, err := d.DialContext(ctx, "tcp", addr)
		if err == nil {
			c.Close()
		}
		return err
	}
	p, err := s.start(ctx, command, exe, nil, []string{command, "--addr", addr}, accepts)
	if err != nil {
		return nil, err
	}
	srv := &server{Process: p, addr: addr}
	s.servers[command] = srv
	return srv, nil
}

// extProcFor starts the ext_proc server an Envoy kind calls, if any.
func (s *stack) extProcFor(ctx context.Context, kind envoyKind) (*server, error) {
	switch kind {
	case envoyBare:
		return nil, nil
	case envoyNull:
		return s.selfServer(ctx, nullServerCommand)
	case envoyMem:
		return s.selfServer(ctx, memoryServerCommand)
	case envoyIdem:
		return s.Idemproxy(ctx, "idemproxy")
	case envoyDurable:
		if _, err := s.Replica(ctx); err != nil {
			return nil, err
		}
		return s.Idemproxy(ctx, "idemproxy-durable", "--redis-min-replicas", "1")
	case envoyReplay:
		return s.replayIdemproxy(ctx)
	case envoyHold:
		// Scenario (f) wants renewals to happen during its short window.
		return s.Idemproxy(ctx, "idemproxy-hold",
			"--heartbeat", holdHeartbeat.String(), "--lock-ttl", holdLockTTL.String())
	}
	return nil, fmt.Errorf("unknown Envoy kind %q", kind)
}

// Envoy starts one Envoy (one worker thread) of the given kind, with the
// servers behind it.
func (s *stack) Envoy(ctx context.Context, kind envoyKind) (*server, error) {
	if srv := s.envoys[kind]; srv != nil {
		return srv, nil
	}
	ext, err := s.extProcFor(ctx, kind)
	if err != nil {
		return nil, err
	}
	be, err := s.Backend(ctx)
	if err != nil {
		return nil, err
	}
	// Every Envoy sends the token, as the shipped config does, so the
	// null server's runs carry the same metadata as idemproxy's.
	ec := testenv.EnvoyConfig{Backend: be.addr, AuthToken: s.token}
	if ext != nil {
		ec.ExtProc, ec.Replay = ext.addr, ext.replay
	}
	// Tracked only once ready: a try that lost its port to another
	// process has exited, and must not count as a dead child.
	p, listener, adminPort, err := testenv.EnvoyOnFreePorts(ctx, s.spawn, "envoy-"+string(kind), s.cfg.bins.envoy, "error",
		func(l, a int) (string, error) {
			ec.Listener, ec.Admin = l, a
			return testenv.RenderEnvoyFile(s.cfg.envoyYAML, ec, s.logDir, "envoy-"+string(kind)+".yaml")
		})
	if err != nil {
		return nil, err
	}
	s.procs = append(s.procs, p)
	admin := fmt.Sprintf("127.0.0.1:%d", adminPort)
	srv := &server{Process: p, addr: fmt.Sprintf("127.0.0.1:%d", listener), admin: admin, ext: ext}
	s.envoys[kind] = srv
	return srv, nil
}

// alive fails when a child the run depends on has died.
func (s *stack) alive() error {
	for _, p := range s.procs {
		if done, err := p.Exited(); done {
			return p.Failure(errors.Join(errors.New("exited during the run"), err))
		}
	}
	if s.redis != nil && !s.redis.Running() {
		return fmt.Errorf("redis-server exited during the run:\n%s", s.redis.Output())
	}
	return nil
}

// replayIdemproxy is an idemproxy whose replays all go through its replay
// endpoint, for scenario (d2).
func (s *stack) replayIdemproxy(ctx context.Context) (*server, error) {
	if srv := s.servers["idemproxy-replay"]; srv != nil {
		return srv, nil
	}
	addr, err := testenv.FreeAddr()
	if err != nil {
		return nil, err
	}
	srv, err := s.Idemproxy(ctx, "idemproxy-replay", "--replay-addr", addr, "--replay-all-via-endpoint")
	if err != nil {
		return nil, err
	}
	srv.replay = addr
	return srv, nil
}
