// Package netlab runs test hosts in Linux network namespaces. A Lab is a
// set of namespaces a test makes (hosts), each with one address on a
// private /24 picked per run, joined by a bridge that lives in a namespace
// of its own (the switch), so the machine's own network is never touched
// and traffic stays between the lab's namespaces. Real processes run inside
// a host (Host.Start: `ip netns exec`); the test process itself connects
// from inside one (Host.DialContext); a nemesis cuts hosts apart with
// iptables rules in their namespaces (Lab.Cut, CutOneWay, CutPorts, Heal)
// or keeps a single TCP connection blocked while the rest heals (Lab.Hold).
//
// Everything a lab makes is named with a per-run prefix, ipx<pid>x<hex>,
// and removed in t.Cleanup; also on SIGINT and SIGTERM (the lab's handler
// removes it, then lets the signal end the process); and, for a run killed
// outright (a go test timeout, SIGKILL), by the sweep each new lab does of
// namespaces whose owning pid is gone.
//
// It needs Linux, root, ip and ss (iproute2) and iptables; scripts/deps.sh
// installs them. Under -short the wrappers skip (testenv.NeedsBinaries).
package netlab

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/idemproxy/idemproxy/internal/testenv"
)

// Prefix begins the name of every namespace a lab makes.
const Prefix = "ipx"

// CommandTimeout bounds each ip, iptables and ss command the lab runs.
const CommandTimeout = 10 * time.Second

// Lab is one test's set of hosts. Its methods may be called from any
// goroutine.
type Lab struct {
	prefix string  // ipx<pid>x<hex>: every namespace's name starts with it
	net    [2]byte // the /24 is 10.net[0].net[1].0
	sw     string  // the switch namespace, holding the bridge
	tools  tools

	mu     sync.Mutex
	hosts  []*Host
	closed bool
}

// New makes a lab for one test, removed in t.Cleanup. It fails the test
// with the reason and the fix when the machine cannot run one (not root,
// not Linux, a tool missing), and skips it under -short.
func New(t testing.TB) *Lab {
	t.Helper()
	testenv.NeedsBinaries(t)
	l, err := Open()
	if err != nil {
		t.Fatalf("netlab: %v", err)
	}
	t.Cleanup(func() {
		if err := l.Close(); err != nil {
			t.Errorf("netlab: %v", err)
		}
	})
	return l
}

// Open makes a lab: it sweeps the leftovers of dead runs, then makes the
// switch namespace with its bridge. Close removes it.
func Open() (*Lab, error) {
	tl, err := findTools()
	if err != nil {
		return nil, err
	}
	if err := sweep(tl); err != nil {
		return nil, err
	}
	var r [4]byte
	if _, err := rand.Read(r[:]); err != nil {
		return nil, err
	}
	// 10.64.0.0 to 10.253.255.0: a /24 unlikely to be a leftover's, and
	// never 10.0.x or 10.255.x, which other tools like to use.
	l := &Lab{prefix: fmt.Sprintf("%s%dx%s", Prefix, os.Getpid(), hex.EncodeToString(r[:2])),
		net: [2]byte{64 + r[2]%190, r[3]}, tools: tl}
	l.sw = l.prefix + "-sw"
	register(l)
	if err := l.makeSwitch(); err != nil {
		return nil, errors.Join(err, l.Close())
	}
	return l, nil
}

// makeSwitch makes the switch namespace and its bridge.
func (l *Lab) makeSwitch() error {
	for _, args := range [][]string{
		{"netns", "add", l.sw},
		{"-n", l.sw, "link", "add", "br0", "type", "bridge"},
		{"-n", l.sw, "link", "set", "br0", "up"},
	} {
		if _, err := l.tools.run(l.tools.ip, args...); err != nil {
			return err
		}
	}
	return nil
}

// Prefix is this lab's name prefix: every namespace it made starts with it.
func (l *Lab) Prefix() string { return l.prefix }

// Subnet is the lab's /24, e.g. "10.123.45.0/24".
func (l *Lab) Subnet() string { return fmt.Sprintf("10.%d.%d.0/24", l.net[0], l.net[1]) }

// Hosts are the hosts made so far, in order.
func (l *Lab) Hosts() []*Host {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]*Host(nil), l.hosts...)
}

// hostByIP is the lab's host with address ip, or nil.
func (l *Lab) hostByIP(ip string) *Host {
	for _, h := range l.Hosts() {
		if h.IP == ip {
			return h
		}
	}
	return nil
}

// Close kills every process still in the lab's namespaces and deletes
// them. It may be called more than once, and from the signal handler.
func (l *Lab) Close() error {
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return nil
	}
	l.closed = true
	hosts := l.hosts
	l.mu.Unlock()
	defer unregister(l)
	var errs []error
	for _, h := range hosts {
		errs = append(errs, removeNS(l.tools, h.NS))
		h.ns.Close()
	}
	return errors.Join(append(errs, removeNS(l.tools, l.sw))...)
}

// removeNS kills the processes in namespace ns and deletes it. Deleting
// the switch's namespace deletes the bridge and every veth with it.
func removeNS(tl tools, ns string) error {
	out, err := tl.run(tl.ip, "netns", "pids", ns)
	if err != nil {
		if strings.Contains(err.Error(), "No such file") {
			return nil // never made, or already gone
		}
		return err
	}
	for _, f := range strings.Fields(out) {
		var pid int
		if _, err := fmt.Sscan(f, &pid); err == nil && pid > 1 {
			_ = killPid(pid)
		}
	}
	_, err = tl.run(tl.ip, "netns", "del", ns)
	return err
}

// tools are the programs the lab runs, found once.
type tools struct {
	ip, iptablesRestore, iptables, ss string
}

// Install hints in the errors of findTools.
const (
	installIproute2 = "install it with `apt-get install -y iproute2`"
	installIptables = "install it with `apt-get install -y iptables` (scripts/deps.sh does)"
)

// findTools checks that the lab can run here and finds its programs.
func findTools() (tools, error) {
	if err := platformCheck(); err != nil {
		return tools{}, err
	}
	if os.Geteuid() != 0 {
		return tools{}, errors.New("the network-namespace tests must run as root (CI does): run `sudo go test ...` or `sudo make test`")
	}
	var tl tools
	for _, f := range []struct {
		dst        *string
		name, hint string
	}{
		{&tl.ip, "ip", installIproute2}, {&tl.ss, "ss", installIproute2},
		{&tl.iptables, "iptables", installIptables}, {&tl.iptablesRestore, "iptables-restore", installIptables},
	} {
		p, err := exec.LookPath(f.name)
		if err != nil {
			return tools{}, fmt.Errorf("%s is required for the network-namespace tests but was not found on PATH: %s", f.name, f.hint)
		}
		*f.dst = p
	}
	return tl, nil
}

// run runs bin with args, bounded by CommandTimeout, and returns its
// output; an error carries the command line and the output.
func (tools) run(bin string, args ...string) (string, error) {
	return runInput("", bin, args...)
}

// runInput is run with stdin.
func runInput(stdin, bin string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), CommandTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, args...)
	if stdin != "" {
		cmd.Stdin = strings.NewReader(stdin)
	}
	out, err := cmd.CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("%s %s: %w: %s", bin, strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return string(out), nil
}

// hostName is what a host may be called: short, as it ends up in a
// namespace name and in messages.
var hostName = regexp.MustCompile(`^[a-z][a-z0-9]{0,7}$`)
