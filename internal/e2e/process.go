package e2e

import (
	"bytes"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// binDir holds the caddy binary the tests build; RemoveBinaries removes it.
var binDir string

var caddyBinary = sync.OnceValues(func() (string, error) {
	dir, err := os.MkdirTemp("", "edgelimit-caddy-")
	if err != nil {
		return "", err
	}
	binDir = dir
	bin := filepath.Join(dir, "caddy")
	out, err := exec.Command("go", "build", "-o", bin, "github.com/edgelimit/caddy-edgelimit/cmd/caddy").CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("go build: %v\n%s", err, out)
	}
	return bin, nil
})

// CaddyBinary builds Caddy with this plugin (cmd/caddy) once per test
// binary and returns its path. With -short, the test is skipped.
func CaddyBinary(t testing.TB) string {
	t.Helper()
	if testing.Short() {
		t.Skip("builds and runs the caddy binary")
	}
	bin, err := caddyBinary()
	if err != nil {
		t.Fatal(err)
	}
	return bin
}

// RemoveBinaries removes what CaddyBinary built; call it from TestMain.
func RemoveBinaries() {
	if binDir != "" {
		os.RemoveAll(binDir)
	}
}

// Env is the environment of a caddy command: Caddy's files in dir, not in
// the user's home, and extra ("NAME=value").
func Env(dir string, extra ...string) []string {
	return append(os.Environ(), append([]string{"HOME=" + dir, "XDG_DATA_HOME=" + dir, "XDG_CONFIG_HOME=" + dir}, extra...)...)
}

// Command runs `caddy <args...>` in dir's environment and returns what it
// printed.
func Command(bin, dir string, env []string, args ...string) (string, error) {
	cmd := exec.Command(bin, args...)
	cmd.Env = Env(dir, env...)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// Process is a `caddy run` in a process of its own.
type Process struct {
	// Base is http://127.0.0.1:<port>.
	Base string
	// Admin is the admin endpoint's address, localhost:<port>.
	Admin string
	cmd   *exec.Cmd
	out   *lockedBuffer
}

type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// Run starts `caddy run` with a Caddyfile on free ports (%PORT% for the
// site, %ADMIN% for the admin endpoint), waits (30 s at most) until it
// answers GET /health, and stops it when the test ends.
func Run(t testing.TB, bin, caddyfile string, env ...string) *Process {
	t.Helper()
	dir := t.TempDir()
	port, admin := FreePort(t), FreePort(t)
	caddyfile = strings.ReplaceAll(caddyfile, "%PORT%", strconv.Itoa(port))
	caddyfile = strings.ReplaceAll(caddyfile, "%ADMIN%", strconv.Itoa(admin))
	f := filepath.Join(dir, "Caddyfile")
	if err := os.WriteFile(f, []byte(caddyfile), 0o600); err != nil {
		t.Fatal(err)
	}
	p := &Process{out: new(lockedBuffer), Base: "http://127.0.0.1:" + strconv.Itoa(port), Admin: "localhost:" + strconv.Itoa(admin)}
	p.cmd = exec.Command(bin, "run", "--config", f, "--adapter", "caddyfile")
	p.cmd.Env = Env(dir, env...)
	p.cmd.Stdout, p.cmd.Stderr = p.out, p.out
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = p.cmd.Process.Signal(syscall.SIGTERM)
		done := make(chan struct{})
		go func() { _ = p.cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			_ = p.cmd.Process.Kill()
			<-done
		}
	})
	deadline := time.Now().Add(30 * time.Second)
	for {
		resp, err := http.Get(p.Base + "/health")
		if err == nil {
			resp.Body.Close()
			return p
		}
		if time.Now().After(deadline) {
			t.Fatalf("caddy did not answer on %s within 30s:\n%s", p.Base, p.out.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// Get sends GET path and returns the status.
func (p *Process) Get(t testing.TB, path string) int {
	t.Helper()
	resp, err := http.Get(p.Base + path)
	if err != nil {
		t.Fatalf("GET %s: %v\n%s", path, err, p.out.String())
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode
}

// Output is what the process printed so far.
func (p *Process) Output() string { return p.out.String() }
