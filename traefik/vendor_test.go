package edgelimit

import (
	"bytes"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
)

// TestVendorMatchesLimiter checks that the vendored limiter (the copy that
// Traefik loads: plugins carry their dependencies) is the repository's
// ../limiter. When it is not, run `go mod vendor` in traefik/.
func TestVendorMatchesLimiter(t *testing.T) {
	src := sourceFiles(t, filepath.Join("..", "limiter"))
	vendored := sourceFiles(t, filepath.Join("vendor", "github.com", "edgelimit", "caddy-edgelimit", "limiter"))
	if strings.Join(src, " ") != strings.Join(vendored, " ") {
		t.Fatalf("vendored limiter files %v, ../limiter has %v: run go mod vendor in traefik/", vendored, src)
	}
	for _, name := range src {
		a, err := os.ReadFile(filepath.Join("..", "limiter", name))
		if err != nil {
			t.Fatal(err)
		}
		b, err := os.ReadFile(filepath.Join("vendor", "github.com", "edgelimit", "caddy-edgelimit", "limiter", name))
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(a, b) {
			t.Errorf("vendor/.../limiter/%s differs from ../limiter/%s: run go mod vendor in traefik/", name, name)
		}
	}
}

func sourceFiles(t *testing.T, dir string) []string {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range entries {
		if n := e.Name(); !e.IsDir() && strings.HasSuffix(n, ".go") && !strings.HasSuffix(n, "_test.go") {
			out = append(out, n)
		}
	}
	sort.Strings(out)
	return out
}
