package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"runtime"

	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"google.golang.org/grpc"

	"github.com/idemproxy/idemproxy/internal/memstore"
	"github.com/idemproxy/idemproxy/internal/nullproc"
	"github.com/idemproxy/idemproxy/processor"
)

// The hidden first arguments that turn idembench into one of its own
// ext_proc servers, each a process of its own so that its CPU and memory
// are measured like idemproxy's.
const (
	// nullServerCommand serves internal/nullproc (scenario b).
	nullServerCommand = "null-server"
	// memoryServerCommand serves idemproxy's processor over
	// internal/memstore (scenario m): every decision, header and body
	// idemproxy handles, and no Redis. It is the floor under idemproxy's
	// own cost per request, measured, not a store anyone should run: it
	// forgets everything when it stops.
	memoryServerCommand = "memory-server"
)

// runNullServer serves the null processor on --addr until ctx ends.
func runNullServer(ctx context.Context, args []string, stderr io.Writer) error {
	return serveExtProc(ctx, nullServerCommand, args, stderr, func() (extprocv3.ExternalProcessorServer, error) {
		return nullproc.New(), nil
	})
}

// runMemoryServer serves the processor on --addr until ctx ends, with
// idemproxy's defaults and its stream workers.
func runMemoryServer(ctx context.Context, args []string, stderr io.Writer) error {
	return serveExtProc(ctx, memoryServerCommand, args, stderr, func() (extprocv3.ExternalProcessorServer, error) {
		return processor.New(processor.DefaultConfig(), processor.Options{Store: memstore.New(nil)})
	}, grpc.NumStreamWorkers(uint32(runtime.GOMAXPROCS(0))))
}

// serveExtProc is the main of idembench's own ext_proc servers: --addr, the
// processor newProc builds, served until ctx ends, with idemproxy's message
// size limit (Envoy's 1 MiB buffered bodies fit) and opts.
func serveExtProc(ctx context.Context, name string, args []string, stderr io.Writer,
	newProc func() (extprocv3.ExternalProcessorServer, error), opts ...grpc.ServerOption) error {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	addr := fs.String("addr", "127.0.0.1:0", "gRPC listen address")
	if err := fs.Parse(args); err != nil {
		return usageError{err}
	}
	proc, err := newProc()
	if err != nil {
		return fmt.Errorf("%s: %w", name, err)
	}
	lis, err := net.Listen("tcp", *addr)
	if err != nil {
		return fmt.Errorf("%s: %w", name, err)
	}
	gs := grpc.NewServer(append([]grpc.ServerOption{grpc.MaxRecvMsgSize(16 << 20)}, opts...)...)
	extprocv3.RegisterExternalProcessorServer(gs, proc)
	stopped := make(chan struct{})
	go func() {
		defer close(stopped)
		<-ctx.Done()
		gs.Stop()
	}()
	err = gs.Serve(lis)
	<-stopped
	if err != nil && !errors.Is(err, grpc.ErrServerStopped) {
		return fmt.Errorf("%s: %w", name, err)
	}
	return nil
}
