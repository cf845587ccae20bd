package redisstore

import "github.com/idemproxy/idemproxy/processor"

// The Store satisfies the interface its consumer defines. The check lives in
// a test so that the package itself never builds the processor (gRPC,
// Envoy's protos, Prometheus).
var _ processor.Store = (*Store)(nil)
