package edgelimit

import (
	"net/http"
	"testing"

	"github.com/caddyserver/caddy/v2/caddytest"

	"github.com/edgelimit/caddy-edgelimit/internal/clock"
	"github.com/edgelimit/caddy-edgelimit/internal/e2e"
)

// Short names for the end-to-end harness of internal/e2e.

func adminPort() int { return e2e.AdminPort() }

func freePort(t testing.TB) int { return e2e.FreePort(t) }

func globalOptions(extra string) string { return e2e.GlobalOptions(extra) }

func fakeClock(t testing.TB) *clock.Fake { return e2e.FakeClock(t) }

// site is a Caddy running a test Caddyfile.
type site struct {
	t      testing.TB
	tester *caddytest.Tester
	base   string // http://127.0.0.1:<port>
	port   int
	e2e    *e2e.Site
}

// startSite loads a Caddyfile (see e2e.Start for %ADDR% and %PORT%).
func startSite(t testing.TB, body string) *site {
	t.Helper()
	s := e2e.Start(t, body)
	return &site{t: t, tester: s.Tester, base: s.Base, port: s.Port, e2e: s}
}

// reply is a response read in full.
type reply struct {
	status int
	header http.Header
	body   string
}

func (r reply) get(name string) string { return r.header.Get(name) }

func (s *site) do(method, path string, headers ...string) reply {
	s.t.Helper()
	r := s.e2e.Do(method, path, headers...)
	return reply{status: r.Status, header: r.Header, body: r.Body}
}

func (s *site) get(path string, headers ...string) reply {
	s.t.Helper()
	return s.do(http.MethodGet, path, headers...)
}

// expect checks a reply's status and, in pairs, header values ("body" names
// the body).
func expect(t testing.TB, r reply, status int, pairs ...string) {
	t.Helper()
	e2e.Expect(t, e2e.Reply{Status: r.status, Header: r.header, Body: r.body}, status, pairs...)
}
