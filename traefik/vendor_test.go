package edgelimit

import (
	"bytes"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
)

// vendoredPackages are the packages of this repository the plugin imports
// (standard library only, each Yaegi-safe), vendored: Traefik loads a
// plugin with its dependencies.
var vendoredPackages = []string{"limiter", "httpval", "store", "policy"}

// TestVendorMatchesRepository checks that the vendored packages (the copies
// that Traefik loads) are the repository's own (../limiter, ../httpval,
// ../store, ../policy). When they are not, run `go mod vendor` in traefik/.
func TestVendorMatchesRepository(t *testing.T) {
	for _, pkg := range vendoredPackages {
		dir := filepath.FromSlash(pkg)
		src := sourceFiles(t, filepath.Join("..", dir))
		vendored := sourceFiles(t, filepath.Join("vendor", "github.com", "edgelimit", "caddy-edgelimit", dir))
		if strings.Join(src, " ") != strings.Join(vendored, " ") {
			t.Fatalf("vendored %s files %v, ../%s has %v: run go mod vendor in traefik/", pkg, vendored, pkg, src)
		}
		for _, name := range src {
			a, err := os.ReadFile(filepath.Join("..", dir, name))
			if err != nil {
				t.Fatal(err)
			}
			b, err := os.ReadFile(filepath.Join("vendor", "github.com", "edgelimit", "caddy-edgelimit", dir, name))
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(a, b) {
				t.Errorf("vendor/.../%s/%s differs from ../%s/%s: run go mod vendor in traefik/", pkg, name, pkg, name)
			}
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
