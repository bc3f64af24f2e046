// Package release writes the Traefik plugin's own repository tree (see
// cmd/release).
package release

import (
	"errors"
	"fmt"
	"go/parser"
	"go/token"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"golang.org/x/mod/modfile"
	"gopkg.in/yaml.v3"
)

// DefaultModule is the plugin repository's module path.
const DefaultModule = "github.com/edgelimit/traefik-edgelimit"

// coreModule is the module whose packages the plugin vendors.
const coreModule = "github.com/edgelimit/caddy-edgelimit"

// Write writes the tree of the plugin in src (traefik/, whose parent holds
// the core's packages) to out: its Go files but its tests, .traefik.yml
// with the import of module, go.mod, and vendor/ with the core's packages
// the plugin imports, at version.
func Write(src, out, module, version string) error {
	if _, err := os.Stat(out); err == nil {
		return fmt.Errorf("%s exists", out)
	}
	if err := os.MkdirAll(out, 0o755); err != nil {
		return err
	}
	pkgs, err := corePackages(src)
	if err != nil {
		return err
	}
	if err := copyGo(src, out, false); err != nil {
		return err
	}
	for _, name := range []string{"README.md", "LICENSE"} {
		if b, err := os.ReadFile(filepath.Join(src, name)); err == nil {
			if err := os.WriteFile(filepath.Join(out, name), b, 0o644); err != nil {
				return err
			}
		}
	}
	manifest, err := withImport(filepath.Join(src, ".traefik.yml"), module)
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(out, ".traefik.yml"), manifest, 0o644); err != nil {
		return err
	}
	goVersion, err := goDirective(filepath.Join(src, "go.mod"))
	if err != nil {
		return err
	}
	mod := new(modfile.File)
	if err := mod.AddModuleStmt(module); err != nil {
		return err
	}
	if err := mod.AddGoStmt(goVersion); err != nil {
		return err
	}
	if err := mod.AddRequire(coreModule, version); err != nil {
		return err
	}
	b, err := mod.Format()
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(out, "go.mod"), b, 0o644); err != nil {
		return err
	}
	txt := fmt.Sprintf("# %s %s\n## explicit; go %s\n", coreModule, version, goVersion)
	for _, p := range pkgs {
		txt += coreModule + "/" + p + "\n"
		if err := copyGo(filepath.Join(src, "..", filepath.FromSlash(p)),
			filepath.Join(out, "vendor", filepath.FromSlash(coreModule), filepath.FromSlash(p)), false); err != nil {
			return err
		}
	}
	return os.WriteFile(filepath.Join(out, "vendor", "modules.txt"), []byte(txt), 0o644)
}

// corePackages are the core's packages the plugin imports, directly or
// through one another.
func corePackages(src string) ([]string, error) {
	seen := map[string]bool{}
	var visit func(dir string) error
	visit = func(dir string) error {
		fset := token.NewFileSet()
		entries, err := os.ReadDir(dir)
		if err != nil {
			return err
		}
		for _, e := range entries {
			name := e.Name()
			if e.IsDir() || !strings.HasSuffix(name, ".go") || strings.HasSuffix(name, "_test.go") {
				continue
			}
			f, err := parser.ParseFile(fset, filepath.Join(dir, name), nil, parser.ImportsOnly)
			if err != nil {
				return err
			}
			for _, im := range f.Imports {
				p, ok := strings.CutPrefix(strings.Trim(im.Path.Value, `"`), coreModule+"/")
				if !ok || seen[p] {
					continue
				}
				seen[p] = true
				if err := visit(filepath.Join(src, "..", filepath.FromSlash(p))); err != nil {
					return err
				}
			}
		}
		return nil
	}
	if err := visit(src); err != nil {
		return nil, err
	}
	var pkgs []string
	for p := range seen {
		pkgs = append(pkgs, p)
	}
	sort.Strings(pkgs)
	if len(pkgs) == 0 {
		return nil, errors.New("the plugin imports no package of the core")
	}
	return pkgs, nil
}

// copyGo copies the Go files of dir (not its tests) to out.
func copyGo(dir, out string, tests bool) error {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(out, 0o755); err != nil {
		return err
	}
	for _, e := range entries {
		name := e.Name()
		if e.IsDir() || !strings.HasSuffix(name, ".go") || !tests && strings.HasSuffix(name, "_test.go") {
			continue
		}
		b, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			return err
		}
		if err := os.WriteFile(filepath.Join(out, name), b, 0o644); err != nil {
			return err
		}
	}
	return nil
}

// withImport is the manifest at path with its import set to module.
func withImport(path, module string) ([]byte, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var doc yaml.Node
	if err := yaml.Unmarshal(b, &doc); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	if len(doc.Content) != 1 || doc.Content[0].Kind != yaml.MappingNode {
		return nil, fmt.Errorf("%s is not a mapping", path)
	}
	m := doc.Content[0]
	for i := 0; i+1 < len(m.Content); i += 2 {
		if m.Content[i].Value == "import" {
			m.Content[i+1].Value = module
			return yaml.Marshal(&doc)
		}
	}
	return nil, errors.New(path + " has no import")
}

// goDirective is the go version of a go.mod.
func goDirective(gomod string) (string, error) {
	b, err := os.ReadFile(gomod)
	if err != nil {
		return "", err
	}
	f, err := modfile.Parse(gomod, b, nil)
	if err != nil {
		return "", err
	}
	if f.Go == nil {
		return "", fmt.Errorf("%s has no go directive", gomod)
	}
	return f.Go.Version, nil
}
