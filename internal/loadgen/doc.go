// Package loadgen drives HTTP/1.1 load at a server and measures what the
// clients saw: a keep-alive client that writes pre-built request bytes and
// reads responses without allocating (Conn), closed-loop and open-loop
// runs over a warm-up and a measured window without coordinated omission
// (Run), nearest-rank percentiles (Latencies), and long requests held in
// flight, each on a connection of its own, to be let finish or cut
// (Hold). It knows nothing of idempotency: idembench builds the requests
// and reads the servers' side.
package loadgen
