package main

import (
	"bufio"
	"encoding/json"
	"errors"
	"flag"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/idemproxy/idemproxy/internal/testenv"
)

func TestUsageText_namesEveryEnvironmentVariable(t *testing.T) {
	_, err := parseSettings([]string{"--help"}, env{}.get, io.Discard)
	var early earlyExit
	require.ErrorAs(t, err, &early)
	fs := flag.NewFlagSet("x", flag.ContinueOnError)
	defineFlags(fs, &settings{})
	n := 0
	fs.VisitAll(func(f *flag.Flag) {
		n++
		require.Contains(t, early.text, "--"+f.Name+" ")
		require.Contains(t, early.text, "env "+envName(f.Name), f.Name)
	})
	require.Greater(t, n, 30)
	require.Contains(t, early.text, "--version")
	require.NotContains(t, early.text, "IDEMPROXY_VERSION", "--version has no environment variable")
}

func TestParseSettings_version(t *testing.T) {
	_, err := parseSettings([]string{"--version"}, env{}.get, io.Discard)
	var early earlyExit
	require.ErrorAs(t, err, &early)
	require.Contains(t, early.text, runtime.Version())
	require.Contains(t, early.text, "commit ")

	// An environment variable never asks for the version.
	_, err = parseSettings(nil, env{"IDEMPROXY_VERSION": "true", "IDEMPROXY_GRPC_ADDR": "127.0.0.1:50051"}.get, io.Discard)
	require.NoError(t, err)
}

// buildWithVersion builds idemproxy as the Dockerfile does, with the
// version and commit set through -ldflags.
func buildWithVersion(t *testing.T) string {
	t.Helper()
	testenv.NeedsBinaries(t)
	bin := filepath.Join(t.TempDir(), "idemproxy")
	cmd := exec.Command("go", "build", "-o", bin,
		"-ldflags", "-X main.version=v0.0.0-test -X main.commit=0123abc", ".")
	out, err := cmd.CombinedOutput()
	require.NoError(t, err, "%s", out)
	return bin
}

func TestBinary_helpAndVersion(t *testing.T) {
	bin := buildWithVersion(t)

	out, err := exec.Command(bin, "--help").Output()
	require.NoError(t, err, "--help exits 0")
	require.Contains(t, string(out), "--redis-url string  (env IDEMPROXY_REDIS_URL, default \"redis://127.0.0.1:6379/0\")")

	out, err = exec.Command(bin, "--version").Output()
	require.NoError(t, err)
	require.Equal(t, "idemproxy v0.0.0-test (commit 0123abc, "+runtime.Version()+", "+runtime.GOOS+"/"+runtime.GOARCH+")\n", string(out))

	err = exec.Command(bin, "--no-such-flag").Run()
	var exit *exec.ExitError
	require.True(t, errors.As(err, &exit))
	require.Equal(t, 2, exit.ExitCode(), "a mistake still exits 2")
}

// TestBinary_redisDownLogsOnlyJSON runs the binary against a Redis that is
// not there: go-redis's own complaints must arrive as JSON lines too.
func TestBinary_redisDownLogsOnlyJSON(t *testing.T) {
	bin := buildWithVersion(t)
	dead := testenv.Addr(t) // nothing listens there
	p := testenv.Start(t, testenv.Command{Name: "idemproxy", Path: bin, Args: []string{
		"--grpc-addr", "127.0.0.1:0", "--admin-addr", "127.0.0.1:0",
		"--redis-url", "redis://" + dead + "/0", "--health-interval", "100ms", "--redis-timeout", "200ms",
	}})
	testenv.WaitFor(t, 15*time.Second, "a go-redis log line", func() bool {
		return strings.Contains(p.Output(), `"component":"go-redis"`)
	})
	p.Stop(testenv.StopGrace)
	sc := bufio.NewScanner(strings.NewReader(p.Output()))
	lines := 0
	for sc.Scan() {
		lines++
		var rec map[string]any
		require.NoError(t, json.Unmarshal(sc.Bytes(), &rec), "a line that is not JSON: %q", sc.Text())
		require.Contains(t, rec, "level")
	}
	require.Positive(t, lines)
	require.NotContains(t, p.Output(), "redis: ", "no plain-text go-redis prefix")

	// A failure after start (the gRPC port taken) is a JSON line too, and
	// exits 1. (Not necessarily the last line: go-redis's dials to the
	// absent Redis may still log.)
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer taken.Close()
	var stderr strings.Builder
	cmd := exec.Command(bin, "--grpc-addr", taken.Addr().String(), "--admin-addr", "127.0.0.1:0", "--redis-url", "redis://"+dead+"/0")
	cmd.Stderr = &stderr
	err = cmd.Run()
	var exit *exec.ExitError
	require.True(t, errors.As(err, &exit), "%v", err)
	require.Equal(t, 1, exit.ExitCode())
	var failure map[string]any
	for _, line := range strings.Split(strings.TrimSpace(stderr.String()), "\n") {
		var rec map[string]any
		require.NoError(t, json.Unmarshal([]byte(line), &rec), "a line that is not JSON: %q", line)
		if rec["level"] == "ERROR" {
			failure = rec
		}
	}
	require.NotNil(t, failure, "no ERROR line:\n%s", stderr.String())
	require.Contains(t, failure["error"], "address already in use")
	_ = os.Remove(bin)
}
