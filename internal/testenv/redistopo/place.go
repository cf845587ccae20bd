package redistopo

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
)

// Dialer opens a connection to addr, as redis.Options.Dialer does.
type Dialer func(ctx context.Context, network, addr string) (net.Conn, error)

// Place says where a server runs when a topology is spread over test
// hosts (Linux network namespaces, see internal/testenv/netlab) instead of
// this machine's loopback: the address it binds, the command prefix that
// starts it there, and how the test reaches it. The zero Place is loopback.
type Place struct {
	// IP is the address the server binds; "" is 127.0.0.1.
	IP string
	// Wrap is put before the server's command line (and redis-cli's), e.g.
	// `ip netns exec NS`: the process runs where the address is.
	Wrap []string
	// Dial is how the test's own helpers and clients connect to servers so
	// placed; nil dials from the test's network namespace.
	Dial Dialer
}

// placed reports whether the Place is somewhere other than loopback.
func (p Place) placed() bool { return p.IP != "" }

// ip is the address to bind.
func (p Place) ip() string {
	if p.IP == "" {
		return "127.0.0.1"
	}
	return p.IP
}

// command is bin with args, behind the Place's Wrap.
func (p Place) command(bin string, args []string) (string, []string) {
	if len(p.Wrap) == 0 {
		return bin, args
	}
	return p.Wrap[0], append(append(append([]string(nil), p.Wrap[1:]...), bin), args...)
}

// dialer is the Place's Dial, or a plain TCP dial.
func (p Place) dialer() Dialer {
	if p.Dial != nil {
		return p.Dial
	}
	var d net.Dialer
	return d.DialContext
}

// args are the command-line settings a placed server needs: it listens on
// an address other than loopback without a password, which Redis refuses
// in protected mode, and the test hosts are the test's own.
func (p Place) args() []string {
	if !p.placed() {
		return nil
	}
	return []string{"--protected-mode", "no"}
}

// errPlacedPort: a port picked free on this machine's loopback says
// nothing about another network namespace, so a placed server names its.
var errPlacedPort = errors.New("a placed server needs an explicit port")

// clientOptions are go-redis options for addr reached through dial.
func clientOptions(dial Dialer, addr string) *redis.Options {
	return &redis.Options{Addr: addr, Dialer: dial, MaxRetries: -1, DialTimeout: time.Second,
		ReadTimeout: time.Second, WriteTimeout: time.Second, PoolSize: 1}
}

// Ping sends one PING over a plain connection, without go-redis, so that
// waiting leaves no client pool behind. A server that requires a password
// (the ACL tests) answers NOAUTH: it is up.
func Ping(addr string) error {
	var d net.Dialer
	return PingVia(context.Background(), d.DialContext, addr)
}

// PingVia is Ping over a connection that dial opens (a placed server's).
func PingVia(ctx context.Context, dial Dialer, addr string) error {
	ctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	conn, err := dial(ctx, "tcp", addr)
	if err != nil {
		return err
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(time.Second))
	if _, err := conn.Write([]byte("PING\r\n")); err != nil {
		return err
	}
	line, err := bufio.NewReader(conn).ReadString('\n')
	if err != nil {
		return err
	}
	if line != "+PONG\r\n" && !strings.HasPrefix(line, "-NOAUTH") {
		return fmt.Errorf("PING answered %q", line)
	}
	return nil
}
