package deploy

import (
	"bytes"
	"errors"
	"io"
	"io/fs"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
	"gopkg.in/yaml.v3"
)

// TestYAML_noDuplicateKeys parses every YAML file we ship with a decoder
// that refuses a key defined twice in one mapping. Envoy, Kubernetes and
// most YAML-to-JSON paths silently keep the last one, so a merge that
// leaves two metadata_options blocks would drop the first without a word.
// Helm templates are checked through their rendering (helm_test.go).
func TestYAML_noDuplicateKeys(t *testing.T) {
	var files []string
	for _, dir := range []string{"envoy", "deploy"} {
		require.NoError(t, filepath.WalkDir(repoPath(dir), func(path string, d fs.DirEntry, err error) error {
			if err != nil {
				return err
			}
			if d.IsDir() && (d.Name() == "templates" || d.Name() == "testdata") {
				return filepath.SkipDir
			}
			if ext := filepath.Ext(path); !d.IsDir() && (ext == ".yaml" || ext == ".yml") {
				files = append(files, path)
			}
			return nil
		}))
	}
	files = append(files, repoPath("docker-compose.yml"))
	require.Greater(t, len(files), 20, "the walk found the shipped files")
	for _, f := range files {
		rel := strings.TrimPrefix(f, repoPath()+string(filepath.Separator))
		dec := yaml.NewDecoder(bytes.NewReader(readRepoFile(t, rel)))
		for {
			var doc any
			err := dec.Decode(&doc)
			if errors.Is(err, io.EOF) {
				break
			}
			require.NoError(t, err, rel)
		}
	}
}
