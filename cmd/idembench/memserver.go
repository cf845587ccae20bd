package main

import (
	"context"
	"io"
	"runtime"

	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"google.golang.org/grpc"

	"github.com/idemproxy/idemproxy/internal/memstore"
	"github.com/idemproxy/idemproxy/processor"
)

// memoryServerCommand is the hidden first argument that turns idembench
// into idemproxy's processor over internal/memstore (scenario m): every
// decision, header and body idemproxy handles, and no Redis. It is the
// floor under idemproxy's own cost per request, measured, not a store
// anyone should run: it forgets everything when it stops.
const memoryServerCommand = "memory-server"

// runMemoryServer serves the processor on --addr until ctx ends, with
// idemproxy's defaults and its stream workers.
func runMemoryServer(ctx context.Context, args []string, stderr io.Writer) error {
	return serveExtProc(ctx, memoryServerCommand, args, stderr, func() (extprocv3.ExternalProcessorServer, error) {
		return processor.New(processor.DefaultConfig(), processor.Options{Store: memstore.New(nil)})
	}, grpc.NumStreamWorkers(uint32(runtime.GOMAXPROCS(0))))
}
