package netlab

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/idemproxy/idemproxy/internal/testenv"
)

// namespaces are the names `ip netns list` shows that start with prefix.
func namespaces(t *testing.T, prefix string) []string {
	t.Helper()
	tl, err := findTools()
	require.NoError(t, err)
	out, err := tl.run(tl.ip, "netns", "list")
	require.NoError(t, err)
	var names []string
	for line := range strings.SplitSeq(out, "\n") {
		if name, _, _ := strings.Cut(strings.TrimSpace(line), " "); strings.HasPrefix(name, prefix) {
			names = append(names, name)
		}
	}
	return names
}

func TestLab_Close(t *testing.T) {
	testenv.NeedsBinaries(t)
	l, err := Open()
	require.NoError(t, err)
	h, err := l.NewHost("a")
	require.NoError(t, err)
	p, err := testenv.StartProcess(h.Command(testenv.Command{Name: "sleep", Path: "/bin/sleep", Args: []string{"60"}}))
	require.NoError(t, err)
	require.Len(t, namespaces(t, l.Prefix()), 2, "the switch and the host")
	require.NoError(t, l.Close())
	require.Empty(t, namespaces(t, l.Prefix()))
	testenv.Receive(t, p.Done(), 5*time.Second, "the process left in the host to be killed")
	require.NoError(t, l.Close(), "closing twice is fine")
}

func TestLab_Sweep(t *testing.T) {
	testenv.NeedsBinaries(t)
	tl, err := findTools()
	require.NoError(t, err)
	dead := exec.Command("/bin/true")
	require.NoError(t, dead.Run())
	leftover := fmt.Sprintf("%s%dx0000-a", Prefix, dead.Process.Pid)
	mine := fmt.Sprintf("%s%dx0000-a", Prefix, os.Getpid())
	for _, ns := range []string{leftover, mine} {
		_, err := tl.run(tl.ip, "netns", "add", ns)
		require.NoError(t, err)
		t.Cleanup(func() { _ = removeNS(tl, ns) })
	}
	l := New(t) // sweeps
	require.Empty(t, namespaces(t, leftover), "the namespace of a dead run is gone")
	require.Equal(t, []string{mine}, namespaces(t, mine), "a live run's is kept")
	require.Len(t, namespaces(t, l.Prefix()), 1)
}

// signalChildEnv makes the test binary a child for TestLab_Signal.
const signalChildEnv = "NETLAB_SIGNAL_CHILD"

// signalChild makes a lab with a host running sleep, says so on stdout
// ("ready <prefix> <pid>") and waits, at most a minute, for its signal.
func signalChild() int {
	l, err := Open()
	if err != nil {
		fmt.Println("error", err)
		return 1
	}
	h, err := l.NewHost("a")
	if err != nil {
		fmt.Println("error", err)
		return 1
	}
	p, err := testenv.StartProcess(h.Command(testenv.Command{Name: "sleep", Path: "/bin/sleep", Args: []string{"60"}}))
	if err != nil {
		fmt.Println("error", err)
		return 1
	}
	fmt.Println("ready", l.Prefix(), p.Pid())
	time.Sleep(time.Minute) // the parent's signal ends this sooner
	return 3
}

// TestLab_Signal: a test binary stopped by SIGTERM or SIGINT removes its
// labs, kills what runs in them, and still dies of the signal.
func TestLab_Signal(t *testing.T) {
	testenv.NeedsBinaries(t)
	for _, sig := range []syscall.Signal{syscall.SIGTERM, syscall.SIGINT} {
		t.Run(sig.String(), func(t *testing.T) {
			cmd := exec.Command(os.Args[0], "-test.run=^$")
			cmd.Env = append(os.Environ(), signalChildEnv+"=1")
			out, err := cmd.StdoutPipe()
			require.NoError(t, err)
			require.NoError(t, cmd.Start())
			t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
			lines := make(chan string, 1)
			go func() {
				line, _ := bufio.NewReader(out).ReadString('\n')
				lines <- line
			}()
			f := strings.Fields(testenv.Receive(t, lines, 30*time.Second, "the child's lab"))
			require.Len(t, f, 3, "child said %q", f)
			require.Equal(t, "ready", f[0])
			pid, err := strconv.Atoi(f[2])
			require.NoError(t, err)
			require.Len(t, namespaces(t, f[1]), 2)

			require.NoError(t, cmd.Process.Signal(sig))
			done := make(chan error, 1)
			go func() { done <- cmd.Wait() }()
			err = testenv.Receive(t, done, 30*time.Second, "the child to end")
			ws, ok := cmd.ProcessState.Sys().(syscall.WaitStatus)
			require.True(t, ok && ws.Signaled() && ws.Signal() == sig, "the child died of %v, not %v", err, sig)
			require.Empty(t, namespaces(t, f[1]), "the child's lab is gone")
			testenv.WaitFor(t, 5*time.Second, "the process in the child's host to be gone", func() bool { return !pidAlive(pid) })
		})
	}
}

func TestParseSS(t *testing.T) {
	out := "ESTAB      0      6      10.201.7.1:49588 10.201.7.2:6379\n" +
		"\t bbr wscale:10,10 rto:816 backoff:2 bytes_sent:24 unacked:1 retrans:1/3 lost:1\n" +
		"CLOSE-WAIT 1068   0      [::ffff:10.201.7.1]:40000 [::ffff:10.201.7.3]:26379\n" +
		"\t cubic wscale:7,7 rto:204\n"
	conns, err := parseSS(out)
	require.NoError(t, err)
	require.Len(t, conns, 2)
	require.Equal(t, "10.201.7.1:49588", conns[0].Local.String())
	require.Equal(t, "10.201.7.2:6379", conns[0].Peer.String())
	require.Equal(t, 6, conns[0].SendQ)
	require.Equal(t, 1, conns[0].Unacked)
	require.Equal(t, "CLOSE-WAIT", conns[1].State)
	require.Equal(t, "10.201.7.3:26379", conns[1].Peer.String())
	require.Zero(t, conns[1].Unacked)
	_, err = parseSS("garbage\n")
	require.Error(t, err)
}
