package netlab

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"strconv"
	"testing"
	"time"

	"github.com/idemproxy/idemproxy/internal/testenv"
	"github.com/idemproxy/idemproxy/internal/testenv/redistopo"
)

// maxHosts bounds a lab: addresses .1 to .200 of its /24.
const maxHosts = 200

// Host is one network namespace of a lab, with one address on the lab's
// /24 on its eth0 (and its own loopback). Processes started in it and
// connections dialled from it see only the lab.
type Host struct {
	// Name is the test's name for it ("r1"); NS its namespace's name.
	Name, NS string
	// IP is its address on the lab's /24.
	IP string

	lab *Lab
	ns  *os.File // /run/netns/NS, held open to enter it
}

// AddHost is NewHost for a test.
func (l *Lab) AddHost(t testing.TB, name string) *Host {
	t.Helper()
	h, err := l.NewHost(name)
	if err != nil {
		t.Fatalf("netlab: %v", err)
	}
	return h
}

// NewHost makes a host: a namespace with loopback up, a veth to the
// switch's bridge and the next address of the lab's /24, and the two
// empty iptables chains the nemesis fills (see Cut and Hold).
func (l *Lab) NewHost(name string) (*Host, error) {
	if !hostName.MatchString(name) {
		return nil, fmt.Errorf("host name %q: want a lower-case letter then up to 7 letters or digits", name)
	}
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return nil, errors.New("the lab is closed")
	}
	n := len(l.hosts) + 1
	for _, h := range l.hosts {
		if h.Name == name {
			l.mu.Unlock()
			return nil, fmt.Errorf("host %s exists", name)
		}
	}
	if n > maxHosts {
		l.mu.Unlock()
		return nil, fmt.Errorf("a lab has at most %d hosts", maxHosts)
	}
	h := &Host{Name: name, NS: l.prefix + "-" + name, IP: fmt.Sprintf("10.%d.%d.%d", l.net[0], l.net[1], n), lab: l}
	// Listed before it exists, so Close removes a half-made host too.
	l.hosts = append(l.hosts, h)
	l.mu.Unlock()
	if err := l.makeHost(h, n); err != nil {
		return nil, err
	}
	return h, nil
}

// makeHost makes h's namespace, links it to the bridge and prepares its
// firewall.
func (l *Lab) makeHost(h *Host, n int) error {
	veth := "v" + strconv.Itoa(n)
	ip := l.tools.ip
	for _, args := range [][]string{
		{"netns", "add", h.NS},
		{"-n", l.sw, "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", h.NS},
		{"-n", l.sw, "link", "set", veth, "master", "br0", "up"},
		{"-n", h.NS, "link", "set", "lo", "up"},
		{"-n", h.NS, "addr", "add", h.IP + "/24", "dev", "eth0"},
		{"-n", h.NS, "link", "set", "eth0", "up"},
	} {
		if _, err := l.tools.run(ip, args...); err != nil {
			return err
		}
	}
	f, err := os.Open("/run/netns/" + h.NS)
	if err != nil {
		return err
	}
	h.ns = f
	return h.restore(fmt.Sprintf("*filter\n:%s - [0:0]\n:%s - [0:0]\n-I INPUT 1 -j %s\n-I INPUT 1 -j %s\nCOMMIT\n",
		cutChain, holdChain, cutChain, holdChain))
}

// Wrap is the command prefix that runs a program in h.
func (h *Host) Wrap() []string { return []string{h.lab.tools.ip, "netns", "exec", h.NS} }

// Command is c run in h, named after h too.
func (h *Host) Command(c testenv.Command) testenv.Command {
	c.Args = append(append(h.Wrap()[1:], c.Path), c.Args...)
	c.Path = h.lab.tools.ip
	c.Name += "@" + h.Name
	return c
}

// Start runs c in h for one test (testenv.Start: stopped in t.Cleanup,
// its output shown if the test failed).
func (h *Host) Start(t testing.TB, c testenv.Command) *testenv.Process {
	t.Helper()
	return testenv.Start(t, h.Command(c))
}

// Run runs bin with args in h (bounded by CommandTimeout) and returns its
// output.
func (h *Host) Run(bin string, args ...string) (string, error) {
	return h.lab.tools.run(h.lab.tools.ip, append(append(h.Wrap()[1:], bin), args...)...)
}

// Addr is h's address with port, host:port.
func (h *Host) Addr(port int) string { return net.JoinHostPort(h.IP, strconv.Itoa(port)) }

// In runs fn on a thread that is in h's network namespace: a socket fn
// makes belongs to h for good, whichever thread uses it later.
func (h *Host) In(fn func() error) error { return enter(h.ns, fn) }

// DialContext opens a connection from inside h, for http.Transport and
// redis.Options. Addresses must be literal: nothing is resolved in h.
func (h *Host) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	var conn net.Conn
	err := h.In(func() error {
		var d net.Dialer
		var err error
		conn, err = d.DialContext(ctx, network, addr)
		return err
	})
	return conn, err
}

// Listen listens inside h.
func (h *Host) Listen(network, addr string) (net.Listener, error) {
	var l net.Listener
	err := h.In(func() error {
		var err error
		l, err = net.Listen(network, addr)
		return err
	})
	return l, err
}

// HTTPClient is a client whose connections start in h; the caller closes
// its idle connections when done.
func (h *Host) HTTPClient(timeout time.Duration, maxConnsPerHost int) *http.Client {
	return &http.Client{Timeout: timeout, Transport: &http.Transport{DialContext: h.DialContext,
		MaxIdleConnsPerHost: maxConnsPerHost, DisableCompression: true}}
}

// Place is where a redistopo server on h runs, reached from via (the host
// the test's Redis helpers and clients connect from).
func (h *Host) Place(via *Host) redistopo.Place {
	return redistopo.Place{IP: h.IP, Wrap: h.Wrap(), Dial: via.DialContext}
}
