package envoy

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/idemproxy/idemproxy/internal/testenv"
)

// binDir holds the idemproxy and backend binaries built once by TestMain,
// and toxiproxy-server once a test needs it.
var binDir string

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
	return m.Run()
}

// startBin runs one of the binaries TestMain built, for one test.
func startBin(t *testing.T, name, bin string, args ...string) *testenv.Process {
	t.Helper()
	return testenv.Start(t, testenv.Command{Name: name, Path: filepath.Join(binDir, bin), Args: args})
}
