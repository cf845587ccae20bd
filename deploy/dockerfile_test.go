package deploy

import (
	"bufio"
	"debug/elf"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// dockerStage is one FROM ... AS name section of the Dockerfile.
type dockerStage struct {
	base  string
	lines []string // instructions, continuation lines joined
}

// parseDockerfile reads the stages of the top-level Dockerfile. No Docker
// engine runs here, so the image build itself is not executed; these tests
// check what it relies on instead.
func parseDockerfile(t *testing.T) (map[string]*dockerStage, []string) {
	t.Helper()
	stages := map[string]*dockerStage{}
	var order []string
	var cur *dockerStage
	from := regexp.MustCompile(`(?i)^FROM\s+(?:--platform=\S+\s+)?(\S+)\s+AS\s+(\S+)$`)
	sc := bufio.NewScanner(strings.NewReader(string(readRepoFile(t, "Dockerfile"))))
	var pending string
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if strings.HasPrefix(line, "#") || (line == "" && pending == "") {
			continue
		}
		if strings.HasSuffix(line, "\\") {
			pending += strings.TrimSuffix(line, "\\") + " "
			continue
		}
		line, pending = pending+line, ""
		if m := from.FindStringSubmatch(line); m != nil {
			cur = &dockerStage{base: m[1]}
			stages[m[2]] = cur
			order = append(order, m[2])
			continue
		}
		if cur != nil {
			cur.lines = append(cur.lines, line)
		}
	}
	require.NoError(t, sc.Err())
	return stages, order
}

// instruction returns the arguments of the last instruction of that name in
// a stage or, failing that, in the stages it is built on.
func instruction(stages map[string]*dockerStage, stage, name string) (string, bool) {
	for s := stages[stage]; s != nil; s = stages[s.base] {
		for i := len(s.lines) - 1; i >= 0; i-- {
			if k, v, _ := strings.Cut(s.lines[i], " "); strings.EqualFold(k, name) {
				return strings.TrimSpace(v), true
			}
		}
	}
	return "", false
}

func TestDockerfile_Targets(t *testing.T) {
	stages, order := parseDockerfile(t)
	require.Equal(t, "idemproxy", order[len(order)-1], "a plain `docker build .` should give the server")
	build := strings.Join(stages["build"].lines, "\n")
	require.Contains(t, build, "CGO_ENABLED=0")
	require.Contains(t, build, `go build -trimpath -ldflags="-s -w -X main.version=${VERSION} -X main.commit=${COMMIT}"`)
	require.Contains(t, build, "ARG VERSION=")
	require.Contains(t, build, "ARG COMMIT=")

	for target, port := range map[string]string{"idemproxy": "9090", "backend": "8081"} {
		t.Run(target, func(t *testing.T) {
			require.Contains(t, stages, target)
			user, ok := instruction(stages, target, "USER")
			require.True(t, ok, "no USER")
			require.Regexp(t, `^[1-9][0-9]*:[1-9][0-9]*$`, user, "numeric non-root user, so runAsNonRoot can check it")
			entry, _ := instruction(stages, target, "ENTRYPOINT")
			require.Equal(t, `["/usr/local/bin/`+target+`"]`, entry)
			copyLine, _ := instruction(stages, target, "COPY")
			require.Equal(t, "--from=build /out/"+target+" /usr/local/bin/"+target, copyLine)
			hc, _ := instruction(stages, target, "HEALTHCHECK")
			require.Contains(t, hc, "http://127.0.0.1:"+port+"/")
		})
	}
}

// TestDockerfile_StaticBinaries builds both commands exactly as the
// Dockerfile does and checks that they need no C library, so they run on any
// base image (Alpine's musl included).
func TestDockerfile_StaticBinaries(t *testing.T) {
	t.Parallel()
	out := t.TempDir()
	cmd := exec.Command("go", "build", "-trimpath", "-ldflags=-s -w -X main.version=v1.2.3 -X main.commit=abc123",
		"-o", out+string(filepath.Separator), "./cmd/idemproxy", "./cmd/backend")
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOFLAGS=")
	b, err := cmd.CombinedOutput()
	require.NoError(t, err, "%s", b)
	for _, name := range []string{"idemproxy", "backend"} {
		f, err := elf.Open(filepath.Join(out, name))
		require.NoError(t, err)
		for _, p := range f.Progs {
			require.NotEqual(t, elf.PT_INTERP, p.Type, "%s needs a dynamic loader", name)
		}
		libs, err := f.ImportedLibraries()
		require.NoError(t, err)
		require.Empty(t, libs, name)
		f.Close()
	}
	// The build arguments reach --version.
	v, err := exec.Command(filepath.Join(out, "idemproxy"), "--version").Output()
	require.NoError(t, err)
	require.Contains(t, string(v), "idemproxy v1.2.3 (commit abc123, go")
}

// TestDockerignore_KeepsTheSources checks that every directory the two
// commands are built from reaches the build context.
func TestDockerignore_KeepsTheSources(t *testing.T) {
	var patterns []string
	for _, line := range strings.Split(string(readRepoFile(t, ".dockerignore")), "\n") {
		if line = strings.TrimSpace(line); line != "" && !strings.HasPrefix(line, "#") {
			require.False(t, strings.HasPrefix(line, "!"), "exceptions are not handled by this test")
			patterns = append(patterns, strings.TrimPrefix(line, "**/"))
		}
	}
	ignored := func(rel string) bool {
		for _, p := range patterns {
			for dir := rel; dir != "."; dir = filepath.Dir(dir) {
				if ok, _ := filepath.Match(p, dir); ok {
					return true
				}
				if ok, _ := filepath.Match(p, filepath.Base(dir)); ok && strings.HasPrefix(p, "*") {
					return true
				}
			}
		}
		return false
	}
	cmd := exec.Command("go", "list", "-deps", "-f", "{{if not .Standard}}{{.Dir}}{{end}}", "./cmd/idemproxy", "./cmd/backend")
	cmd.Dir = root
	b, err := cmd.Output()
	require.NoError(t, err)
	abs := mustAbs(t, root)
	var ours int
	for _, dir := range strings.Fields(string(b)) {
		rel, err := filepath.Rel(abs, dir)
		require.NoError(t, err)
		if strings.HasPrefix(rel, "..") {
			continue // a module dependency, downloaded in the build
		}
		ours++
		require.False(t, ignored(rel), "%s is needed by the build but .dockerignore drops it", rel)
	}
	require.NotZero(t, ours)
	for _, f := range []string{"go.mod", "go.sum"} {
		require.False(t, ignored(f), f)
	}
	require.True(t, ignored(".git"))
}
