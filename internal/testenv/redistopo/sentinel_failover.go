package redistopo

import (
	"context"
	"fmt"
	"net"

	"github.com/idemproxy/idemproxy/internal/testenv"
)

// PrimaryAddr is the (plain) address of the primary the first running
// sentinel reports.
func (st *Sentinel) PrimaryAddr(ctx context.Context) (string, error) {
	p, err := st.Primary(ctx)
	if err != nil {
		return "", err
	}
	return p.Addr, nil
}

// reportedPrimary is the primary's address as the first running sentinel
// reports it: a TLS address on a TLS topology.
func (st *Sentinel) reportedPrimary(ctx context.Context) (string, error) {
	for _, s := range st.Sentinels {
		if s.Running() {
			return st.namedBy(ctx, s)
		}
	}
	return "", errNoSentinel
}

// namedBy is the primary's address as sentinel s reports it.
func (st *Sentinel) namedBy(ctx context.Context, s *Server) (string, error) {
	v, err := do(ctx, st.dial, s.Addr, "SENTINEL", "GET-MASTER-ADDR-BY-NAME", MasterName)
	if err != nil {
		return "", fmt.Errorf("sentinel %s: %w", s.Addr, err)
	}
	hp, ok := v.([]any)
	if !ok || len(hp) != 2 {
		return "", fmt.Errorf("sentinel %s: GET-MASTER-ADDR-BY-NAME answered %v", s.Addr, v)
	}
	return net.JoinHostPort(fmt.Sprint(hp[0]), fmt.Sprint(hp[1])), nil
}

// PrimaryOf is the data server sentinel s calls the primary: in a
// partition, each side's sentinels may name another.
func (st *Sentinel) PrimaryOf(ctx context.Context, s *Server) (*Server, error) {
	addr, err := st.namedBy(ctx, s)
	if err != nil {
		return nil, err
	}
	return st.dataServer(addr)
}

// Primary is the data server the sentinels call the primary.
func (st *Sentinel) Primary(ctx context.Context) (*Server, error) {
	addr, err := st.reportedPrimary(ctx)
	if err != nil {
		return nil, err
	}
	return st.dataServer(addr)
}

// Kill SIGKILLs one server of the topology.
func (st *Sentinel) Kill(s *Server) { s.Stop() }

// WaitFailover waits (up to SentinelReadyTimeout) until every running
// sentinel names a primary other than old, and that server says it is one.
func (st *Sentinel) WaitFailover(ctx context.Context, old *Server) (*Server, error) {
	var promoted *Server
	err := testenv.Poll(ctx, SentinelReadyTimeout, func(ctx context.Context) error {
		var addr string
		for _, s := range st.Sentinels {
			if !s.Running() {
				continue
			}
			v, err := do(ctx, st.dial, s.Addr, "SENTINEL", "GET-MASTER-ADDR-BY-NAME", MasterName)
			hp, _ := v.([]any)
			if err != nil || len(hp) != 2 {
				return fmt.Errorf("sentinel %s: %v %v", s.Addr, v, err)
			}
			a := net.JoinHostPort(fmt.Sprint(hp[0]), fmt.Sprint(hp[1]))
			if a == old.ReplicationAddr() || (addr != "" && a != addr) {
				return fmt.Errorf("sentinel %s names %s (old primary %s)", s.Addr, a, old.Addr)
			}
			addr = a
		}
		d, err := st.dataServer(addr)
		if err != nil {
			return err
		}
		if r, _, err := role(ctx, st.dial, d.Addr); err != nil || r != "master" {
			return fmt.Errorf("%s: role %q (%v)", d.Addr, r, err)
		}
		promoted = d
		return nil
	})
	return promoted, err
}

// Restart starts the killed data server s again, empty, as a replica of
// the current primary, and waits until it is synced. It refuses while the
// sentinels still name s the primary: an empty primary would come back and
// its replicas would copy the empty data set.
func (st *Sentinel) Restart(ctx context.Context, s *Server) error {
	primary, err := st.Primary(ctx)
	if err != nil {
		return err
	}
	if primary == s {
		return fmt.Errorf("the sentinels still name %s the primary: restarting it empty before a replica took over would wipe the replicas; WaitFailover first", s.Addr)
	}
	s.opts.Args = st.replicaArgs(primary)
	if err := s.restart(); err != nil {
		return err
	}
	return st.WaitHealthy(ctx)
}
