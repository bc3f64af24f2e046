package edgecache_test

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/edgelimit/caddy-edgelimit/internal/e2e"
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
