package edgelimit

import (
	"encoding/base64"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/edgelimit/caddy-edgelimit/httpval"
	"github.com/edgelimit/caddy-edgelimit/internal/e2e"
)

func TestMissingKeysAndHostileKeys(t *testing.T) {
	fakeClock(t)
	s := startSite(t, `
%ADDR% {
	edge_limit {
		limit users {
			key {http.auth.user.id} {header.X-User}
			rate 1/1m
		}
	}
	respond "ok"
}`)
	// No key part present: the limit does not apply at all.
	for range 3 {
		expect(t, s.get("/"), 200, "X-RateLimit-Limit", "")
	}
	expect(t, s.get("/", "X-User", "u1"), 200, "X-RateLimit-Remaining", "0")
	expect(t, s.get("/", "X-User", "u1"), 429)
	// A huge header is a key like any other; it costs no more memory.
	huge := strings.Repeat("A", 16<<10)
	expect(t, s.get("/", "X-User", huge), 200)
	expect(t, s.get("/", "X-User", huge), 429)
	expect(t, s.get("/", "X-User", huge[1:]), 200)
}

// sendWith sends GET path with each header name and value pair added (a
// name may repeat) and returns the status and the body.
func sendWith(t *testing.T, s *site, path string, headers ...string) (int, string) {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, s.base+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i+1 < len(headers); i += 2 {
		req.Header.Add(headers[i], headers[i+1])
	}
	resp, err := s.tester.Client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// TestRepeatedCredentialHeaderCountsTheFirst: a limit keyed on a
// credential counts what the upstream acts on. A second Authorization
// header with junk in it made a new counter each time (the key joined
// every value) while the upstream, reading the first, served the same
// token six times out of a limit of two.
func TestRepeatedCredentialHeaderCountsTheFirst(t *testing.T) {
	fakeClock(t)
	upstream := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(w, r.Header.Get("Authorization"))
	}))
	defer upstream.Close()
	s := startSite(t, `
%ADDR% {
	edge_limit {
		limit per_token {
			key {header.Authorization} {client_ip}
			rate 2/1h
		}
	}
	reverse_proxy `+upstream.Listener.Addr().String()+`
}`)
	var statuses []int
	for i := range 6 {
		code, body := sendWith(t, s, "/", "Authorization", "Bearer A1", "Authorization", fmt.Sprintf("junk%d", i))
		if code == 200 && body != "Bearer A1" {
			t.Fatalf("the upstream saw %q", body)
		}
		statuses = append(statuses, code)
	}
	if fmt.Sprint(statuses) != "[200 200 429 429 429 429]" {
		t.Fatalf("one token with a second, changing Authorization header: %v, want 2 of 6 admitted", statuses)
	}
	// Another token is another client.
	if code, _ := sendWith(t, s, "/", "Authorization", "Bearer B2"); code != 200 {
		t.Fatalf("another token: %d", code)
	}
}

// TestAuthSchemeCaseIsOneCounter: behind basic_auth, the scheme's case
// ("basic", "BASIC", "bAsic") made a new counter each time for the same
// user.
func TestAuthSchemeCaseIsOneCounter(t *testing.T) {
	fakeClock(t)
	s := startSite(t, `
%ADDR% {
	basic_auth {
		user-1 $2a$10$m7I2QCfjgwd4cnOT8yKROefDVHngy/wDlfq6tmcCVrDdpGFok1WdG
	}
	edge_limit {
		limit per_credential {
			key {header.Authorization}
			rate 3/1h
		}
	}
	respond "ok"
}`)
	cred := base64.StdEncoding.EncodeToString([]byte("user-1:user-secret"))
	var statuses []int
	for _, scheme := range []string{"Basic ", "basic ", "BASIC ", "bAsic ", "BaSiC "} {
		code, _ := sendWith(t, s, "/", "Authorization", scheme+cred)
		statuses = append(statuses, code)
	}
	if fmt.Sprint(statuses) != "[200 200 200 429 429]" {
		t.Fatalf("one user, the scheme written five ways: %v, want 3 of 5 admitted", statuses)
	}
}

// TestBasicSpellingsAreOneCounter: behind basic_auth, the 16 spellings of
// "carol1:secret" that differ in the bits base64 decoders ignore (the last
// character before the padding: A to P) all authenticated as carol1, and
// each made a new counter: 16 of 16 passed a limit of 2.
func TestBasicSpellingsAreOneCounter(t *testing.T) {
	fakeClock(t)
	s := startSite(t, `
%ADDR% {
	basic_auth {
		carol1 $2a$04$/iZs9pNw3ZjieHDziUGv.eXxBal4S6eV3o8PNW30mJmsMb1ffPXXe
	}
	edge_limit {
		limit per_credential {
			key {header.Authorization}
			rate 2/1h
		}
	}
	respond "ok"
}`)
	canonical := base64.StdEncoding.EncodeToString([]byte("carol1:secret"))
	if canonical != "Y2Fyb2wxOnNlY3JldA==" {
		t.Fatalf("the credential's base64 is %s", canonical)
	}
	var statuses []int
	for c := 'A'; c <= 'P'; c++ {
		code, _ := sendWith(t, s, "/", "Authorization", "Basic Y2Fyb2wxOnNlY3Jld"+string(c)+"==")
		statuses = append(statuses, code)
	}
	// Without its padding, as some upstreams accept it.
	code, _ := sendWith(t, s, "/", "Authorization", "Basic Y2Fyb2wxOnNlY3JldB")
	statuses = append(statuses, code)
	admitted := 0
	for _, c := range statuses {
		if c == 200 {
			admitted++
		} else if c != 429 && c != 401 {
			t.Fatalf("status %d", c)
		}
	}
	if admitted != 2 || statuses[0] != 200 || statuses[1] != 200 {
		t.Fatalf("one user, its credential spelled 17 ways: %v, want the first 2 admitted and no other", statuses)
	}
}

// TestWhitespaceAroundACredentialIsOneCounter: over HTTP/2, which passes
// header values as they are, spaces or tabs around a token made a new
// counter each (the upstream, over HTTP/1, saw the token without them);
// so did a tab after the scheme over HTTP/1.
func TestWhitespaceAroundACredentialIsOneCounter(t *testing.T) {
	fakeClock(t)
	s := startSite(t, `{
	servers {
		protocols h1 h2c
	}
}
%ADDR% {
	edge_limit {
		limit per_token {
			key {header.Authorization} {client_ip}
			rate 2/1h
		}
		limit per_key {
			key {header.X-Api-Key}
			rate 2/1h
		}
	}
	respond "ok"
}`)
	tr := &http.Transport{Protocols: new(http.Protocols)}
	tr.Protocols.SetUnencryptedHTTP2(true)
	h2 := &http.Client{Transport: tr, Timeout: 30 * time.Second}
	send := func(header, value string) int {
		req, _ := http.NewRequest(http.MethodGet, s.base+"/", nil)
		req.Header[header] = []string{value}
		resp, err := h2.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.ProtoMajor != 2 {
			t.Fatalf("HTTP/%d, want HTTP/2", resp.ProtoMajor)
		}
		return resp.StatusCode
	}
	var statuses []int
	for _, v := range []string{"Bearer A1", "Bearer A1 ", " Bearer A1", "Bearer\tA1", "\tBearer  A1\t"} {
		statuses = append(statuses, send("Authorization", v))
	}
	if fmt.Sprint(statuses) != "[200 200 429 429 429]" {
		t.Fatalf("one token with whitespace around it, over HTTP/2: %v", statuses)
	}
	statuses = nil
	for _, v := range []string{"K1", "K1 ", "\tK1"} {
		statuses = append(statuses, send("X-Api-Key", v))
	}
	if fmt.Sprint(statuses) != "[200 200 429]" {
		t.Fatalf("one API key with whitespace around it, over HTTP/2: %v", statuses)
	}
	// HTTP/1: a tab after the scheme.
	if code, _ := sendWith(t, s, "/", "Authorization", "Bearer\tB2"); code != 200 {
		t.Fatal(code)
	}
	if code, _ := sendWith(t, s, "/", "Authorization", "Bearer B2"); code != 200 {
		t.Fatal(code)
	}
	if code, _ := sendWith(t, s, "/", "Authorization", "Bearer \t B2"); code != 429 {
		t.Fatalf("a tab after the scheme made a new counter: %d", code)
	}
}

// TestIPv6ClientsCountByPrefix: six addresses of one /64 each got a fresh
// counter (6 of 6 passed a 2/1h limit), and an IPv4 address mapped into
// IPv6 counted apart from itself. A client's address counts by its /64
// (ipv6_prefix sets another), a mapped IPv4 address as IPv4. The addresses
// come from X-Forwarded-For through a trusted proxy (the loopback).
func TestIPv6ClientsCountByPrefix(t *testing.T) {
	fakeClock(t)
	s := startSite(t, `{
	servers {
		trusted_proxies static 127.0.0.1/32 ::1/128
		trusted_proxies_strict
	}
}
%ADDR% {
	edge_limit {
		limit per_ip {
			key {client_ip}
			rate 2/1h
		}
		limit per_address {
			key {client_ip}
			rate 2/1h
			ipv6_prefix 128
		}
	}
	respond "ok"
}`)
	passed := 0
	for i := 1; i <= 6; i++ {
		ip := fmt.Sprintf("2001:db8:1:2:%x::%x", i*4099, i)
		if s.get("/", "X-Forwarded-For", ip).status == 200 {
			passed++
		}
	}
	if passed != 2 {
		t.Errorf("%d of 6 addresses of one /64 passed a limit of 2", passed)
	}
	expect(t, s.get("/", "X-Forwarded-For", "2001:db8:1:3::1"), 200)
	expect(t, s.get("/", "X-Forwarded-For", "203.0.113.77"), 200)
	expect(t, s.get("/", "X-Forwarded-For", "::ffff:203.0.113.77"), 200)
	expect(t, s.get("/", "X-Forwarded-For", "203.0.113.77"), 429)
}

// TestIPv4InIPv6CountsAsIPv4: behind SIIT or NAT64 every IPv4 client
// arrives as 64:ff9b::a.b.c.d, and a /64 made all of them one client (three
// IPv4 clients shared a 2/1h limit: the third was denied, so that one
// client could deny every other); a 6to4 site's IPv4 address has 2^16 /64s
// (three of them passed a 2/1h limit three times), and Teredo puts every
// client of a server in one /64. Each counts as the IPv4 address it
// carries.
func TestIPv4InIPv6CountsAsIPv4(t *testing.T) {
	fakeClock(t)
	s := startSite(t, `{
	servers {
		trusted_proxies static 127.0.0.1/32 ::1/128
		trusted_proxies_strict
	}
}
%ADDR% {
	edge_limit {
		limit per_ip {
			key {client_ip}
			rate 2/1h
		}
	}
	respond "ok"
}`)
	for _, ip := range []string{"64:ff9b::cb00:7101", "64:ff9b::cb00:7102", "64:ff9b::cb00:7103"} {
		expect(t, s.get("/", "X-Forwarded-For", ip), 200)
	}
	expect(t, s.get("/", "X-Forwarded-For", "203.0.113.1"), 200)
	expect(t, s.get("/", "X-Forwarded-For", "203.0.113.1"), 429)
	expect(t, s.get("/", "X-Forwarded-For", "2002:c633:6401:1::1"), 200)
	expect(t, s.get("/", "X-Forwarded-For", "2002:c633:6401:2::1"), 200)
	expect(t, s.get("/", "X-Forwarded-For", "2002:c633:6401:3::1"), 429)
	expect(t, s.get("/", "X-Forwarded-For", "198.51.100.1"), 429)
	// Two Teredo clients of one server (65.54.227.120): 192.0.2.45 and
	// 192.0.2.46.
	expect(t, s.get("/", "X-Forwarded-For", "2001:0:4136:e378:8000:63bf:3fff:fdd2"), 200)
	expect(t, s.get("/", "X-Forwarded-For", "2001:0:4136:e378:8000:63bf:3fff:fdd1"), 200)
	expect(t, s.get("/", "X-Forwarded-For", "2001:0:4136:e378:8000:63bf:3fff:fdd1"), 200)
	expect(t, s.get("/", "X-Forwarded-For", "192.0.2.46"), 429)
}

// TestForwardedAddressesWithoutStrictParsingWarn: behind a trusted proxy
// that appends to X-Forwarded-For, a client that sends its own
// X-Forwarded-For gets a new counter each time unless the server parses
// the header strictly (5 of 5 passed a 2/1h limit). A limit keyed on the
// client's address warns, once, when a trusted proxy's request reaches it
// without trusted_proxies_strict; with it, the appended address counts.
func TestForwardedAddressesWithoutStrictParsingWarn(t *testing.T) {
	for _, strict := range []bool{false, true} {
		t.Run(fmt.Sprintf("strict=%v", strict), func(t *testing.T) {
			fakeClock(t)
			logOption, logs := e2e.Logs(t)
			option := ""
			if strict {
				option = "\t\ttrusted_proxies_strict\n"
			}
			s := startSite(t, `{
`+logOption+`	servers {
		trusted_proxies static 127.0.0.1/32 ::1/128
`+option+`	}
}
%ADDR% {
	edge_limit {
		limit per_ip {
			key {client_ip}
			rate 2/1h
		}
		limit per_token {
			key {header.X-Token}
			rate 100/1h
		}
	}
	respond "ok"
}`)
			const warning = "without trusted_proxies_strict"
			passed := 0
			for i := 1; i <= 5; i++ {
				// What the front proxy sends: the client's own value, then
				// the address it saw the client come from.
				xff := fmt.Sprintf("203.0.113.%d, 198.51.100.7", i)
				if s.get("/", "X-Forwarded-For", xff).status == 200 {
					passed++
				}
			}
			lines := logs()
			warned := e2e.Count(lines, warning, `"limits":["per_ip"]`)
			if strict {
				if passed != 2 || warned != 0 {
					t.Fatalf("strict: %d of 5 passed, %d warnings, want 2 and none", passed, warned)
				}
				return
			}
			if warned != 1 || e2e.Count(lines, warning) != 1 {
				t.Fatalf("%d warnings (%d of 5 requests passed), want one:\n%s", warned, passed, strings.Join(lines, "\n"))
			}
		})
	}
}

// TestClientIPWithoutAnAddress: where Caddy finds no client address (a
// unix socket's "@" without trusted_proxies_unix: client_ip is ""), the
// key of {client_ip} is the remote host's, as the plugin's ip is: a limit
// keyed on it was absent, and limited nothing, at Caddy only.
func TestClientIPWithoutAnAddress(t *testing.T) {
	cl, err := compileLimit(&Limit{Name: "k", Key: []string{"{client_ip}"}, Numbers: Numbers{Limit: 10, Window: caddy.Duration(time.Minute)}}, "t")
	if err != nil {
		t.Fatal(err)
	}
	r := httptest.NewRequest("GET", "/", nil)
	for _, addr := range []string{"@", "192.0.2.1:80"} {
		r.RemoteAddr = addr
		plugin := httpval.Value(&httpval.Part{Kind: httpval.KindClient, V6: 64}, r, nil)
		ip := httpval.RemoteIP(r)
		if addr == "@" {
			ip = "" // what Caddy's server sets
		}
		if got, _ := cl.key(r, nil, map[string]any{caddyhttp.ClientIPVarKey: ip}); got != plugin || got == "" {
			t.Errorf("%q: key %q, the plugin's %q", addr, got, plugin)
		}
	}
}

// TestCookieKeyCountsTheCookieTheUpstreamReads: Caddy's cookie placeholder
// matches the name in any case and takes the first match, so a client
// that sent its real session=<id> after SESSION=<new value> was a new
// client on every request, while the upstream (Go's Request.Cookie, and
// most frameworks) read session=<id>. The key is the cookie of that exact
// name, as the Traefik plugin's cookie:<name> reads it, alone or in a
// template.
func TestCookieKeyCountsTheCookieTheUpstreamReads(t *testing.T) {
	fakeClock(t)
	s := startSite(t, `
%ADDR% {
	edge_limit {
		limit per_session {
			key {cookie.session}
			rate 2/1h
		}
		limit per_session_path {
			key "{http.request.cookie.session}/{query.page}"
			rate 3/1h
		}
	}
	respond "ok"
}`)
	var statuses []int
	for i := 0; i < 4; i++ {
		code, _ := sendWith(t, s, "/?page=1", "Cookie", fmt.Sprintf("SESSION=new%d; session=s1", i))
		statuses = append(statuses, code)
	}
	if fmt.Sprint(statuses) != "[200 200 429 429]" {
		t.Fatalf("one session, another spelling first, new each time: %v, want [200 200 429 429]", statuses)
	}
	// The template's cookie is the exact name's too: one counter (its
	// third request is denied by per_session, and consumed nothing).
	statuses = statuses[:0]
	for i := 0; i < 4; i++ {
		code, _ := sendWith(t, s, "/?page=2&page=x"+fmt.Sprint(i), "Cookie", fmt.Sprintf("Session=new%d; session=s2", i))
		statuses = append(statuses, code)
	}
	if fmt.Sprint(statuses) != "[200 200 429 429]" {
		t.Fatalf("session s2: %v, want [200 200 429 429]", statuses)
	}
	// Another session is another client.
	expect(t, s.get("/?page=1", "Cookie", "session=s3"), 200, "X-RateLimit-Remaining", "1")
}
