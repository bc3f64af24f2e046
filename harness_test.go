package edgelimit

import (
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2/caddytest"

	"github.com/edgelimit/caddy-edgelimit/internal/clock"
)

// The in-process Caddy of caddytest is one per test binary; its admin
// endpoint gets a free port once, and every config loaded keeps it.
var adminPort = sync.OnceValue(func() int { return freePortOrPanic() })

func freePortOrPanic() int {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		panic(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// freePort returns a loopback port nobody listens on.
func freePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// site is a Caddy running a test Caddyfile.
type site struct {
	t      testing.TB
	tester *caddytest.Tester
	base   string // http://127.0.0.1:<port>
	port   int
}

// globalOptions go first in every test config: the shared admin port, and
// no waiting for old connections on reload.
func globalOptions(extra string) string {
	return "{\n\tadmin localhost:" + strconv.Itoa(adminPort()) + "\n\tgrace_period 1ms\n\tskip_install_trust\n" + extra + "}\n"
}

// startSite loads a Caddyfile into the in-process Caddy. In body, %PORT%
// is replaced by a free port and %ADDR% by http://127.0.0.1:<port>. A
// body that starts with "{" is given the test's global options in front
// of its own.
func startSite(t testing.TB, body string) *site {
	t.Helper()
	port := freePort(t)
	body = strings.ReplaceAll(body, "%ADDR%", "http://127.0.0.1:%PORT%")
	body = strings.ReplaceAll(body, "%PORT%", strconv.Itoa(port))
	cfg := ""
	if strings.HasPrefix(strings.TrimSpace(body), "{") {
		trimmed := strings.TrimSpace(body)
		end := matchingBrace(trimmed)
		cfg = globalOptions(trimmed[1:end]) + trimmed[end+1:]
	} else {
		cfg = globalOptions("") + body
	}
	tester := caddytest.NewTester(t).WithDefaultOverrides(caddytest.Config{
		AdminPort:          adminPort(),
		LoadRequestTimeout: 10 * time.Second,
	})
	tester.InitServer(cfg, "caddyfile")
	if t.Failed() {
		t.FailNow()
	}
	return &site{t: t, tester: tester, base: "http://127.0.0.1:" + strconv.Itoa(port), port: port}
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

// reply is a response read in full.
type reply struct {
	status int
	header http.Header
	body   string
}

func (r reply) get(name string) string { return r.header.Get(name) }

// do sends a request and reads the whole answer.
func (s *site) do(method, path string, headers ...string) reply {
	s.t.Helper()
	req, err := http.NewRequest(method, s.base+path, nil)
	if err != nil {
		s.t.Fatal(err)
	}
	for i := 0; i+1 < len(headers); i += 2 {
		req.Header.Set(headers[i], headers[i+1])
	}
	resp, err := s.tester.Client.Do(req)
	if err != nil {
		s.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		s.t.Fatal(err)
	}
	return reply{status: resp.StatusCode, header: resp.Header, body: string(b)}
}

func (s *site) get(path string, headers ...string) reply {
	s.t.Helper()
	return s.do(http.MethodGet, path, headers...)
}

// expect checks a reply's status and, in pairs, header values ("body" names
// the body).
func expect(t testing.TB, r reply, status int, pairs ...string) {
	t.Helper()
	if r.status != status {
		t.Fatalf("status %d, want %d (headers %v, body %q)", r.status, status, r.header, r.body)
	}
	for i := 0; i+1 < len(pairs); i += 2 {
		got := r.get(pairs[i])
		if pairs[i] == "body" {
			got = r.body
		}
		if got != pairs[i+1] {
			t.Fatalf("%s = %q, want %q (status %d, headers %v, body %q)", pairs[i], got, pairs[i+1], r.status, r.header, r.body)
		}
	}
}

// testDay gives each test its own day on the fake clock: the memory store
// outlives configs (as it does across reloads), so counters from an earlier
// test with the same directive must have expired.
var testDay int

// fakeClock installs a fake clock for the handler, at 10:00 UTC on a day
// no other test uses.
func fakeClock(t testing.TB) *clock.Fake {
	t.Helper()
	testDay++
	start := time.Date(2026, 11, 23+testDay, 10, 0, 0, 0, time.UTC)
	f, restore := clock.Install(start)
	t.Cleanup(restore)
	return f
}
