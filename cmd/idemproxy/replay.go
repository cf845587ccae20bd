package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/idemproxy/idemproxy/replay"
)

// replayServer is the replay endpoint (package replay) on its own port.
type replayServer struct {
	http *http.Server
	tls  bool
	log  *slog.Logger
}

// newReplayServer builds the replay endpoint, guarded as the ext_proc
// port is (sec); nil without --replay-addr.
func newReplayServer(s settings, sec security, reg prometheus.Registerer, log *slog.Logger, taker replay.Taker) (*replayServer, error) {
	if s.ReplayAddr == "" {
		return nil, nil
	}
	opts := replay.Options{Taker: taker, Logger: log, Registerer: reg}
	if sec.tokens != nil {
		opts.Tokens = sec.tokens.Current
	}
	h, err := replay.NewHandler(opts)
	if err != nil {
		return nil, fmt.Errorf("replay endpoint: %w", err)
	}
	rs := &replayServer{http: replay.NewServer(h), tls: sec.tls != nil, log: log}
	rs.http.TLSConfig = sec.tls
	return rs, nil
}

// listenReplay opens the replay port; nil without an endpoint.
func listenReplay(s settings, rs *replayServer) (net.Listener, error) {
	if rs == nil {
		return nil, nil
	}
	lis, err := net.Listen("tcp", s.ReplayAddr)
	if err != nil {
		return nil, fmt.Errorf("replay listener: %w", err)
	}
	rs.log.Info("replay endpoint listening", "addr", lis.Addr().String(), "tls", rs.tls, "token_auth", s.AuthTokenFile != "")
	return lis, nil
}

// serve serves until stop.
func (rs *replayServer) serve(lis net.Listener) error {
	var err error
	if rs.tls {
		err = rs.http.ServeTLS(lis, "", "")
	} else {
		err = rs.http.Serve(lis)
	}
	if !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("replay server: %w", err)
	}
	return nil
}

// stop lets replays in flight finish until deadline (at least a second),
// then closes the rest.
func (rs *replayServer) stop(ctx context.Context, deadline time.Time) {
	sctx, cancel := context.WithDeadline(context.WithoutCancel(ctx), later(deadline, time.Now().Add(time.Second)))
	defer cancel()
	if err := rs.http.Shutdown(sctx); err != nil {
		_ = rs.http.Close()
	}
}
