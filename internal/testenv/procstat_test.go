package testenv

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// fakeProc writes files under a temp dir laid out like /proc.
func fakeProc(t *testing.T, files map[string]string) string {
	t.Helper()
	root := t.TempDir()
	for name, body := range files {
		path := filepath.Join(root, name)
		require.NoError(t, os.MkdirAll(filepath.Dir(path), 0o755))
		require.NoError(t, os.WriteFile(path, []byte(body), 0o644))
	}
	return root
}

func TestProcessCPU(t *testing.T) {
	t.Run("user plus system time, command name with spaces and parentheses", func(t *testing.T) {
		// A whole stat line as Linux 6 writes it: utime 250, stime 75 ticks.
		line := "4242 (envoy (worker) 1) S 1 4242 4242 0 -1 4194560 1234 0 0 0 250 75 0 0 20 0 9 0 123 456789 789 " +
			"18446744073709551615 1 1 0 0 0 0 0 4096 0 0 0 0 17 1 0 0 0 0 0 0 0 0 0 0 0 0 0\n"
		root := fakeProc(t, map[string]string{"4242/stat": line})
		got, err := processCPU(root, 4242)
		require.NoError(t, err)
		require.Equal(t, 3250*time.Millisecond, got)
	})
	t.Run("a short line is an error", func(t *testing.T) {
		root := fakeProc(t, map[string]string{"7/stat": "1 (x) S 1 2"})
		_, err := processCPU(root, 7)
		require.Error(t, err)
	})
	t.Run("this process", func(t *testing.T) {
		got, err := ProcessCPU(os.Getpid())
		require.NoError(t, err)
		require.GreaterOrEqual(t, got, time.Duration(0))
	})
}

func TestMachineCPU(t *testing.T) {
	t.Run("everything but idle and iowait", func(t *testing.T) {
		stat := "cpu  100 5 50 9000 40 3 2 1 7 0\ncpu0 50 2 25 4500 20 1 1 0 3 0\n"
		got, err := machineCPU(fakeProc(t, map[string]string{"stat": stat}))
		require.NoError(t, err)
		require.Equal(t, 1610*time.Millisecond, got)
	})
	t.Run("this machine", func(t *testing.T) {
		got, err := MachineCPU()
		require.NoError(t, err)
		require.Positive(t, got)
	})
	t.Run("not the aggregate line is an error", func(t *testing.T) {
		_, err := machineCPU(fakeProc(t, map[string]string{"stat": "intr 1 2 3\n"}))
		require.Error(t, err)
	})
}

func TestProcessMemory(t *testing.T) {
	t.Run("current and peak resident set", func(t *testing.T) {
		status := "Name:\tidemproxy\nVmPeak:\t 1000000 kB\nVmHWM:\t   51200 kB\nVmRSS:\t   40960 kB\nThreads:\t9\n"
		got, err := processMemory(fakeProc(t, map[string]string{"9/status": status}), 9)
		require.NoError(t, err)
		require.Equal(t, Memory{RSS: 40960, Peak: 51200}, got)
	})
	t.Run("missing fields are an error", func(t *testing.T) {
		_, err := processMemory(fakeProc(t, map[string]string{"9/status": "Name:\tx\nVmRSS:\t1 kB\n"}), 9)
		require.Error(t, err)
	})
	t.Run("this process, after resetting its peak", func(t *testing.T) {
		require.NoError(t, ResetPeakRSS(os.Getpid()))
		m, err := ProcessMemory(os.Getpid())
		require.NoError(t, err)
		require.Positive(t, m.RSS)
		require.GreaterOrEqual(t, m.Peak, m.RSS)
	})
}
