package netlab

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/idemproxy/idemproxy/internal/testenv"
)

// Conn is one TCP connection of a host, as `ss -tni` shows it.
type Conn struct {
	// State is ss's name for it: ESTAB, CLOSE-WAIT, ...
	State string
	// Local is the host's end, Peer the other.
	Local, Peer netip.AddrPort
	// SendQ is the bytes written and not yet acknowledged by the peer.
	SendQ int
	// Unacked is the segments sent and not yet acknowledged: data that
	// is on its way, or lost and waiting to be sent again.
	Unacked int
}

// Conns are h's TCP connections (not its listeners).
func (h *Host) Conns() ([]Conn, error) {
	out, err := h.Run(h.lab.tools.ss, "-tniH")
	if err != nil {
		return nil, err
	}
	return parseSS(out)
}

// Unacked are h's connections to any of peers (to anyone, without peers)
// that carry data sent and not acknowledged: while h's packets to a peer
// are dropped, the connections that wrote something since.
func (h *Host) Unacked(peers ...*Host) ([]Conn, error) {
	conns, err := h.Conns()
	if err != nil {
		return nil, err
	}
	return slices.DeleteFunc(conns, func(c Conn) bool {
		to := len(peers) == 0 || slices.ContainsFunc(peers, func(p *Host) bool { return p.IP == c.Peer.Addr().String() })
		return c.Unacked == 0 || !to
	}), nil
}

// parseSS reads `ss -tniH`: a line per connection (state, Recv-Q, Send-Q,
// local, peer), each followed by an indented line of TCP details.
func parseSS(out string) ([]Conn, error) {
	var conns []Conn
	for line := range strings.SplitSeq(out, "\n") {
		if strings.TrimSpace(line) == "" {
			continue
		}
		if line[0] == ' ' || line[0] == '\t' {
			if len(conns) > 0 {
				conns[len(conns)-1].Unacked = detail(line, "unacked")
			}
			continue
		}
		f := strings.Fields(line)
		if len(f) < 5 {
			return nil, fmt.Errorf("ss line %q", line)
		}
		local, err1 := netip.ParseAddrPort(f[3])
		peer, err2 := netip.ParseAddrPort(f[4])
		sendQ, err3 := strconv.Atoi(f[2])
		if err1 != nil || err2 != nil || err3 != nil {
			return nil, fmt.Errorf("ss line %q", line)
		}
		conns = append(conns, Conn{State: f[0], SendQ: sendQ,
			Local: netip.AddrPortFrom(local.Addr().Unmap(), local.Port()), Peer: netip.AddrPortFrom(peer.Addr().Unmap(), peer.Port())})
	}
	return conns, nil
}

// detail is the number after "name:" in an ss details line, or 0.
func detail(line, name string) int {
	for f := range strings.FieldsSeq(line) {
		if v, ok := strings.CutPrefix(f, name+":"); ok {
			n, _ := strconv.Atoi(v)
			return n
		}
	}
	return 0
}

// Hold is one connection kept blocked: its packets from its local end to
// its peer are dropped at the peer, whatever Heal does, until Release.
type Hold struct {
	conn Conn
	at   *Host
	spec []string
	once sync.Once
	err  error
}

// Hold keeps c (a connection of one of the lab's hosts to another) blocked
// from its local end to its peer until Release. With the host's packets to
// the peer cut first, c's unacknowledged data (Host.Unacked) then stays
// undelivered while everything else heals, and arrives, late, when the
// last rule goes: TCP retransmits it.
func (l *Lab) Hold(c Conn) (*Hold, error) {
	peer := l.hostByIP(c.Peer.Addr().String())
	if peer == nil || l.hostByIP(c.Local.Addr().String()) == nil {
		return nil, fmt.Errorf("connection %s -> %s is not between the lab's hosts", c.Local, c.Peer)
	}
	hd := &Hold{conn: c, at: peer, spec: []string{holdChain, "-s", c.Local.Addr().String(), "-d", c.Peer.Addr().String(),
		"-p", "tcp", "--sport", strconv.Itoa(int(c.Local.Port())), "--dport", strconv.Itoa(int(c.Peer.Port())), "-j", "DROP"}}
	if _, err := peer.Run(l.tools.iptables, append([]string{"-w", "-A"}, hd.spec...)...); err != nil {
		return nil, err
	}
	return hd, nil
}

// Conn is the held connection.
func (hd *Hold) Conn() Conn { return hd.conn }

// Release lets the held connection through again. Only the first call
// acts; every call returns its error.
func (hd *Hold) Release() error {
	hd.once.Do(func() {
		_, hd.err = hd.at.Run(hd.at.lab.tools.iptables, append([]string{"-w", "-D"}, hd.spec...)...)
	})
	return hd.err
}

// HoldUnacked is the late-delivery setup in one step, for a host whose
// packets to peers are cut (CutOneWay) while it writes: it waits up to
// timeout until from has connections to peers carrying unacknowledged
// data, holds each of them, then heals every cut. Everything else flows
// again; what was held stays undelivered until its Release, when TCP's
// retransmission brings the stale writes, late. On an error nothing stays
// held.
func (l *Lab) HoldUnacked(ctx context.Context, from *Host, peers []*Host, timeout time.Duration) ([]*Hold, error) {
	var stuck []Conn
	err := testenv.Poll(ctx, timeout, func(context.Context) error {
		var err error
		if stuck, err = from.Unacked(peers...); err == nil && len(stuck) == 0 {
			err = fmt.Errorf("no connection of %s has unacknowledged data", from.Name)
		}
		return err
	})
	if err != nil {
		return nil, err
	}
	var holds []*Hold
	release := func(err error) ([]*Hold, error) {
		for _, h := range holds {
			err = errors.Join(err, h.Release())
		}
		return nil, err
	}
	for _, c := range stuck {
		h, err := l.Hold(c)
		if err != nil {
			return release(err)
		}
		holds = append(holds, h)
	}
	if err := l.Heal(); err != nil {
		return release(err)
	}
	return holds, nil
}
