// Package e2e runs Caddyfiles in the in-process Caddy of caddytest for
// end-to-end tests: free ports, the fake clock, requests and checks. It is
// shared by the root package's tests and the examples' tests.
package e2e

import (
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	"github.com/caddyserver/caddy/v2/caddytest"

	"github.com/edgelimit/caddy-edgelimit/internal/clock"
	"github.com/edgelimit/caddy-edgelimit/internal/redistest"
)

// AdminPort is the admin port of the in-process Caddy: one per test
// binary, chosen free once; every config loaded keeps it.
var AdminPort = sync.OnceValue(func() int {
	port, err := redistest.FreePort()
	if err != nil {
		panic(err)
	}
	return port
})

// FreePort returns a port nobody listens on (redistest.FreePort).
func FreePort(t testing.TB) int {
	t.Helper()
	port, err := redistest.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	return port
}

// GlobalOptions are the global options every test config starts with: the
// shared admin port, and no waiting for old connections on reload.
func GlobalOptions(extra string) string {
	return "{\n\tadmin localhost:" + strconv.Itoa(AdminPort()) + "\n\tgrace_period 1ms\n\tskip_install_trust\n" + extra + "}\n"
}

// Site is a Caddy serving a test config.
type Site struct {
	T      testing.TB
	Tester *caddytest.Tester
	Base   string // http://127.0.0.1:<port>
	Port   int
}

// Start loads a Caddyfile. In body, %PORT% is replaced by a free port and
// %ADDR% by http://127.0.0.1:<port>. A body that starts with "{" has the
// test's global options merged in front of its own.
func Start(t testing.TB, body string) *Site {
	t.Helper()
	cfg, port := Caddyfile(t, body)
	s := Load(t, cfg)
	s.Base, s.Port = "http://127.0.0.1:"+strconv.Itoa(port), port
	return s
}

// Caddyfile is the Caddyfile Start loads for body, and the port of %PORT%.
func Caddyfile(t testing.TB, body string) (string, int) {
	t.Helper()
	port := FreePort(t)
	body = strings.ReplaceAll(body, "%ADDR%", "http://127.0.0.1:%PORT%")
	body = strings.ReplaceAll(body, "%PORT%", strconv.Itoa(port))
	if trimmed := strings.TrimSpace(body); strings.HasPrefix(trimmed, "{") {
		end := matchingBrace(trimmed)
		return GlobalOptions(trimmed[1:end]) + trimmed[end+1:], port
	}
	return GlobalOptions("") + body, port
}

// Load loads a Caddyfile as it is; it must set the admin endpoint to
// localhost:AdminPort() itself.
func Load(t testing.TB, caddyfile string) *Site {
	t.Helper()
	// Generous bounds: a loaded machine under -race takes seconds for what
	// takes milliseconds idle (a bcrypt password of basic_auth, a config
	// load); no test here measures time by them.
	tester := caddytest.NewTester(t).WithDefaultOverrides(caddytest.Config{
		AdminPort:          AdminPort(),
		LoadRequestTimeout: 30 * time.Second,
		TestRequestTimeout: time.Minute,
	})
	tester.InitServer(caddyfile, "caddyfile")
	if t.Failed() {
		t.FailNow()
	}
	return &Site{T: t, Tester: tester}
}

// matchingBrace returns the index of the brace closing s[0].
func matchingBrace(s string) int {
	depth := 0
	for i, c := range s {
		switch c {
		case '{':
			depth++
		case '}':
			depth--
			if depth == 0 {
				return i
			}
		}
	}
	return len(s) - 1
}

// Adapt turns a Caddyfile into JSON as `caddy adapt` does.
func Adapt(t testing.TB, body string) ([]byte, error) {
	t.Helper()
	a := caddyfile.Adapter{ServerType: httpcaddyfile.ServerType{}}
	out, _, err := a.Adapt([]byte(body), map[string]any{"filename": "Caddyfile"})
	return out, err
}

// Reply is a response read in full.
type Reply struct {
	Status int
	Header http.Header
	Body   string
}

// Do sends a request with headers given in name, value pairs and reads the
// whole answer.
func (s *Site) Do(method, path string, headers ...string) Reply {
	s.T.Helper()
	req, err := http.NewRequest(method, s.Base+path, nil)
	if err != nil {
		s.T.Fatal(err)
	}
	for i := 0; i+1 < len(headers); i += 2 {
		if strings.EqualFold(headers[i], "Host") {
			req.Host = headers[i+1]
			continue
		}
		req.Header.Set(headers[i], headers[i+1])
	}
	resp, err := s.Tester.Client.Do(req)
	if err != nil {
		s.T.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		s.T.Fatal(err)
	}
	return Reply{Status: resp.StatusCode, Header: resp.Header, Body: string(b)}
}

// Get is Do with GET.
func (s *Site) Get(path string, headers ...string) Reply {
	s.T.Helper()
	return s.Do(http.MethodGet, path, headers...)
}

// Expect checks a reply's status and, in pairs, header values ("body"
// names the body).
func Expect(t testing.TB, r Reply, status int, pairs ...string) {
	t.Helper()
	if r.Status != status {
		t.Fatalf("status %d, want %d (headers %v, body %q)", r.Status, status, r.Header, r.Body)
	}
	for i := 0; i+1 < len(pairs); i += 2 {
		got := r.Header.Get(pairs[i])
		if pairs[i] == "body" {
			got = r.Body
		}
		if got != pairs[i+1] {
			t.Fatalf("%s = %q, want %q (status %d, headers %v, body %q)", pairs[i], got, pairs[i+1], r.Status, r.Header, r.Body)
		}
	}
}

// testDay gives each test its own day on the fake clock, so that counters
// an earlier test left in a shared Redis cannot meet a later test's.
var (
	dayMu   sync.Mutex
	testDay int
)

// FakeClock installs a fake clock for the modules provisioned until the
// test ends (install it before loading the configuration). It starts at
// clock.TestBase (tomorrow 10:00 UTC, or EDGELIMIT_TEST_TIME) plus a day
// no other test of this binary uses.
func FakeClock(t testing.TB) *clock.Fake {
	t.Helper()
	dayMu.Lock()
	testDay++
	day := testDay
	dayMu.Unlock()
	f := clock.NewFake(clock.TestBase().AddDate(0, 0, day))
	t.Cleanup(clock.Install(f))
	return f
}

// Logs sends Caddy's default log to a file of the test: it returns the
// global option that does it (to put in a Caddyfile's global options) and
// a function that reads the JSON lines written so far.
func Logs(t testing.TB) (option string, lines func() []string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "caddy.log")
	option = "\tlog {\n\t\toutput file " + path + "\n\t\tformat json\n\t\tlevel DEBUG\n\t}\n"
	return option, func() []string {
		b, err := os.ReadFile(path)
		if err != nil && !os.IsNotExist(err) {
			t.Fatal(err)
		}
		return strings.Split(strings.TrimSpace(string(b)), "\n")
	}
}

// Count is the number of lines that hold every one of subs.
func Count(lines []string, subs ...string) int {
	n := 0
next:
	for _, l := range lines {
		for _, s := range subs {
			if !strings.Contains(l, s) {
				continue next
			}
		}
		n++
	}
	return n
}
