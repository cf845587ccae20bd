package netlab

import (
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
)

// Every host's INPUT jumps first to two chains of its own. cutChain holds
// the partitions, and Heal empties it; holdChain holds single connections
// (Hold), which only their Release removes, so a heal can leave one
// connection blocked.
const (
	cutChain  = "ipxcut"
	holdChain = "ipxhold"
)

// Packets are dropped where they arrive, in the receiver's INPUT, never in
// the sender's OUTPUT: a drop on the way out makes connect and send fail
// at once with EPERM, which no real partition does; a drop on the way in
// leaves the sender waiting and retransmitting, as a lost link does.

// Cut partitions a from b, both ways: no packet from a host in a reaches a
// host in b, or the other way round. Hosts within a (or b) still talk, as
// do both sides with every other host.
func (l *Lab) Cut(a, b []*Host) error {
	return l.addRules(pairs(a, b, true), nil)
}

// CutOneWay drops every packet from a host in from to a host in to; the
// other direction still flows (so TCP to or from them stalls, but a
// one-way stream of datagrams from to reaches from).
func (l *Lab) CutOneWay(from, to []*Host) error {
	return l.addRules(pairs(from, to, false), nil)
}

// CutPorts is Cut for TCP segments to or from the given ports only:
// replication between Redis hosts, say, while everything else flows.
func (l *Lab) CutPorts(a, b []*Host, ports ...int) error {
	if len(ports) == 0 || len(ports) > 15 {
		return fmt.Errorf("CutPorts takes 1 to 15 ports (iptables multiport), not %d", len(ports))
	}
	list := make([]string, len(ports))
	for i, p := range ports {
		list[i] = strconv.Itoa(p)
	}
	p := strings.Join(list, ",")
	return l.addRules(pairs(a, b, true), [][]string{
		{"-p", "tcp", "-m", "multiport", "--dports", p},
		{"-p", "tcp", "-m", "multiport", "--sports", p},
	})
}

// Heal removes every cut (not the holds) on every host.
func (l *Lab) Heal() error {
	return l.eachHost(l.Hosts(), func(h *Host) error {
		_, err := h.Run(l.tools.iptables, "-w", "-F", cutChain)
		return err
	})
}

// link is one direction to drop: packets from src arriving at dst.
type link struct{ src, dst *Host }

// pairs are the links from every host in a to every host in b, and back
// if both.
func pairs(a, b []*Host, both bool) []link {
	var ls []link
	for _, x := range a {
		for _, y := range b {
			ls = append(ls, link{x, y})
			if both {
				ls = append(ls, link{y, x})
			}
		}
	}
	return ls
}

// addRules drops, for each link, the packets from src at dst: all of them,
// or (matches not nil) those that fit one of matches. Each receiving host
// gets its rules in one iptables-restore, the hosts at once, so a cut
// takes effect everywhere within a few milliseconds.
func (l *Lab) addRules(links []link, matches [][]string) error {
	if len(matches) == 0 {
		matches = [][]string{nil}
	}
	rules := map[*Host][]string{}
	for _, ln := range links {
		if ln.src == ln.dst || ln.src.lab != l || ln.dst.lab != l {
			return fmt.Errorf("cannot cut %s from %s", ln.src.Name, ln.dst.Name)
		}
		for _, m := range matches {
			spec := append([]string{"-A", cutChain, "-s", ln.src.IP}, m...)
			rules[ln.dst] = append(rules[ln.dst], strings.Join(append(spec, "-j", "DROP"), " "))
		}
	}
	var hosts []*Host
	for h := range rules {
		hosts = append(hosts, h)
	}
	return l.eachHost(hosts, func(h *Host) error {
		return h.restore("*filter\n" + strings.Join(rules[h], "\n") + "\nCOMMIT\n")
	})
}

// restore adds the rules of an iptables-restore script to h's tables.
func (h *Host) restore(script string) error {
	_, err := runInput(script, h.lab.tools.ip, append(h.Wrap()[1:], h.lab.tools.iptablesRestore, "-w", "--noflush")...)
	return err
}

// eachHost runs fn for every host at once and joins their errors.
func (l *Lab) eachHost(hosts []*Host, fn func(*Host) error) error {
	errs := make([]error, len(hosts))
	var wg sync.WaitGroup
	for i, h := range hosts {
		wg.Go(func() { errs[i] = fn(h) })
	}
	wg.Wait()
	return errors.Join(errs...)
}

// Rules lists h's cut and hold rules (iptables -S), for failure messages.
func (h *Host) Rules() string {
	var b strings.Builder
	for _, c := range []string{holdChain, cutChain} {
		out, err := h.Run(h.lab.tools.iptables, "-w", "-S", c)
		if err != nil {
			out = err.Error()
		}
		b.WriteString(out)
	}
	return b.String()
}

// Group is hosts as a list, for Cut's arguments.
func Group(hosts ...*Host) []*Host { return hosts }

// Others are the lab's hosts that are not in except.
func (l *Lab) Others(except ...*Host) []*Host {
	return slices.DeleteFunc(l.Hosts(), func(h *Host) bool { return slices.Contains(except, h) })
}
