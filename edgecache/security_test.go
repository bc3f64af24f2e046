package edgecache_test

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/edgelimit/caddy-edgelimit/internal/e2e"
	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// sessionApp renders a page per session cookie, as many apps do: no
// Set-Cookie, no Cache-Control private, no Vary: Cookie. With ?public=1 it
// says the page may be shared.
func sessionApp(w http.ResponseWriter, r *http.Request) {
	who := "anonymous"
	if c, err := r.Cookie("session"); err == nil {
		who = c.Value
	}
	if r.URL.Query().Get("public") == "1" {
		w.Header().Set("Cache-Control", "public, max-age=60")
		who = "everyone"
	}
	_, _ = io.WriteString(w, "hello "+who)
}

// getAs sends GET path with a session cookie ("" for none), without the
// test client's cookie jar.
func getAs(t *testing.T, s *e2e.Site, path, session string) e2e.Reply {
	t.Helper()
	if session == "" {
		return s.Get(path)
	}
	return s.Get(path, "Cookie", "session="+session)
}

// TestCacheNeverServesOneSessionToAnother: a page rendered from a session
// cookie was stored and served to the next visitor, another user or an
// anonymous one. A request with a Cookie is served only entries the
// upstream marked shareable, and stores only those; keyed on the session,
// pages are cached per session; with private_headers off, Bloom's
// behaviour is back.
func TestCacheNeverServesOneSessionToAnother(t *testing.T) {
	e2e.FakeClock(t)
	up := newUpstream(t, sessionApp)
	s := startCacheSite(t, `
%ADDR% {
	handle /default/* {
		edge_cache
		reverse_proxy %UPSTREAM%
	}
	handle /keyed/* {
		edge_cache {
			identity {cookie.session}
		}
		reverse_proxy %UPSTREAM%
	}
	handle /bloom/* {
		edge_cache {
			private_headers off
		}
		reverse_proxy %UPSTREAM%
	}
}`, up)
	// The attack: Alice's page, then Bob's and an anonymous visitor's.
	e2e.Expect(t, getAs(t, s, "/default/dash", "alice"), 200, "body", "hello alice", "Bloom-Status", "DIRECT")
	e2e.Expect(t, getAs(t, s, "/default/dash", "bob"), 200, "body", "hello bob", "Bloom-Status", "DIRECT")
	e2e.Expect(t, getAs(t, s, "/default/dash", ""), 200, "body", "hello anonymous", "Bloom-Status", "MISS")
	// Alice is not served the anonymous page either.
	e2e.Expect(t, getAs(t, s, "/default/dash", "alice"), 200, "body", "hello alice")
	e2e.Expect(t, getAs(t, s, "/default/dash", ""), 200, "body", "hello anonymous", "Bloom-Status", "HIT")

	// A page the upstream says may be shared is cached for everyone.
	e2e.Expect(t, getAs(t, s, "/default/news?public=1", "alice"), 200, "body", "hello everyone", "Bloom-Status", "MISS")
	e2e.Expect(t, getAs(t, s, "/default/news?public=1", "bob"), 200, "body", "hello everyone", "Bloom-Status", "HIT")
	e2e.Expect(t, getAs(t, s, "/default/news?public=1", ""), 200, "body", "hello everyone", "Bloom-Status", "HIT")

	// Keyed on the session: one entry per session.
	e2e.Expect(t, getAs(t, s, "/keyed/dash", "alice"), 200, "body", "hello alice", "Bloom-Status", "MISS")
	e2e.Expect(t, getAs(t, s, "/keyed/dash", "alice"), 200, "body", "hello alice", "Bloom-Status", "HIT")
	e2e.Expect(t, getAs(t, s, "/keyed/dash", "bob"), 200, "body", "hello bob", "Bloom-Status", "MISS")

	// Bloom's behaviour, asked for: only Authorization tells users apart.
	e2e.Expect(t, getAs(t, s, "/bloom/dash", "alice"), 200, "body", "hello alice", "Bloom-Status", "MISS")
	e2e.Expect(t, getAs(t, s, "/bloom/dash", "bob"), 200, "body", "hello alice", "Bloom-Status", "HIT")
}

// slowBody opens a connection and sends a GET of path that announces a
// body of 100 bytes and sends none, until release is closed; then it
// sends the body and returns the response's body.
func slowBody(t *testing.T, addr, path string, release <-chan struct{}, body string) <-chan string {
	t.Helper()
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	fmt.Fprintf(conn, "GET %s HTTP/1.1\r\nHost: %s\r\nContent-Length: %d\r\n\r\n", path, addr, len(body))
	out := make(chan string, 1)
	go func() {
		<-release
		_, _ = io.WriteString(conn, body)
		resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
		if err != nil {
			out <- "error: " + err.Error()
			return
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		out <- string(b)
	}()
	return out
}

// TestCacheRequestWithABodyNeverLeadsAFlight: a GET announcing a body it
// never sends led the URL's flight, and five normal GETs waited for it as
// long as the attacker liked; when the body came, the response computed
// from it was stored for everyone. Requests with a body pass through.
func TestCacheRequestWithABodyNeverLeadsAFlight(t *testing.T) {
	e2e.FakeClock(t)
	up := newUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		_, _ = io.WriteString(w, "page for "+string(b))
	})
	s := startCacheSite(t, `
%ADDR% {
	edge_cache
	reverse_proxy %UPSTREAM%
}`, up)
	release := make(chan struct{})
	attacker := slowBody(t, fmt.Sprintf("127.0.0.1:%d", s.Port), "/x", release, strings.Repeat("E", 100))
	// The attacker's request is in; the others must not wait for it.
	deadline := time.Now().Add(10 * time.Second)
	for up.count("GET /x") == 0 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	var wg sync.WaitGroup
	bodies := make([]string, 5)
	client := &http.Client{Timeout: 60 * time.Second}
	for i := range bodies {
		wg.Add(1)
		go func() {
			defer wg.Done()
			resp, err := client.Get(s.Base + "/x")
			if err != nil {
				bodies[i] = err.Error()
				return
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			bodies[i] = string(b)
		}()
	}
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		close(release)
		t.Fatal("normal GETs of the URL still wait behind a request whose body never comes")
	}
	for _, b := range bodies {
		if b != "page for " {
			t.Fatalf("a normal GET got %q", b)
		}
	}
	close(release)
	if got := <-attacker; got != "page for "+strings.Repeat("E", 100) {
		t.Fatalf("the attacker got %q", got)
	}
	// What the body produced was not stored.
	e2e.Expect(t, s.Get("/x"), 200, "body", "page for ", "Bloom-Status", "HIT")
}

// TestCacheStripsRewriteHeaders: X-Original-URL and its kind reached the
// upstream but not the key; an upstream that honours them answered for
// another page, stored under the plain URL and served to the next visitor.
// They are removed from cacheable requests; keep_headers keeps one, keyed.
func TestCacheStripsRewriteHeaders(t *testing.T) {
	e2e.FakeClock(t)
	rewriting := func(w http.ResponseWriter, r *http.Request) {
		page := r.URL.Path
		for _, h := range []string{"X-Original-Url", "X-Rewrite-Url"} {
			if v := r.Header.Get(h); v != "" {
				page = v
			}
		}
		method := r.Method
		if v := r.Header.Get("X-Http-Method-Override"); v != "" {
			method = v
		}
		host := r.Host
		for _, h := range []string{"X-Host", "X-Forwarded-Host"} {
			if v := r.Header.Get(h); v != "" && h == "X-Host" {
				host = v
			}
		}
		if f := r.Header.Get("Forwarded"); f != "" {
			host = f
		}
		_, _ = fmt.Fprintf(w, "%s %s on %s", method, page, host)
		// Django, Rack and others build links from these.
		for _, h := range []string{"X-Forwarded-Port", "X-Forwarded-Scheme", "X-Forwarded-Ssl", "X-Original-Host", "X-Real-Ip", "Cf-Connecting-Ip", "X-Url-Scheme"} {
			if v := r.Header.Get(h); v != "" {
				_, _ = fmt.Fprintf(w, " %s=%s", h, v)
			}
		}
	}
	up := newUpstream(t, rewriting)
	s := startCacheSite(t, `
%ADDR% {
	handle /kept/* {
		edge_cache {
			keep_headers X-Rewrite-URL
		}
		reverse_proxy %UPSTREAM%
	}
	handle {
		edge_cache
		reverse_proxy %UPSTREAM%
	}
}`, up)
	for _, h := range [][2]string{
		{"X-Original-URL", "/admin"},
		{"X-Rewrite-URL", "/admin"},
		{"X-HTTP-Method-Override", "DELETE"},
		{"X-Host", "evil.example"},
		{"Forwarded", "host=evil.example"},
		{"X-Forwarded-Port", "1337"},
		{"X-Forwarded-Scheme", "javascript"},
		{"X-Forwarded-Ssl", "weird-on"},
		{"X-Original-Host", "evil.example"},
		{"X-Real-IP", "203.0.113.66"},
		{"CF-Connecting-IP", "203.0.113.67"},
		{"X-Url-Scheme", "gopher"},
	} {
		path := "/page-" + strings.ToLower(h[0])
		r := s.Get(path, h[0], h[1])
		if strings.Contains(r.Body, h[1]) {
			t.Fatalf("%s reached the upstream: %q", h[0], r.Body)
		}
		e2e.Expect(t, s.Get(path), 200, "Bloom-Status", "HIT", "body", r.Body)
	}
	// Non-cacheable requests keep them: nothing is stored from them.
	r := s.Do(http.MethodPost, "/page-post", "X-HTTP-Method-Override", "DELETE")
	if !strings.HasPrefix(r.Body, "DELETE ") {
		t.Fatalf("a POST lost its header: %q", r.Body)
	}
	// A kept header reaches the upstream and is part of the key.
	host := strings.TrimPrefix(s.Base, "http://")
	e2e.Expect(t, s.Get("/kept/a", "X-Rewrite-URL", "/kept/b"), 200, "Bloom-Status", "MISS", "body", "GET /kept/b on "+host)
	e2e.Expect(t, s.Get("/kept/a"), 200, "Bloom-Status", "MISS", "body", "GET /kept/a on "+host)
	e2e.Expect(t, s.Get("/kept/a", "X-Rewrite-URL", "/kept/b"), 200, "Bloom-Status", "HIT", "body", "GET /kept/b on "+host)
}

// TestCacheNeverStoresAnswersToHeadersOutsideTheKey: over HTTP/2 an odd
// Expect reached the upstream, whose 417 was stored and served to every
// anonymous visitor; an oversized header's 431 likewise. Expect is
// stripped from cacheable requests, and 417 and 431 are not stored.
func TestCacheNeverStoresAnswersToHeadersOutsideTheKey(t *testing.T) {
	e2e.FakeClock(t)
	up := newUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		if len(r.Header.Get("X-Pad")) > 1000 {
			w.WriteHeader(http.StatusRequestHeaderFieldsTooLarge)
			return
		}
		_, _ = io.WriteString(w, "page")
	})
	s := startCacheSite(t, `{
	servers {
		protocols h1 h2c
	}
}
%ADDR% {
	edge_cache
	reverse_proxy %UPSTREAM%
}`, up)
	tr := &http.Transport{Protocols: new(http.Protocols)}
	tr.Protocols.SetUnencryptedHTTP2(true)
	h2 := &http.Client{Transport: tr, Timeout: 30 * time.Second}
	req, _ := http.NewRequest(http.MethodGet, s.Base+"/expect", nil)
	req.Header.Set("Expect", "x-weird")
	resp, err := h2.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.ProtoMajor != 2 || resp.StatusCode != 200 {
		t.Fatalf("HTTP/%d %d: the Expect reached the upstream", resp.ProtoMajor, resp.StatusCode)
	}
	e2e.Expect(t, s.Get("/expect"), 200, "Bloom-Status", "HIT", "body", "page")

	e2e.Expect(t, s.Get("/pad", "X-Pad", strings.Repeat("p", 2000)), 431, "Bloom-Status", "DIRECT")
	e2e.Expect(t, s.Get("/pad"), 200, "Bloom-Status", "MISS", "body", "page")
}

// TestCacheKeysOnAPICredentials: a page for X-Api-Key alice was stored and
// served to anonymous visitors and to Bob's X-Auth-Token. API credential
// headers are in the key, hashed, as Authorization is.
func TestCacheKeysOnAPICredentials(t *testing.T) {
	e2e.FakeClock(t)
	up := newUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		who := r.Header.Get("X-Api-Key") + r.Header.Get("X-Auth-Token")
		if who == "" {
			who = "anonymous"
		}
		_, _ = io.WriteString(w, "invoices of "+who)
	})
	s := startCacheSite(t, `
%ADDR% {
	edge_cache
	reverse_proxy %UPSTREAM%
}`, up)
	e2e.Expect(t, s.Get("/tokpage", "X-Api-Key", "alice-key"), 200, "Bloom-Status", "MISS", "body", "invoices of alice-key")
	e2e.Expect(t, s.Get("/tokpage", "X-Api-Key", "alice-key"), 200, "Bloom-Status", "HIT", "body", "invoices of alice-key")
	e2e.Expect(t, s.Get("/tokpage"), 200, "Bloom-Status", "MISS", "body", "invoices of anonymous")
	e2e.Expect(t, s.Get("/tokpage", "X-Auth-Token", "bob-token"), 200, "Bloom-Status", "MISS", "body", "invoices of bob-token")
}

// TestCacheHTTP2TrailerNeverLeadsAFlight: an HTTP/2 GET that says
// "content-length: 0" but declares a trailer, and never ends its stream,
// led the URL's flight while reverse_proxy waited for its body: every
// other request for the URL waited behind it. It passes through.
func TestCacheHTTP2TrailerNeverLeadsAFlight(t *testing.T) {
	e2e.FakeClock(t)
	up := newUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		_, _ = io.WriteString(w, "page")
	})
	s := startCacheSite(t, `{
	servers {
		protocols h1 h2c
	}
}
%ADDR% {
	edge_cache {
		coalesce_wait 2m
	}
	reverse_proxy %UPSTREAM%
}`, up)
	conn, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", s.Port))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if _, err := io.WriteString(conn, http2.ClientPreface); err != nil {
		t.Fatal(err)
	}
	fr := http2.NewFramer(conn, conn)
	if err := fr.WriteSettings(); err != nil {
		t.Fatal(err)
	}
	var block bytes.Buffer
	enc := hpack.NewEncoder(&block)
	for _, f := range [][2]string{{":method", "GET"}, {":scheme", "http"}, {":authority", fmt.Sprintf("127.0.0.1:%d", s.Port)},
		{":path", "/held"}, {"content-length", "0"}, {"trailer", "x-foo"}} {
		_ = enc.WriteField(hpack.HeaderField{Name: f[0], Value: f[1]})
	}
	if err := fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: block.Bytes(), EndHeaders: true}); err != nil {
		t.Fatal(err)
	}
	go func() {
		// Read (and drop) the server's frames, so that it is never blocked.
		for {
			if _, err := fr.ReadFrame(); err != nil {
				return
			}
		}
	}()
	deadline := time.Now().Add(10 * time.Second)
	for up.count("GET /held") == 0 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	client := &http.Client{Timeout: 30 * time.Second}
	for range 3 {
		resp, err := client.Get(s.Base + "/held")
		if err != nil {
			t.Fatalf("a plain GET waited behind the held stream: %v", err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if string(b) != "page" {
			t.Fatalf("a plain GET got %q", b)
		}
	}
}

// corsApp answers CORS preflights as many APIs do, without Vary: 204 for
// the methods and request headers it allows, 403 otherwise.
func corsApp(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodOptions {
		_, _ = io.WriteString(w, "resource")
		return
	}
	method := r.Header.Get("Access-Control-Request-Method")
	if method != "GET" && method != "PUT" && method != "POST" {
		w.WriteHeader(http.StatusForbidden)
		return
	}
	for _, line := range r.Header.Values("Access-Control-Request-Headers") {
		for h := range strings.SplitSeq(line, ",") {
			switch strings.ToLower(strings.TrimSpace(h)) {
			case "", "content-type", "authorization":
			default:
				w.WriteHeader(http.StatusForbidden)
				return
			}
		}
	}
	w.Header().Set("Access-Control-Allow-Origin", r.Header.Get("Origin"))
	w.Header().Set("Access-Control-Allow-Methods", "GET, PUT, POST")
	w.Header().Set("Access-Control-Allow-Headers", "content-type, authorization")
	w.WriteHeader(http.StatusNoContent)
}

// TestCacheNeverServesOnePreflightToAnother: an attacker's preflight
// asking for DELETE stored the upstream's 403, and browsers' preflights
// for PUT and GET from that origin got it for the TTL; likewise a 403 for
// Access-Control-Request-Headers: x-nothing served to a preflight asking
// for content-type and authorization. A preflight's request headers are
// in the key, the header list normalized as browsers may spell it.
func TestCacheNeverServesOnePreflightToAnother(t *testing.T) {
	e2e.FakeClock(t)
	up := newUpstream(t, corsApp)
	s := startCacheSite(t, `
%ADDR% {
	edge_cache
	reverse_proxy %UPSTREAM%
}`, up)
	const origin = "https://app.example"
	preflight := func(method, headers string) e2e.Reply {
		t.Helper()
		h := []string{"Origin", origin, "Access-Control-Request-Method", method}
		if headers != "" {
			h = append(h, "Access-Control-Request-Headers", headers)
		}
		return s.Do(http.MethodOptions, "/cors/items", h...)
	}
	// The attacker's preflights come first.
	e2e.Expect(t, preflight("DELETE", ""), 403, "Bloom-Status", "MISS")
	e2e.Expect(t, preflight("DELETE", ""), 403, "Bloom-Status", "HIT")
	e2e.Expect(t, preflight("PUT", "x-nothing"), 403, "Bloom-Status", "MISS")
	// Browsers' preflights get their own answers.
	e2e.Expect(t, preflight("PUT", ""), 204, "Bloom-Status", "MISS", "Access-Control-Allow-Methods", "GET, PUT, POST")
	e2e.Expect(t, preflight("GET", ""), 204, "Bloom-Status", "MISS")
	e2e.Expect(t, preflight("PUT", "content-type,authorization"), 204, "Bloom-Status", "MISS")
	// And their own answers are cached; another spelling of the header
	// list (case, order, spaces, repeats) is another question, with an
	// entry of its own (TestPreflightSpellingNeverServedToBrowsers).
	e2e.Expect(t, preflight("PUT", ""), 204, "Bloom-Status", "HIT")
	e2e.Expect(t, preflight("PUT", "content-type,authorization"), 204, "Bloom-Status", "HIT")
	e2e.Expect(t, preflight("PUT", "Authorization, Content-Type"), 204, "Bloom-Status", "MISS")
	e2e.Expect(t, preflight("PUT", "Authorization, Content-Type"), 204, "Bloom-Status", "HIT")
	// A method is case-sensitive: "put" is not PUT.
	e2e.Expect(t, preflight("put", ""), 403, "Bloom-Status", "MISS")
	e2e.Expect(t, preflight("PUT", "x-nothing"), 403, "Bloom-Status", "HIT")
	if n := up.count("OPTIONS /cors/items"); n != 7 {
		t.Fatalf("upstream saw %d preflights, want 7", n)
	}
}

// TestPreflightSpellingNeverServedToBrowsers: the cache read a
// preflight's header list as a set, and an upstream that compares it as
// it came (browsers write it lower-cased, sorted, joined by commas) answered
// an attacker's "authorization, content-type" with 403, served to browsers
// asking "authorization,content-type" as a HIT; "Authorization,Content-Type",
// "content-type,authorization", a blank or a repeated name alike. A
// preflight's headers are keyed as they came.
func TestPreflightSpellingNeverServedToBrowsers(t *testing.T) {
	e2e.FakeClock(t)
	up := newUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Access-Control-Request-Headers") != "authorization,content-type" {
			w.Header().Set("Cache-Control", "max-age=600")
			w.WriteHeader(http.StatusForbidden)
			return
		}
		w.Header().Set("Cache-Control", "max-age=600")
		w.Header().Set("Access-Control-Allow-Origin", r.Header.Get("Origin"))
		w.Header().Set("Access-Control-Allow-Headers", "authorization,content-type")
		w.WriteHeader(http.StatusNoContent)
	})
	s := startCacheSite(t, `
%ADDR% {
	edge_cache
	reverse_proxy %UPSTREAM%
}`, up)
	for i, attack := range []string{"authorization, content-type", "Authorization,Content-Type", "content-type,authorization", "authorization,,content-type", "authorization,content-type,authorization"} {
		path := "/items/" + string(rune('a'+i))
		preflight := func(headers string) e2e.Reply {
			t.Helper()
			return s.Do(http.MethodOptions, path, "Origin", "https://app.example", "Access-Control-Request-Method", "PUT", "Access-Control-Request-Headers", headers)
		}
		e2e.Expect(t, preflight(attack), 403, "Bloom-Status", "MISS")
		e2e.Expect(t, preflight("authorization,content-type"), 204, "Bloom-Status", "MISS")
		e2e.Expect(t, preflight("authorization,content-type"), 204, "Bloom-Status", "HIT")
	}
}
