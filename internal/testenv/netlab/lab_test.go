package netlab

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/idemproxy/idemproxy/internal/testenv"
	"github.com/idemproxy/idemproxy/internal/testenv/redistopo"
)

// TestMain checks that nothing outlives the tests (the signal watcher
// ends with the last lab); in a child started by TestLab_Signal it is
// that child instead.
func TestMain(m *testing.M) {
	if os.Getenv(signalChildEnv) != "" {
		os.Exit(signalChild())
	}
	goleak.VerifyTestMain(m)
}

// echoServer accepts connections in h on port and echoes each line back,
// until the test ends.
func echoServer(t *testing.T, h *Host, port int) {
	t.Helper()
	l, err := h.Listen("tcp", h.Addr(port))
	require.NoError(t, err)
	t.Cleanup(func() { _ = l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				_, _ = io.Copy(c, c)
			}()
		}
	}()
}

// reaches reports whether a TCP connection from h to addr comes up and
// echoes a line within a second.
func reaches(h *Host, addr string) bool {
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	c, err := h.DialContext(ctx, "tcp", addr)
	if err != nil {
		return false
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(time.Second))
	if _, err := c.Write([]byte("ping\n")); err != nil {
		return false
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	return err == nil && line == "ping\n"
}

func TestLab_Hosts(t *testing.T) {
	lab := New(t)
	a, b := lab.AddHost(t, "a"), lab.AddHost(t, "b")
	require.True(t, strings.HasPrefix(a.NS, lab.Prefix()+"-"))
	require.Equal(t, []*Host{a, b}, lab.Hosts())
	echoServer(t, b, 7000)

	t.Run("hosts reach each other on the lab's subnet", func(t *testing.T) {
		require.True(t, reaches(a, b.Addr(7000)))
		_, subnet, err := net.ParseCIDR(lab.Subnet())
		require.NoError(t, err)
		require.True(t, subnet.Contains(net.ParseIP(a.IP)))
	})
	t.Run("a host's address is not the test's own", func(t *testing.T) {
		// Binding, not dialling: a dial would leave the machine by its
		// default route, and the lab's traffic stays in the lab.
		l, err := net.Listen("tcp", b.Addr(0))
		if err == nil {
			l.Close()
		}
		require.ErrorContains(t, err, "cannot assign requested address")
	})
	t.Run("a process started in a host sees the host's address only", func(t *testing.T) {
		p := a.Start(t, testenv.Command{Name: "ip", Path: lab.tools.ip, Args: []string{"-o", "-4", "addr", "show"}})
		require.NoError(t, p.Err())
		require.Contains(t, p.Output(), a.IP+"/24")
		require.NotContains(t, p.Output(), b.IP)
	})
	t.Run("a bad or taken name is refused", func(t *testing.T) {
		_, err := lab.NewHost("a")
		require.ErrorContains(t, err, "exists")
		_, err = lab.NewHost("Has-Dash")
		require.ErrorContains(t, err, "host name")
	})
}

func TestLab_Cut(t *testing.T) {
	lab := New(t)
	a, b, c := lab.AddHost(t, "a"), lab.AddHost(t, "b"), lab.AddHost(t, "c")
	for _, h := range []*Host{a, b, c} {
		echoServer(t, h, 7000)
		echoServer(t, h, 7001)
	}
	t.Run("both ways, and heal", func(t *testing.T) {
		require.NoError(t, lab.Cut(Group(a), Group(b)))
		require.False(t, reaches(a, b.Addr(7000)))
		require.False(t, reaches(b, a.Addr(7000)))
		require.True(t, reaches(a, c.Addr(7000)), "the rest still flows")
		require.True(t, reaches(c, b.Addr(7000)))
		require.NoError(t, lab.Heal())
		require.True(t, reaches(a, b.Addr(7000)))
		require.True(t, reaches(b, a.Addr(7000)))
	})
	t.Run("one way drops only what the first side sends", func(t *testing.T) {
		require.NoError(t, lab.CutOneWay(Group(a), Group(b)))
		defer func() { require.NoError(t, lab.Heal()) }()
		require.False(t, datagramArrives(t, a, b), "a to b is cut")
		require.True(t, datagramArrives(t, b, a), "b to a still flows")
	})
	t.Run("only the given ports", func(t *testing.T) {
		require.NoError(t, lab.CutPorts(Group(a), Group(b, c), 7000))
		defer func() { require.NoError(t, lab.Heal()) }()
		require.False(t, reaches(a, b.Addr(7000)))
		require.False(t, reaches(c, a.Addr(7000)))
		require.True(t, reaches(a, b.Addr(7001)))
		require.True(t, reaches(b, c.Addr(7000)), "b and c are on the same side")
	})
}

// datagramArrives sends UDP datagrams from one host to another and reports
// whether one arrived within a second.
func datagramArrives(t *testing.T, from, to *Host) bool {
	t.Helper()
	var pc net.PacketConn
	require.NoError(t, to.In(func() (err error) { pc, err = net.ListenPacket("udp", to.Addr(0)); return err }))
	defer pc.Close()
	c, err := from.DialContext(t.Context(), "udp", pc.LocalAddr().String())
	require.NoError(t, err)
	defer c.Close()
	_ = pc.SetReadDeadline(time.Now().Add(time.Second))
	got := make(chan bool, 1)
	go func() {
		buf := make([]byte, 16)
		_, _, err := pc.ReadFrom(buf)
		got <- err == nil
	}()
	for range 5 {
		_, _ = c.Write([]byte("hello"))
	}
	return testenv.Receive(t, got, 5*time.Second, "the datagram reader")
}

// TestLab_Hold is the late-delivery primitive: a write made while a host's
// packets to its peer are dropped is found among the host's unacknowledged
// connections (Unacked), stays undelivered while every cut heals, and
// arrives once its hold is released.
func TestLab_Hold(t *testing.T) {
	lab := New(t)
	client, server := lab.AddHost(t, "client"), lab.AddHost(t, "server")
	l, err := server.Listen("tcp", server.Addr(7000))
	require.NoError(t, err)
	defer l.Close()
	received := make(chan string, 1)
	go func() {
		c, err := l.Accept()
		if err != nil {
			received <- "accept: " + err.Error()
			return
		}
		defer c.Close()
		line, err := bufio.NewReader(c).ReadString('\n')
		received <- fmt.Sprint(line, err)
	}()
	conn, err := client.DialContext(t.Context(), "tcp", server.Addr(7000))
	require.NoError(t, err)
	defer conn.Close()

	require.NoError(t, lab.CutOneWay(Group(client), Group(server)))
	_, err = conn.Write([]byte("stale command\n"))
	require.NoError(t, err)
	holds, err := lab.HoldUnacked(t.Context(), client, Group(server), 5*time.Second)
	require.NoError(t, err)
	require.Len(t, holds, 1, "the connection that wrote")
	hold := holds[0]
	echoServer(t, server, 7001)
	require.True(t, reaches(client, server.Addr(7001)), "everything but the held connection is healed")
	// An absence, so checked over a window: two seconds is several
	// retransmissions at the backoff a short block leaves.
	select {
	case got := <-received:
		t.Fatalf("the held write arrived before its release: %q", got)
	case <-time.After(2 * time.Second):
	}
	released := time.Now()
	require.NoError(t, hold.Release())
	require.Equal(t, "stale command\n<nil>", testenv.Receive(t, received, 30*time.Second, "the held write"))
	require.Equal(t, conn.LocalAddr().String(), fmt.Sprint(hold.Conn().Local))
	t.Logf("the held write arrived %v after its release (TCP's retransmission backoff)", time.Since(released).Round(time.Millisecond))
	require.NoError(t, hold.Release(), "a second release is a no-op")
}

func TestLab_Redis(t *testing.T) {
	lab := New(t)
	client := lab.AddHost(t, "client")
	t.Run("one server, out of reach when cut", func(t *testing.T) {
		r := lab.AddHost(t, "r")
		srv, err := redistopo.StartServer(redistopo.Options{Bin: testenv.RedisServerBin(t), Port: 6379, Dir: t.TempDir(), Place: r.Place(client)})
		require.NoError(t, err)
		defer srv.Stop()
		require.Equal(t, r.Addr(6379), srv.Addr)
		require.NoError(t, srv.Client(t).Set(t.Context(), "k", "v", 0).Err(), "reached from the client host")
		require.NoError(t, lab.Cut(Group(client), Group(r)))
		defer func() { require.NoError(t, lab.Heal()) }()
		require.Error(t, redistopo.PingVia(t.Context(), client.DialContext, srv.Addr))
	})
	t.Run("a Sentinel topology on three hosts fails over a cut-off primary", func(t *testing.T) {
		var places []redistopo.Place
		var hosts []*Host
		for i := range 3 {
			h := lab.AddHost(t, fmt.Sprintf("s%d", i+1))
			hosts, places = append(hosts, h), append(places, h.Place(client))
		}
		st := redistopo.NewSentinelWith(t, redistopo.SentinelOptions{Places: places, DownAfter: time.Second, FailoverTimeout: 3 * time.Second})
		require.Equal(t, hosts[0].Addr(6379), st.Data[0].Addr)
		require.NoError(t, st.Client(t).Set(t.Context(), "k", "v", 0).Err())
		start := time.Now()
		require.NoError(t, lab.Cut(Group(hosts[0]), Group(hosts[1], hosts[2])))
		testenv.WaitFor(t, 30*time.Second, "the majority's sentinels to promote a replica", func() bool {
			for _, s := range st.Sentinels[1:] {
				if p, err := st.PrimaryOf(t.Context(), s); err != nil || p == st.Data[0] {
					return false
				}
			}
			return true
		})
		old, err := st.PrimaryOf(t.Context(), st.Sentinels[0])
		require.NoError(t, err)
		require.Equal(t, st.Data[0], old, "the cut-off sentinel still names the old primary")
		t.Logf("promoted %v after the cut", time.Since(start).Round(time.Millisecond))
		require.NoError(t, lab.Heal())
		promoted, err := st.WaitFailover(t.Context(), st.Data[0])
		require.NoError(t, err, "after the heal every sentinel names the new primary")
		require.NotEqual(t, st.Data[0], promoted)
		t.Logf("every sentinel agrees %v after the cut", time.Since(start).Round(time.Millisecond))
		require.NoError(t, st.WaitHealthy(t.Context()))
		t.Logf("healthy %v after the cut", time.Since(start).Round(time.Millisecond))
	})
	t.Run("a Cluster on six hosts", func(t *testing.T) {
		var places []redistopo.Place
		for i := range 6 {
			places = append(places, lab.AddHost(t, fmt.Sprintf("c%d", i+1)).Place(client))
		}
		cl := redistopo.NewClusterWith(t, redistopo.ClusterOptions{Places: places})
		require.NoError(t, cl.Client(t).Set(t.Context(), "k", "v", 0).Err())
	})
}
