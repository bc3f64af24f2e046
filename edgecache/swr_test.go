package edgecache_test

import (
	"encoding/base64"
	"fmt"
	"io"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/edgelimit/caddy-edgelimit/internal/e2e"
)

// versioned is an upstream whose answers count its requests per path
// ("v1", "v2"...), with the Cache-Control its path asks for, that records
// what each request carried, and that holds its answers while hold is set.
type versioned struct {
	*upstream
	mu   sync.Mutex
	reqs map[string][]*http.Request
	hold chan struct{}     // nil: answer at once
	cc   map[string]string // Cache-Control by path, instead of ?cc=
}

func newVersioned(t *testing.T) *versioned {
	v := &versioned{reqs: map[string][]*http.Request{}, cc: map[string]string{}}
	v.upstream = newUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		r2 := r.Clone(r.Context())
		r2.Body, r2.ContentLength = io.NopCloser(nil), int64(len(body))
		v.mu.Lock()
		v.reqs[r.URL.Path] = append(v.reqs[r.URL.Path], r2)
		n, hold := len(v.reqs[r.URL.Path]), v.hold
		v.mu.Unlock()
		if hold != nil {
			<-hold
		}
		cc := r.URL.Query().Get("cc")
		v.mu.Lock()
		if o, ok := v.cc[r.URL.Path]; ok {
			cc = o
		}
		v.mu.Unlock()
		if cc != "" {
			w.Header().Set("Cache-Control", cc)
		}
		_, _ = fmt.Fprintf(w, "v%d", n)
	})
	return v
}

// requests returns what the upstream was sent for path.
func (v *versioned) requests(path string) []*http.Request {
	v.mu.Lock()
	defer v.mu.Unlock()
	return append([]*http.Request(nil), v.reqs[path]...)
}

func (v *versioned) setCacheControl(path, cc string) {
	v.mu.Lock()
	v.cc[path] = cc
	v.mu.Unlock()
}

func (v *versioned) setHold(ch chan struct{}) {
	v.mu.Lock()
	v.hold = ch
	v.mu.Unlock()
}

// revalidations reads caddy_edge_cache_revalidations_total{result}.
func revalidations(t *testing.T, result string) float64 {
	return scrape(t)[`caddy_edge_cache_revalidations_total{result="`+result+`"}`]
}

// waitRevalidations waits until the revalidations of result reach want.
func waitRevalidations(t *testing.T, result string, want float64) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for revalidations(t, result) < want {
		if time.Now().After(deadline) {
			t.Fatalf("revalidations %s: %v, want %v", result, revalidations(t, result), want)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestCacheStaleWhileRevalidate: a stale entry within its
// stale-while-revalidate window (the upstream's, RFC 5861, or the
// operator's default) is served at once, as a HIT with a negative ttl, and
// refreshed in the background: one refresh per entry however many
// requests come meanwhile, no body, and a private request's cookie left
// out. Before, a stale entry was fetched again in the foreground (MISS).
func TestCacheStaleWhileRevalidate(t *testing.T) {
	clk := e2e.FakeClock(t)
	up := newVersioned(t)
	s := startCacheSite(t, `
%ADDR% {
	handle /default/* {
		edge_cache {
			ttl 10s
			stale_while_revalidate 1m
		}
		reverse_proxy %UPSTREAM%
	}
	handle /user/* {
		basic_auth {
			alice $2a$04$qua78eWO9MLbRS/Tnqgp7eRvlO0uQdPJGXfQ9cEAYXLh6KiOvQXDC
		}
		edge_cache {
			ttl 10s
			stale_while_revalidate 1m
		}
		reverse_proxy %UPSTREAM% {
			header_up X-User {http.auth.user.id}
		}
	}
	handle {
		edge_cache
		reverse_proxy %UPSTREAM%
	}
}`, up.upstream)
	stored := revalidations(t, "stored")
	const a = "/up/a?cc=max-age%3D10,stale-while-revalidate%3D60"
	expectStatus(t, s.Get(a), 200, "MISS", "edgelimit; fwd=uri-miss; stored")
	clk.Add(15 * time.Second)
	r := s.Get(a)
	expectStatus(t, r, 200, "HIT", "edgelimit; hit; ttl=-5")
	e2e.Expect(t, r, 200, "body", "v1", "Age", "15")
	waitRevalidations(t, "stored", stored+1)
	r = s.Get(a)
	expectStatus(t, r, 200, "HIT", "edgelimit; hit; ttl=10")
	e2e.Expect(t, r, 200, "body", "v2", "Age", "0")

	// One refresh per entry: ten requests while it is held are all served
	// the stale entry at once, and the upstream sees one request.
	hold := make(chan struct{})
	up.setHold(hold)
	clk.Add(20 * time.Second)
	for range 10 {
		e2e.Expect(t, s.Get(a), 200, "Bloom-Status", "HIT", "body", "v2", "Age", "20")
	}
	deadline := time.Now().Add(20 * time.Second)
	for len(up.requests("/up/a")) < 3 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	e2e.Expect(t, s.Get(a), 200, "Bloom-Status", "HIT", "body", "v2")
	if n := len(up.requests("/up/a")); n != 3 {
		t.Fatalf("the upstream saw %d requests, want 3: one refresh at a time", n)
	}
	up.setHold(nil)
	close(hold)
	waitRevalidations(t, "stored", stored+2)
	e2e.Expect(t, s.Get(a), 200, "Bloom-Status", "HIT", "body", "v3", "Age", "0")

	// Past the window, the entry is gone: a MISS.
	clk.Add(71 * time.Second)
	expectStatus(t, s.Get(a), 200, "MISS", "edgelimit; fwd=uri-miss; stored")

	// The operator's default, for an upstream that says nothing.
	e2e.Expect(t, s.Get("/default/b"), 200, "Bloom-Status", "MISS", "body", "v1")
	clk.Add(30 * time.Second)
	e2e.Expect(t, s.Get("/default/b"), 200, "Bloom-Status", "HIT", "body", "v1", "Cache-Status", "edgelimit; hit; ttl=-20")
	waitRevalidations(t, "stored", stored+3)
	e2e.Expect(t, s.Get("/default/b"), 200, "Bloom-Status", "HIT", "body", "v2")
	// must-revalidate forbids it: fetched in the foreground.
	const mr = "/default/mr?cc=max-age%3D10,must-revalidate"
	e2e.Expect(t, s.Get(mr), 200, "Bloom-Status", "MISS")
	clk.Add(15 * time.Second)
	expectStatus(t, s.Get(mr), 200, "MISS", "edgelimit; fwd=uri-miss; stored")

	// A HEAD is served the stale entry, and the refresh is a GET without a
	// body.
	const h = "/default/h"
	e2e.Expect(t, s.Get(h), 200, "Bloom-Status", "MISS")
	clk.Add(15 * time.Second)
	e2e.Expect(t, s.Do(http.MethodHead, h), 200, "Bloom-Status", "HIT", "Content-Length", "2", "body", "")
	waitRevalidations(t, "stored", stored+4)
	reqs := up.requests(h)
	if len(reqs) != 2 || reqs[1].Method != http.MethodGet || reqs[1].ContentLength != 0 || reqs[1].Header.Get("Content-Length") != "" {
		t.Fatalf("the refresh: %d requests, the last %v", len(reqs), reqs[len(reqs)-1])
	}

	// A shared entry served stale to a request with a session cookie is
	// refreshed without the cookie; an entry keyed on Authorization is
	// refreshed with it.
	const pub = "/up/pub?cc=public,max-age%3D10,stale-while-revalidate%3D60"
	e2e.Expect(t, s.Get(pub), 200, "Bloom-Status", "MISS")
	clk.Add(15 * time.Second)
	e2e.Expect(t, s.Get(pub, "Cookie", "session=alice"), 200, "Bloom-Status", "HIT", "body", "v1")
	waitRevalidations(t, "stored", stored+5)
	if reqs := up.requests("/up/pub"); len(reqs) != 2 || reqs[1].Header.Get("Cookie") != "" {
		t.Fatalf("the refresh carried the cookie: %v", reqs[len(reqs)-1].Header)
	}
	const own = "/up/own?cc=max-age%3D10,stale-while-revalidate%3D60"
	e2e.Expect(t, s.Get(own, "Authorization", "Bearer alice"), 200, "Bloom-Status", "MISS")
	clk.Add(15 * time.Second)
	e2e.Expect(t, s.Get(own, "Authorization", "Bearer alice"), 200, "Bloom-Status", "HIT")
	waitRevalidations(t, "stored", stored+6)
	if reqs := up.requests("/up/own"); len(reqs) != 2 || reqs[1].Header.Get("Authorization") != "Bearer alice" {
		t.Fatalf("the refresh of Alice's entry: %v", reqs[len(reqs)-1].Header)
	}
	// An entry not marked shared is not served to a request with a
	// cookie, stale or not, and that request starts no refresh.
	const mine = "/up/mine?cc=max-age%3D10,stale-while-revalidate%3D60"
	e2e.Expect(t, s.Get(mine), 200, "Bloom-Status", "MISS")
	clk.Add(15 * time.Second)
	e2e.Expect(t, s.Get(mine, "Cookie", "session=bob"), 200, "Bloom-Status", "DIRECT", "body", "v2")
	// A shared entry refreshed from a request with a cookie keeps its
	// stale copy when the new response is not marked shared, as that
	// request's own MISS would not have stored it.
	const flip = "/up/flip?cc=public,max-age%3D10,stale-while-revalidate%3D60"
	e2e.Expect(t, s.Get(flip), 200, "Bloom-Status", "MISS", "body", "v1")
	clk.Add(15 * time.Second)
	up.setCacheControl("/up/flip", "max-age=10")
	notStored := revalidations(t, "not-stored")
	e2e.Expect(t, s.Get(flip, "Cookie", "session=bob"), 200, "Bloom-Status", "HIT", "body", "v1")
	waitRevalidations(t, "not-stored", notStored+1)
	e2e.Expect(t, s.Get(flip), 200, "Bloom-Status", "HIT", "body", "v1")
	// That stale hit (no cookie now) refreshed the entry: wait for it, so
	// that the next wait counts the next refresh, not this one.
	waitRevalidations(t, "stored", stored+7)

	// What handlers before edge_cache set (basic_auth's user) reaches the
	// refresh as it reached the MISS.
	basic := "Basic " + base64.StdEncoding.EncodeToString([]byte("alice:secret"))
	e2e.Expect(t, s.Get("/user/me", "Authorization", basic), 200, "Bloom-Status", "MISS")
	clk.Add(15 * time.Second)
	e2e.Expect(t, s.Get("/user/me", "Authorization", basic), 200, "Bloom-Status", "HIT", "body", "v1")
	waitRevalidations(t, "stored", stored+8)
	if reqs := up.requests("/user/me"); len(reqs) != 2 || reqs[0].Header.Get("X-User") != "alice" || reqs[1].Header.Get("X-User") != "alice" {
		t.Fatalf("X-User of the MISS and the refresh: %q, %q", reqs[0].Header.Get("X-User"), reqs[len(reqs)-1].Header.Get("X-User"))
	}
}
