package testenv

import (
	"fmt"
	"os/exec"
	"path/filepath"
)

// GoBuild builds pkgs into dir (with the race detector if race), from the
// module directory moduleDir ("" for the current one).
func GoBuild(moduleDir, dir string, race bool, pkgs ...string) error {
	args := []string{"build", "-o", dir + string(filepath.Separator)}
	if race {
		args = append(args, "-race")
	}
	cmd := exec.Command("go", append(args, pkgs...)...)
	cmd.Dir = moduleDir
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("go build %v: %w\n%s", pkgs, err, out)
	}
	return nil
}

// BuildBinaries is GoBuild into a temp dir for a test (skipped under
// -short), returning the dir.
func BuildBinaries(t TB, race bool, pkgs ...string) string {
	t.Helper()
	NeedsBinaries(t)
	dir := t.TempDir()
	if err := GoBuild("", dir, race, pkgs...); err != nil {
		t.Fatalf("testenv: %v", err)
	}
	return dir
}
