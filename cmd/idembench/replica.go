package main

import (
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"time"

	"github.com/idemproxy/idemproxy/internal/testenv"
	"github.com/idemproxy/idemproxy/internal/testenv/redistopo"
)

// Replica starts a replica of Redis and waits until a WAIT on the
// primary counts it. Started before the first scenario when (c1) runs, so
// (c) replicates to it too and the two differ only by waiting.
func (s *stack) Replica(ctx context.Context) (*redistopo.Server, error) {
	if s.replica != nil {
		return s.replica, nil
	}
	rs, err := s.Redis(ctx)
	if err != nil {
		return nil, err
	}
	host, port, err := net.SplitHostPort(rs.Addr)
	if err != nil {
		return nil, err
	}
	dir := filepath.Join(s.logDir, "replica") // it writes what it receives there
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	srv, err := redistopo.StartServer(redistopo.Options{Bin: s.cfg.bins.redis, Dir: dir,
		Name: "replica", LogFile: filepath.Join(s.logDir, "replica.log"),
		Args: []string{"--replicaof", host, port, "--repl-diskless-load", "on-empty-db"}})
	if err != nil {
		return nil, err
	}
	s.replica = srv
	err = testenv.Poll(ctx, readyTimeout, func(ctx context.Context) error {
		n, err := s.rdb.Wait(ctx, 1, 100*time.Millisecond).Result()
		if err == nil && n < 1 {
			err = errors.New("the replica has not synced yet")
		}
		return err
	})
	return srv, err
}
