package envoy

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/idemproxy/idemproxy/internal/testenv"
)

// binDir holds the idemproxy and backend binaries built once by TestMain,
// and toxiproxy-server once a test needs it.
var binDir string

// e2eToken is the bearer token every test's Envoy sends and every test's
// idemproxy accepts (from e2eTokenFile), as the shipped config has it.
var e2eToken, e2eTokenFile string

func TestMain(m *testing.M) {
	os.Exit(runMain(m))
}

// runMain builds the binaries under test, unless -short skips every test
// here (they all need Envoy and Redis).
func runMain(m *testing.M) int {
	flag.Parse()
	if testing.Short() {
		return m.Run()
	}
	dir, err := os.MkdirTemp("", "idemproxy-e2e-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2e: temp dir:", err)
		return 1
	}
	defer os.RemoveAll(dir)
	if err := testenv.GoBuild("", dir, raceEnabled, "../cmd/idemproxy", "../cmd/backend"); err != nil {
		fmt.Fprintln(os.Stderr, "e2e: building the binaries failed:", err)
		return 1
	}
	binDir = dir
	e2eToken = "e2e-token-" + strconv.FormatInt(time.Now().UnixNano(), 36) + "-0123456789"
	e2eTokenFile = filepath.Join(dir, "auth-token")
	if err := os.WriteFile(e2eTokenFile, []byte(e2eToken+"\n"), 0o600); err != nil {
		fmt.Fprintln(os.Stderr, "e2e: token file:", err)
		return 1
	}
	return m.Run()
}

// startBin runs one of the binaries TestMain built, for one test.
func startBin(t *testing.T, name, bin string, args ...string) *testenv.Process {
	t.Helper()
	return testenv.Start(t, testenv.Command{Name: name, Path: filepath.Join(binDir, bin), Args: args})
}
