// Package redistest gives tests a real Redis server: the one named by
// EDGELIMIT_REDIS_URL, or a private redis-server started on a free loopback
// port. Tests skip with a clear message only when neither is possible and CI
// is unset; under CI a missing Redis fails the test.
package redistest

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// EnvURL names the variable that points the tests at an existing Redis.
const EnvURL = "EDGELIMIT_REDIS_URL"

// Server is a Redis server for tests.
type Server struct {
	// URL is redis://host:port/db.
	URL string
	// Addr is host:port.
	Addr string

	mu       sync.Mutex
	cmd      *exec.Cmd
	dir      string
	port     int
	args     []string
	external bool
}

// unavailable skips, or fails under CI.
func unavailable(t testing.TB, why string) {
	t.Helper()
	if os.Getenv("CI") != "" {
		t.Fatalf("Redis is required under CI: %s", why)
	}
	t.Skipf("no Redis for this test: %s (set %s or install redis-server)", why, EnvURL)
}

var (
	sharedOnce sync.Once
	shared     *Server
	sharedErr  error
)

// Shared returns the package's Redis: EDGELIMIT_REDIS_URL if set, else one
// private server started for the whole test binary (stop it with
// StopShared from TestMain). Tests on it must use keys of their own.
func Shared(t testing.TB) *Server {
	t.Helper()
	sharedOnce.Do(func() {
		if u := os.Getenv(EnvURL); u != "" {
			opt, err := redis.ParseURL(u)
			if err != nil {
				sharedErr = fmt.Errorf("%s=%q: %w", EnvURL, u, err)
				return
			}
			shared = &Server{URL: u, Addr: opt.Addr, external: true}
			sharedErr = ping(shared.Addr, opt)
			return
		}
		shared, sharedErr = start(nil)
	})
	if sharedErr != nil {
		unavailable(t, sharedErr.Error())
	}
	return shared
}

// StopShared stops the shared server if this package started it.
func StopShared() {
	if shared != nil && !shared.external {
		shared.Stop()
		os.RemoveAll(shared.dir)
	}
}

// Start starts a private redis-server for one test, stopped when the test
// ends; the test may Stop and Restart it. extraArgs go to redis-server
// (e.g. "--cluster-enabled", "yes").
func Start(t testing.TB, extraArgs ...string) *Server {
	t.Helper()
	s, err := start(extraArgs)
	if err != nil {
		unavailable(t, err.Error())
	}
	t.Cleanup(func() {
		s.Stop()
		os.RemoveAll(s.dir)
	})
	return s
}

func start(extraArgs []string) (*Server, error) {
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		return nil, fmt.Errorf("redis-server not found in PATH")
	}
	dir, err := os.MkdirTemp("", "edgelimit-redis-")
	if err != nil {
		return nil, err
	}
	port, err := FreePort()
	if err != nil {
		return nil, err
	}
	s := &Server{dir: dir, port: port, args: extraArgs}
	s.Addr = "127.0.0.1:" + strconv.Itoa(port)
	s.URL = "redis://" + s.Addr + "/0"
	if err := s.launch(bin); err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	return s, nil
}

func (s *Server) launch(bin string) error {
	args := append([]string{
		"--bind", "127.0.0.1",
		"--port", strconv.Itoa(s.port),
		"--save", "",
		"--appendonly", "no",
		"--dir", s.dir,
		"--logfile", filepath.Join(s.dir, "redis.log"),
	}, s.args...)
	cmd := exec.Command(bin, args...)
	if err := cmd.Start(); err != nil {
		return err
	}
	s.cmd = cmd
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		if ping(s.Addr, &redis.Options{Addr: s.Addr}) == nil {
			return nil
		}
		time.Sleep(20 * time.Millisecond)
	}
	_ = cmd.Process.Kill()
	_, _ = cmd.Process.Wait()
	log, _ := os.ReadFile(filepath.Join(s.dir, "redis.log"))
	return fmt.Errorf("redis-server on %s did not answer within 10s: %s", s.Addr, log)
}

func ping(addr string, opt *redis.Options) error {
	o := *opt
	o.Addr = addr
	o.DialTimeout, o.ReadTimeout, o.MaxRetries = time.Second, time.Second, -1
	c := redis.NewClient(&o)
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	return c.Ping(ctx).Err()
}

// Stop kills the server (a crash, as far as clients can tell) and waits
// for it to exit. Stopping an external server is not possible: it panics.
func (s *Server) Stop() {
	if s.external {
		panic("redistest: cannot stop the external Redis at " + s.URL)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd == nil {
		return
	}
	_ = s.cmd.Process.Kill()
	_, _ = s.cmd.Process.Wait()
	s.cmd = nil
}

// Restart starts a stopped server again on the same port, empty.
func (s *Server) Restart(t testing.TB) {
	t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd != nil {
		return
	}
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		t.Fatal(err)
	}
	if err := s.launch(bin); err != nil {
		t.Fatal(err)
	}
}

// Client returns a client for the server, closed when the test ends.
func (s *Server) Client(t testing.TB) *redis.Client {
	t.Helper()
	opt, err := redis.ParseURL(s.URL)
	if err != nil {
		t.Fatal(err)
	}
	c := redis.NewClient(opt)
	t.Cleanup(func() { c.Close() })
	return c
}

// Port returns the server's port.
func (s *Server) Port() int { return s.port }

// Dir returns the server's working directory (empty for an external one).
func (s *Server) Dir() string { return s.dir }

// FreePort returns a TCP port free on every interface (Caddy listens on
// all of them for a site at 127.0.0.1:<port>), outside the kernel's range
// of ephemeral ports: a port the kernel handed out as free may be taken
// the next moment as the local port of an outgoing connection (the
// tests' own, to Redis or to Caddy), and the server that was to listen on
// it fails with "address already in use". The port 10000 above it, a
// Redis Cluster node's bus, is free and outside that range too. A random
// start keeps test binaries that run at once apart.
func FreePort() (int, error) {
	const lo, n = 10000, 12000 // and +10000: below Linux's default ephemeral range, 32768-60999
	start := rand.IntN(n)
	for i := 0; i < n; i++ {
		port := lo + (start+i)%n
		if free(port) && free(port+10000) {
			return port, nil
		}
	}
	// Every one taken: the kernel's choice.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// free tells whether nothing listens on port.
func free(port int) bool {
	l, err := net.Listen("tcp", ":"+strconv.Itoa(port))
	if err != nil {
		return false
	}
	l.Close()
	return true
}
