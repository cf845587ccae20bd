package testenv

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// sh runs a shell script as a Process.
func sh(script string) Command {
	return Command{Name: "sh", Path: "/bin/sh", Args: []string{"-c", script}}
}

func TestStartProcess(t *testing.T) {
	t.Run("output is kept and the exit status reported", func(t *testing.T) {
		p, err := StartProcess(sh(`echo '{"msg":"listening","addr":"127.0.0.1:1"}'; echo bye >&2; exit 3`))
		require.NoError(t, err)
		Receive(t, p.Done(), 5*time.Second, "the child to exit")
		done, werr := p.Exited()
		require.True(t, done)
		require.ErrorContains(t, werr, "exit status 3")
		require.Equal(t, []string{`{"msg":"listening","addr":"127.0.0.1:1"}`, "bye"}, p.Lines())
		require.Equal(t, "127.0.0.1:1", FindLogAddr(p.Output(), "listening"))
		require.Contains(t, p.Failure(fmt.Errorf("boom")).Error(), "sh: boom\n--- last lines of output ---\n")
	})
	t.Run("a log file receives the output", func(t *testing.T) {
		c := sh("echo to-the-file")
		c.LogFile = t.TempDir() + "/sh.log"
		p, err := StartProcess(c)
		require.NoError(t, err)
		require.NoError(t, p.Err())
		require.Equal(t, "to-the-file\n", p.Output())
	})
	t.Run("a missing binary is an error", func(t *testing.T) {
		_, err := StartProcess(Command{Name: "nothing", Path: "/does/not/exist"})
		require.ErrorContains(t, err, "starting nothing")
	})
	t.Run("env is added to the environment", func(t *testing.T) {
		c := sh(`echo "$TESTENV_X"`)
		c.Env = []string{"TESTENV_X=y"}
		p, err := StartProcess(c)
		require.NoError(t, err)
		require.NoError(t, p.Err())
		require.Equal(t, "y\n", p.Output())
	})
}

func TestProcess_Stop(t *testing.T) {
	t.Run("SIGTERM ends a child that heeds it", func(t *testing.T) {
		p, err := StartProcess(sh(`trap 'echo term; exit 0' TERM; echo up; while :; do sleep 0.01; done`))
		require.NoError(t, err)
		_, err = p.WaitLogAddr(t.Context(), time.Second, "never") // polls until timeout, the child is alive
		require.ErrorContains(t, err, "not ready after 1s")
		p.Stop(5 * time.Second)
		require.Contains(t, p.Output(), "term")
		p.Stop(time.Second) // twice is fine
	})
	t.Run("a child that ignores SIGTERM is killed after the grace", func(t *testing.T) {
		p, err := StartProcess(sh(`trap '' TERM; echo up; while :; do sleep 0.01; done`))
		require.NoError(t, err)
		WaitFor(t, 5*time.Second, "the child to start", func() bool { return strings.Contains(p.Output(), "up") })
		start := time.Now()
		p.Stop(200 * time.Millisecond)
		require.Less(t, time.Since(start), 5*time.Second)
		done, _ := p.Exited()
		require.True(t, done)
	})
	t.Run("Kill takes the child's process group with it", func(t *testing.T) {
		p, err := StartProcess(sh(`sleep 60 & echo $!; wait`))
		require.NoError(t, err)
		var grandchild int
		WaitFor(t, 5*time.Second, "the grandchild's pid", func() bool {
			lines := p.Lines()
			if len(lines) > 0 {
				grandchild, err = strconv.Atoi(lines[0])
			}
			return len(lines) > 0 && err == nil
		})
		p.Kill()
		WaitFor(t, 5*time.Second, "the grandchild to die", func() bool { return !alive(grandchild) })
	})
}

func TestProcess_WaitReady(t *testing.T) {
	p, err := StartProcess(sh("echo dying; exit 1"))
	require.NoError(t, err)
	err = p.WaitReady(t.Context(), 10*time.Second, func(_ context.Context) error { return fmt.Errorf("never ready") })
	require.ErrorContains(t, err, "exited before it was ready")
	require.ErrorContains(t, err, "dying")
}

// TestStartProcess_diesWithParent starts a helper (this test binary again)
// that starts a child and is then SIGKILLed, as a `go test` timeout would:
// on Linux the kernel kills the orphan too.
func TestStartProcess_diesWithParent(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("Pdeathsig is Linux only")
	}
	if os.Getenv("TESTENV_ORPHAN_HELPER") == "1" {
		p, err := StartProcess(Command{Name: "sleep", Path: "/bin/sleep", Args: []string{"60"}})
		if err != nil {
			os.Exit(2)
		}
		fmt.Println(p.Pid())
		select {} // until killed
	}
	helper := exec.Command(os.Args[0], "-test.run=^TestStartProcess_diesWithParent$")
	helper.Env = append(os.Environ(), "TESTENV_ORPHAN_HELPER=1")
	out := &Buffer{}
	helper.Stdout = out
	require.NoError(t, helper.Start())
	var orphan int
	WaitFor(t, 10*time.Second, "the helper's child", func() bool {
		lines := out.Lines()
		var err error
		if len(lines) > 0 {
			orphan, err = strconv.Atoi(lines[0])
		}
		return len(lines) > 0 && err == nil
	})
	require.NoError(t, helper.Process.Kill())
	_ = helper.Wait()
	WaitFor(t, 5*time.Second, "the orphan to be killed", func() bool { return !alive(orphan) })
}

// alive reports whether pid exists and is not a zombie.
func alive(pid int) bool {
	if syscall.Kill(pid, 0) != nil {
		return false
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return runtime.GOOS != "linux"
	}
	_, rest, _ := strings.Cut(string(b), ") ")
	return !strings.HasPrefix(rest, "Z")
}
