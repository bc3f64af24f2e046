// Package docs_test checks what README.md and docs/*.md show against the
// repository.
package docs_test

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// readPage reads a page given relative to the repository root.
func readPage(t *testing.T, file string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("..", filepath.FromSlash(file)))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// leadingComments strips an example file's leading comment and blank lines.
var leadingComments = regexp.MustCompile(`\A(?:#[^\n]*\n|\n)*`)

// TestPoliciesShowExamples: docs/policies.md shows each examples/*.Caddyfile
// as it is, after its leading comment lines, in a caddyfile block.
func TestPoliciesShowExamples(t *testing.T) {
	page := readPage(t, "docs/policies.md")
	files, err := filepath.Glob("../examples/*.Caddyfile")
	if err != nil || len(files) != 5 {
		t.Fatalf("examples: %v %v", files, err)
	}
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		code := strings.TrimRight(leadingComments.ReplaceAllString(string(b), ""), "\n")
		if !strings.Contains(page, "```caddyfile\n"+code+"\n```") {
			t.Errorf("docs/policies.md does not show examples/%s as it is", filepath.Base(f))
		}
	}
}
