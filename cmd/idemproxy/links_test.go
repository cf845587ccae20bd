package main

import (
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"unicode"

	"github.com/stretchr/testify/require"
)

// repoRoot is the repository, relative to this package.
var repoRoot = filepath.Join("..", "..")

var (
	// inlineLinkRE is [text](target) or [text](target "title").
	inlineLinkRE = regexp.MustCompile(`\]\(([^()\s]+)(?:\s+"[^"]*")?\)`)
	// refLinkRE is a reference definition: [label]: target.
	refLinkRE = regexp.MustCompile(`^\s*\[[^\]]+\]:\s*(\S+)`)
	// codeSpanRE is inline code, whose brackets are no link.
	codeSpanRE = regexp.MustCompile("`[^`]*`")
	// headingRE is an ATX heading.
	headingRE = regexp.MustCompile(`^#{1,6}\s+(.*?)\s*#*\s*$`)
)

// TestLinks_resolve: every relative link in the user docs names a file
// that exists, and every #anchor a heading of the file it points into.
func TestLinks_resolve(t *testing.T) {
	files := docFiles(t)
	require.NotEmpty(t, files)
	var broken []string
	for _, file := range files {
		broken = append(broken, brokenLinks(t, file)...)
	}
	require.Empty(t, broken, "broken links in the docs:\n%s", strings.Join(broken, "\n"))
}

// TestLinks_slugs pins the GitHub heading slugs the anchors are checked against.
func TestLinks_slugs(t *testing.T) {
	md := "# Title\n## Access log: what idemproxy decided\n```\n# not a heading\n```\n" +
		"### The walkthrough (`make demo` prints it)\n## Title\n## [Linked](x.md) head\n"
	require.Equal(t, map[string]bool{
		"title": true, "access-log-what-idemproxy-decided": true,
		"the-walkthrough-make-demo-prints-it": true, "title-1": true, "linked-head": true,
	}, slugs(md))
}

// docFiles is README.md, docs/*.md and every .md under deploy/.
func docFiles(t *testing.T) []string {
	files := []string{filepath.Join(repoRoot, "README.md")}
	docs, err := filepath.Glob(filepath.Join(repoRoot, "docs", "*.md"))
	require.NoError(t, err)
	files = append(files, docs...)
	err = filepath.WalkDir(filepath.Join(repoRoot, "deploy"), func(path string, d fs.DirEntry, err error) error {
		if err == nil && !d.IsDir() && strings.HasSuffix(path, ".md") {
			files = append(files, path)
		}
		return err
	})
	require.NoError(t, err)
	return files
}

// brokenLinks lists file:line: target for each relative link of file that
// does not resolve.
func brokenLinks(t *testing.T, file string) []string {
	text, err := os.ReadFile(file)
	require.NoError(t, err)
	rel, err := filepath.Rel(repoRoot, file)
	require.NoError(t, err)
	var broken []string
	inFence := false
	for i, line := range strings.Split(string(text), "\n") {
		if strings.HasPrefix(strings.TrimSpace(line), "```") {
			inFence = !inFence
			continue
		}
		if inFence {
			continue
		}
		for _, target := range lineLinks(line) {
			if why := checkLink(file, target); why != "" {
				broken = append(broken, rel+":"+strconv.Itoa(i+1)+": "+target+": "+why)
			}
		}
	}
	return broken
}

// lineLinks is every link target on one line outside inline code.
func lineLinks(line string) []string {
	line = codeSpanRE.ReplaceAllString(line, "")
	var targets []string
	for _, m := range inlineLinkRE.FindAllStringSubmatch(line, -1) {
		targets = append(targets, m[1])
	}
	if m := refLinkRE.FindStringSubmatch(line); m != nil {
		targets = append(targets, m[1])
	}
	return targets
}

// checkLink says why target, linked from file, does not resolve ("" when it does).
func checkLink(file, target string) string {
	if strings.Contains(target, "://") || strings.HasPrefix(target, "mailto:") {
		return "" // external: not checked
	}
	path, anchor, _ := strings.Cut(target, "#")
	dest := file
	if path != "" {
		dest = filepath.Join(filepath.Dir(file), filepath.FromSlash(path))
		if _, err := os.Stat(dest); err != nil {
			return "no such file"
		}
	}
	if anchor == "" {
		return ""
	}
	if !strings.HasSuffix(dest, ".md") {
		return "anchor into a file that is not markdown"
	}
	text, err := os.ReadFile(dest)
	if err != nil {
		return err.Error()
	}
	if !slugs(string(text))[anchor] {
		return "no heading with that anchor"
	}
	return ""
}

// linkTextRE is a link inside a heading, whose text alone makes the slug.
var linkTextRE = regexp.MustCompile(`\[([^\]]*)\]\([^)]*\)`)

// slugs is the set of anchors GitHub gives the headings of a markdown file:
// lower case, punctuation dropped, spaces as hyphens, -1, -2... on repeats.
func slugs(md string) map[string]bool {
	out := map[string]bool{}
	seen := map[string]int{}
	inFence := false
	for _, line := range strings.Split(md, "\n") {
		if strings.HasPrefix(strings.TrimSpace(line), "```") {
			inFence = !inFence
			continue
		}
		m := headingRE.FindStringSubmatch(line)
		if inFence || m == nil {
			continue
		}
		text := linkTextRE.ReplaceAllString(m[1], "$1")
		var b strings.Builder
		for _, r := range strings.ToLower(text) {
			switch {
			case unicode.IsLetter(r) || unicode.IsDigit(r) || r == '-' || r == '_':
				b.WriteRune(r)
			case r == ' ':
				b.WriteRune('-')
			}
		}
		slug := b.String()
		if n := seen[slug]; n > 0 {
			out[slug+"-"+strconv.Itoa(n)] = true
		} else {
			out[slug] = true
		}
		seen[slug]++
	}
	return out
}
