package toxi

import (
	"io"
	"net"
	"testing"
	"time"

	toxiproxy "github.com/Shopify/toxiproxy/v2/client"
	"github.com/stretchr/testify/require"

	"github.com/idemproxy/idemproxy/internal/testenv"
)

// TestToxiproxy proxies an echo server, slows it with a latency toxic,
// heals it, and cuts it by disabling the proxy.
func TestToxiproxy(t *testing.T) {
	tp := Start(t, t.TempDir())
	echo, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	t.Cleanup(func() { _ = echo.Close() })
	go func() {
		for {
			c, err := echo.Accept()
			if err != nil {
				return
			}
			go func() { defer c.Close(); _, _ = io.Copy(c, c) }()
		}
	}()
	front := testenv.Addr(t)
	tp.CreateProxy(t, "echo", front, echo.Addr().String())

	roundTrip := func() (time.Duration, error) {
		c, err := net.DialTimeout("tcp", front, time.Second)
		if err != nil {
			return 0, err
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(3 * time.Second))
		start := time.Now()
		if _, err := c.Write([]byte("ping")); err != nil {
			return 0, err
		}
		_, err = io.ReadFull(c, make([]byte, 4))
		return time.Since(start), err
	}
	_, err = roundTrip()
	require.NoError(t, err, "the proxy passes traffic")

	tp.AddToxic(t, "echo", "slow", "latency", "downstream", toxiproxy.Attributes{"latency": 300})
	d, err := roundTrip()
	require.NoError(t, err)
	require.GreaterOrEqual(t, d, 300*time.Millisecond)
	tp.RemoveToxic(t, "echo", "slow")
	d, err = roundTrip()
	require.NoError(t, err)
	require.Less(t, d, 300*time.Millisecond)

	tp.SetEnabled(t, "echo", false)
	_, err = roundTrip()
	require.Error(t, err, "a disabled proxy refuses connections")
	tp.SetEnabled(t, "echo", true)
	_, err = roundTrip()
	require.NoError(t, err)
}
