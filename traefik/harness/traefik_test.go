// Package harness loads the edgelimit Traefik plugin the way Traefik does
// (its pkg/plugins): the plugin's source under src/<moduleName> of a GOPATH
// of its own, its .traefik.yml read for the import path and base package,
// a Yaegi interpreter given the standard library's symbols and nothing
// else, CreateConfig and New called by reflection, and the middleware's
// dynamic configuration decoded by mapstructure with Traefik's options.
// The tests then drive the middleware with net/http/httptest, in memory
// and on a real redis-server, and share a Redis with a real Caddy.
package harness

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net/http"
	"os"
	"path"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mitchellh/mapstructure"
	"github.com/traefik/yaegi/interp"
	"github.com/traefik/yaegi/stdlib"
	"gopkg.in/yaml.v3"
)

// manifest is the part of .traefik.yml that Traefik reads to load a plugin.
type manifest struct {
	DisplayName string                 `yaml:"displayName"`
	Type        string                 `yaml:"type"`
	Import      string                 `yaml:"import"`
	BasePkg     string                 `yaml:"basePkg"`
	Summary     string                 `yaml:"summary"`
	TestData    map[string]interface{} `yaml:"testData"`
}

// moduleName is what Traefik's static configuration names the plugin by.
const moduleName = "github.com/edgelimit/caddy-edgelimit/traefik"

// plugin is the loaded plugin: one interpreter for every middleware, as in
// Traefik.
type plugin struct {
	manifest     manifest
	fnNew        reflect.Value
	createConfig reflect.Value
}

var (
	loadOnce   sync.Once
	loaded     *plugin
	loadErr    error
	loadedPath string
)

// loadPlugin loads the plugin once per test binary.
func loadPlugin(t testing.TB) *plugin {
	t.Helper()
	loadOnce.Do(func() {
		loaded, loadErr = load()
	})
	if loadErr != nil {
		t.Fatal(loadErr)
	}
	return loaded
}

// load copies the plugin's directory (as a local plugin would be laid out:
// plugins-local/src/<moduleName>) and loads it.
func load() (*plugin, error) {
	gopath, err := os.MkdirTemp("", "edgelimit-traefik-gopath-")
	if err != nil {
		return nil, err
	}
	loadedPath = gopath
	return loadFrom(gopath, "..", moduleName)
}

// loadFrom copies the plugin in src to gopath/src/<module>, as a local
// plugin is laid out (plugins-local/src/<module>), and loads it as Traefik
// does.
func loadFrom(gopath, src, module string) (*plugin, error) {
	dst := filepath.Join(gopath, "src", filepath.FromSlash(module))
	src, err := filepath.Abs(src)
	if err != nil {
		return nil, err
	}
	if err := copyPlugin(src, dst); err != nil {
		return nil, err
	}
	b, err := os.ReadFile(filepath.Join(dst, ".traefik.yml"))
	if err != nil {
		return nil, err
	}
	var m manifest
	if err := yaml.Unmarshal(b, &m); err != nil {
		return nil, fmt.Errorf(".traefik.yml: %w", err)
	}
	if m.Type != "middleware" || m.DisplayName == "" || m.Summary == "" || m.TestData == nil {
		return nil, errors.New(".traefik.yml: Traefik wants type middleware, displayName, summary and testData")
	}
	if !strings.HasPrefix(m.Import, module) {
		return nil, fmt.Errorf(".traefik.yml: the import %q must be related to the module name %q", m.Import, module)
	}
	// Traefik gives the interpreter its logger at debug level as standard
	// output and at error level as standard error.
	i := interp.New(interp.Options{GoPath: gopath, Env: os.Environ(), Stdout: debugLog, Stderr: errorLog})
	if err := i.Use(stdlib.Symbols); err != nil {
		return nil, err
	}
	if _, err := i.Eval(fmt.Sprintf(`import %q`, m.Import)); err != nil {
		return nil, fmt.Errorf("failed to import plugin code %q: %w", m.Import, err)
	}
	basePkg := m.BasePkg
	if basePkg == "" {
		basePkg = strings.ReplaceAll(path.Base(m.Import), "-", "_")
	}
	fnNew, err := i.Eval(basePkg + `.New`)
	if err != nil {
		return nil, fmt.Errorf("failed to eval New: %w", err)
	}
	fnCreateConfig, err := i.Eval(basePkg + `.CreateConfig`)
	if err != nil {
		return nil, fmt.Errorf("failed to eval CreateConfig: %w", err)
	}
	return &plugin{manifest: m, fnNew: fnNew, createConfig: fnCreateConfig}, nil
}

// copyPlugin copies the plugin's files, less this harness (a module of its
// own, as Traefik would never see it).
func copyPlugin(src, dst string) error {
	return filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(src, p)
		if err != nil {
			return err
		}
		if d.IsDir() {
			if rel == "harness" {
				return filepath.SkipDir
			}
			return os.MkdirAll(filepath.Join(dst, rel), 0o755)
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		return os.WriteFile(filepath.Join(dst, rel), b, 0o644)
	})
}

// config decodes a dynamic configuration into a new Config, as Traefik's
// createConfig does; now, when set, becomes the plugin's clock.
func (p *plugin) config(t testing.TB, conf map[string]interface{}, now func() time.Time) reflect.Value {
	t.Helper()
	v, err := p.decode(conf)
	if err != nil {
		t.Fatal(err)
	}
	if now != nil {
		v.Elem().FieldByName("Now").Set(reflect.ValueOf(now))
	}
	return v
}

func (p *plugin) decode(conf map[string]interface{}) (reflect.Value, error) {
	results := p.createConfig.Call(nil)
	if len(results) != 1 {
		return reflect.Value{}, fmt.Errorf("CreateConfig returned %d values", len(results))
	}
	v := results[0]
	if len(conf) == 0 {
		return v, nil
	}
	dec, err := mapstructure.NewDecoder(&mapstructure.DecoderConfig{
		DecodeHook:       mapstructure.StringToSliceHookFunc(","),
		WeaklyTypedInput: true,
		Result:           v.Interface(),
	})
	if err != nil {
		return reflect.Value{}, err
	}
	if err := dec.Decode(conf); err != nil {
		return reflect.Value{}, fmt.Errorf("failed to decode configuration: %w", err)
	}
	return v, nil
}

// newHandler calls New as Traefik's newHandler does.
func (p *plugin) newHandler(cfg reflect.Value, next http.Handler, name string) (http.Handler, error) {
	args := []reflect.Value{reflect.ValueOf(context.Background()), reflect.ValueOf(next), cfg, reflect.ValueOf(name)}
	results := p.fnNew.Call(args)
	if len(results) > 1 && results[1].Interface() != nil {
		err, ok := results[1].Interface().(error)
		if !ok {
			return nil, fmt.Errorf("invalid error type: %T", results[1].Interface())
		}
		return nil, err
	}
	h, ok := results[0].Interface().(http.Handler)
	if !ok {
		return nil, fmt.Errorf("invalid handler type: %T", results[0].Interface())
	}
	return h, nil
}

// middleware builds a middleware from a YAML dynamic configuration (the
// plugin's part of http.middlewares.<name>.plugin.edgelimit).
func (p *plugin) middleware(t testing.TB, conf string, now func() time.Time, next http.Handler) http.Handler {
	t.Helper()
	var m map[string]interface{}
	if err := yaml.Unmarshal([]byte(conf), &m); err != nil {
		t.Fatalf("yaml: %v\n%s", err, conf)
	}
	h, err := p.newHandler(p.config(t, m, now), next, t.Name()+"@file")
	if err != nil {
		t.Fatal(err)
	}
	return h
}

// debugLog and errorLog receive what the plugin prints, as Traefik's log
// at debug and error level would.
var (
	debugLog = &logBuffer{}
	errorLog = &logBuffer{}
)

type logBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

// lines returns the lines that hold s.
func (l *logBuffer) lines(s string) []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []string
	for _, line := range strings.Split(l.b.String(), "\n") {
		if strings.Contains(line, s) {
			out = append(out, line)
		}
	}
	return out
}

func TestMain(m *testing.M) {
	code := m.Run()
	stopSharedRedis()
	if loadedPath != "" {
		os.RemoveAll(loadedPath)
	}
	os.Exit(code)
}
