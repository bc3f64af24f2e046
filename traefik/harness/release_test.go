package harness

import (
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/edgelimit/caddy-edgelimit/traefik/harness/release"
)

// TestReleaseTree: the release command writes the plugin's own repository
// tree (manifest, go.mod, vendor) from traefik/; Go builds it from its
// vendor directory alone, and Traefik's way of loading a plugin loads it
// from a plugins-local layout under its module path, with the manifest's
// testData as its configuration, and it answers as a rate limiter.
func TestReleaseTree(t *testing.T) {
	dir := t.TempDir()
	out := filepath.Join(dir, "tree")
	const module = "github.com/example/traefik-edgelimit"
	if err := release.Write("..", out, module, "v1.2.3"); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{".traefik.yml", "go.mod", "vendor/modules.txt", "edgelimit.go",
		"vendor/github.com/edgelimit/caddy-edgelimit/policy/decision.go", "vendor/github.com/edgelimit/caddy-edgelimit/limiter/limiter.go"} {
		if _, err := os.Stat(filepath.Join(out, filepath.FromSlash(name))); err != nil {
			t.Errorf("the tree lacks %s", name)
		}
	}
	if matches, _ := filepath.Glob(filepath.Join(out, "*_test.go")); len(matches) > 0 {
		t.Errorf("tests in the tree: %v", matches)
	}
	manifest, _ := os.ReadFile(filepath.Join(out, ".traefik.yml"))
	if !strings.Contains(string(manifest), "import: "+module) {
		t.Errorf("manifest's import:\n%s", manifest)
	}
	// Built from its vendor directory, offline.
	build := exec.Command("go", "build", "./...")
	build.Dir = out
	build.Env = append(os.Environ(), "GOFLAGS=-mod=vendor", "GOPROXY=off", "GOWORK=off")
	if b, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build in the tree: %v\n%s", err, b)
	}
	// Loaded as Traefik loads a plugin, configured with its testData.
	p, err := loadFrom(filepath.Join(dir, "gopath"), out, module)
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := p.decode(p.manifest.TestData)
	if err != nil {
		t.Fatal(err)
	}
	h, err := p.newHandler(cfg, &upstream{}, "catalogue")
	if err != nil {
		t.Fatal(err)
	}
	r := httptest.NewRequest("GET", "/", nil)
	r.RemoteAddr = "192.0.2.1:1234"
	w := httptest.NewRecorder()
	h.ServeHTTP(w, r)
	if w.Code != 200 || w.Header().Get("X-Ratelimit-Limit") == "" || w.Header().Get("Ratelimit-Policy") == "" {
		t.Errorf("testData's middleware answered %d %v", w.Code, w.Header())
	}
}
