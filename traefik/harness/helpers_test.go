package harness

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/edgelimit/caddy-edgelimit/internal/redistest"
	"gopkg.in/yaml.v3"
)

// fakeClock is a settable clock. Tests start it at testBase and never
// compare it with the real clock.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func newClock() *fakeClock { return &fakeClock{t: testBase()} }

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) Add(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// testBase is where fake clocks start, as in the Caddy module's tests:
// tomorrow at 10:00 UTC, or what EDGELIMIT_TEST_TIME says (an RFC 3339
// time or an offset such as -8760h, rounded up to the hour).
func testBase() time.Time {
	y, m, d := time.Now().UTC().Date()
	base := time.Date(y, m, d+1, 10, 0, 0, 0, time.UTC)
	v := os.Getenv("EDGELIMIT_TEST_TIME")
	if v == "" {
		return base
	}
	t, err := time.Parse(time.RFC3339Nano, v)
	if err != nil {
		off, perr := time.ParseDuration(v)
		if perr != nil {
			panic("EDGELIMIT_TEST_TIME: " + v)
		}
		t = base.Add(off)
	}
	t = t.UTC()
	if h := t.Truncate(time.Hour); !h.Equal(t) {
		t = h.Add(time.Hour)
	}
	return t
}

// upstream answers "ok" and counts what reaches it.
type upstream struct {
	mu sync.Mutex
	n  int
}

func (u *upstream) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	u.mu.Lock()
	u.n++
	u.mu.Unlock()
	_, _ = io.WriteString(w, "ok")
}

func (u *upstream) count() int {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.n
}

// send serves one request through h; hdr holds header name, value pairs.
func send(h http.Handler, method, target string, hdr ...string) *httptest.ResponseRecorder {
	r := httptest.NewRequest(method, target, nil)
	r.RemoteAddr = "192.0.2.1:1234"
	for i := 0; i+1 < len(hdr); i += 2 {
		r.Header.Add(hdr[i], hdr[i+1])
	}
	w := httptest.NewRecorder()
	h.ServeHTTP(w, r)
	return w
}

// redisServer is a private redis-server on a free loopback port.
type redisServer struct {
	Addr string
	cmd  *exec.Cmd
	dir  string
	bin  string
	port int
}

var (
	sharedRedisOnce sync.Once
	sharedRedis     *redisServer
	sharedRedisErr  error
)

// startRedis returns the test binary's redis-server, started on first use.
// Without redis-server the test is skipped, except under CI where it fails.
func startRedis(t testing.TB) *redisServer {
	t.Helper()
	sharedRedisOnce.Do(func() { sharedRedis, sharedRedisErr = launchRedis() })
	if sharedRedisErr != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("Redis is required under CI: %v", sharedRedisErr)
		}
		t.Skipf("no Redis for this test: %v", sharedRedisErr)
	}
	return sharedRedis
}

func stopSharedRedis() {
	if sharedRedis != nil {
		sharedRedis.stop()
	}
}

func launchRedis() (*redisServer, error) {
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		return nil, fmt.Errorf("redis-server not found in PATH")
	}
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", "edgelimit-traefik-redis-")
	if err != nil {
		return nil, err
	}
	s := &redisServer{Addr: "127.0.0.1:" + strconv.Itoa(port), dir: dir, bin: bin, port: port}
	if err := s.start(); err != nil {
		s.stop()
		return nil, err
	}
	return s, nil
}

// start runs redis-server and waits until it answers.
func (s *redisServer) start() error {
	s.cmd = exec.Command(s.bin, "--bind", "127.0.0.1", "--port", strconv.Itoa(s.port), "--save", "",
		"--appendonly", "no", "--dir", s.dir, "--logfile", filepath.Join(s.dir, "redis.log"))
	if err := s.cmd.Start(); err != nil {
		s.cmd = nil
		return err
	}
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		if _, err := s.command("PING"); err == nil {
			return nil
		}
		time.Sleep(20 * time.Millisecond)
	}
	return fmt.Errorf("redis-server on %s did not answer within 10s", s.Addr)
}

// restart kills redis-server and starts it again on the same port, empty
// (no persistence): its scripts and connections are gone.
func (s *redisServer) restart() error {
	if s.cmd != nil {
		_ = s.cmd.Process.Kill()
		_, _ = s.cmd.Process.Wait()
		s.cmd = nil
	}
	return s.start()
}

func (s *redisServer) stop() {
	if s.cmd != nil {
		_ = s.cmd.Process.Kill()
		_, _ = s.cmd.Process.Wait()
		s.cmd = nil
	}
	os.RemoveAll(s.dir)
}

// command runs one inline command and returns the reply's first line.
func (s *redisServer) command(args ...string) (string, error) {
	c, err := net.DialTimeout("tcp", s.Addr, time.Second)
	if err != nil {
		return "", err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(2 * time.Second))
	var b strings.Builder
	fmt.Fprintf(&b, "*%d\r\n", len(args))
	for _, a := range args {
		fmt.Fprintf(&b, "$%d\r\n%s\r\n", len(a), a)
	}
	if _, err := io.WriteString(c, b.String()); err != nil {
		return "", err
	}
	buf := make([]byte, 4096)
	n, err := c.Read(buf)
	if err != nil {
		return "", err
	}
	return strings.TrimRight(string(buf[:n]), "\r\n"), nil
}

// freePort is a port outside the kernel's ephemeral range
// (redistest.FreePort), which an outgoing connection cannot take.
func freePort() (int, error) { return redistest.FreePort() }

func itoa(n int) string { return strconv.Itoa(n) }

func yamlUnmarshal(s string, v interface{}) error { return yaml.Unmarshal([]byte(s), v) }
