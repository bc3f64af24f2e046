package edgecache_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/edgelimit/caddy-edgelimit/edgecache"
	"github.com/edgelimit/caddy-edgelimit/internal/e2e"
	"github.com/edgelimit/caddy-edgelimit/internal/redistest"
)

// upstream is an API behind the cache: it counts the requests it sees, per
// method and path, and can be stopped.
type upstream struct {
	srv   *httptest.Server
	mu    sync.Mutex
	seen  map[string]int
	last  http.Header
	total atomic.Int32
}

func newUpstream(t *testing.T, h http.HandlerFunc) *upstream {
	t.Helper()
	u := &upstream{seen: map[string]int{}}
	u.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		u.mu.Lock()
		u.seen[r.Method+" "+r.URL.RequestURI()]++
		u.last = r.Header.Clone()
		u.mu.Unlock()
		u.total.Add(1)
		h(w, r)
	}))
	t.Cleanup(u.srv.Close)
	return u
}

func (u *upstream) addr() string { return u.srv.Listener.Addr().String() }

func (u *upstream) count(methodAndURI string) int {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.seen[methodAndURI]
}

func (u *upstream) lastHeader() http.Header {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.last
}

// api answers like a small REST API whose responses steer the cache.
func api(w http.ResponseWriter, r *http.Request) {
	h := w.Header()
	h.Set("Content-Type", "application/json")
	q := r.URL.Query()
	for _, name := range []string{"Bloom-Response-Ignore", "Bloom-Response-TTL", "Bloom-Response-Buckets", "Cache-Control", "Vary", "ETag", "Set-Cookie", "Cache-Status"} {
		if v := q.Get(strings.ToLower(name)); v != "" {
			h.Set(name, v)
		}
	}
	status := http.StatusOK
	if s := q.Get("status"); s != "" {
		status, _ = strconv.Atoi(s)
	}
	body := fmt.Sprintf(`{"method":%q,"path":%q,"auth":%q,"lang":%q}`, r.Method, r.URL.Path, r.Header.Get("Authorization"), r.Header.Get("Accept-Language"))
	if n := q.Get("size"); n != "" {
		size, _ := strconv.Atoi(n)
		body = strings.Repeat("x", size)
	}
	w.WriteHeader(status)
	_, _ = io.WriteString(w, body)
}

// The Caddyfile of the cache issue, with the upstream's address.
const cacheIssueCaddyfile = `
%ADDR% {
	edge_cache {
		ttl 60s
		max_size 256KB
		max_memory 256MB
		stale_if_error 5m
	}
	edge_limit {
		limit per_client {
			key {header.Authorization} {client_ip}
			rate 3/1m
		}
	}
	reverse_proxy %UPSTREAM%
}
`

// startCacheSite starts a Caddy with body, %UPSTREAM% replaced by up's
// address. Every response its client reads must carry a valid
// Cache-Status, if any (edgecache.CheckCacheStatus).
func startCacheSite(t *testing.T, body string, up *upstream) *e2e.Site {
	t.Helper()
	s := e2e.Start(t, strings.ReplaceAll(body, "%UPSTREAM%", up.addr()))
	base := s.Tester.Client.Transport
	if base == nil {
		base = http.DefaultTransport
	}
	s.Tester.Client.Transport = checkStatus{t: t, base: base}
	return s
}

// checkStatus checks the Cache-Status of every response it carries.
type checkStatus struct {
	t    testing.TB
	base http.RoundTripper
}

func (c checkStatus) RoundTrip(r *http.Request) (*http.Response, error) {
	resp, err := c.base.RoundTrip(r)
	if err == nil {
		if err := edgecache.CheckCacheStatus(resp.Header); err != nil {
			c.t.Errorf("%s %s: %v", r.Method, r.URL, err)
		}
	}
	return resp, err
}

func TestCacheServesHitsWithoutCounting(t *testing.T) {
	clk := e2e.FakeClock(t)
	up := newUpstream(t, api)
	s := startCacheSite(t, cacheIssueCaddyfile, up)

	// Ten GETs of one URL: one MISS, nine HITs, all 200; one upstream
	// request, and only the MISS counted by the limiter.
	r := s.Get("/issue/things")
	e2e.Expect(t, r, 200, "Bloom-Status", "MISS", "X-RateLimit-Remaining", "2")
	for range 9 {
		r = s.Get("/issue/things")
		e2e.Expect(t, r, 200, "Bloom-Status", "HIT", "X-RateLimit-Remaining", "", "body", `{"method":"GET","path":"/issue/things","auth":"","lang":""}`)
	}
	if n := up.count("GET /issue/things"); n != 1 {
		t.Fatalf("upstream saw %d GETs", n)
	}

	// POSTs pass with DIRECT and are counted: three per minute, the
	// fourth is denied, and a 429 is never stored.
	for i := range 3 {
		e2e.Expect(t, s.Do("POST", "/issue/things", "Authorization", "Bearer poster"), 200, "Bloom-Status", "DIRECT", "X-RateLimit-Remaining", strconv.Itoa(2-i))
	}
	e2e.Expect(t, s.Do("POST", "/issue/things", "Authorization", "Bearer poster"), 429, "Bloom-Status", "DIRECT", "Retry-After", "60")
	// The anonymous client spent one request on the MISS: two more pass.
	e2e.Expect(t, s.Do("POST", "/issue/things"), 200, "Bloom-Status", "DIRECT")
	e2e.Expect(t, s.Do("POST", "/issue/things"), 200, "Bloom-Status", "DIRECT")
	e2e.Expect(t, s.Do("POST", "/issue/things"), 429, "Bloom-Status", "DIRECT")
	e2e.Expect(t, s.Get("/issue/things"), 200, "Bloom-Status", "HIT")
	e2e.Expect(t, s.Get("/issue/denied"), 429, "Bloom-Status", "DIRECT", "Cache-Status", "edgelimit; fwd=uri-miss; detail=status")
	clk.Add(time.Minute)
	e2e.Expect(t, s.Get("/issue/denied"), 200, "Bloom-Status", "MISS")

	// With the upstream stopped, an uncached GET gets 502 OFFLINE; the
	// cached one is still a HIT, and once expired, served stale.
	up.srv.Close()
	e2e.Expect(t, s.Get("/issue/uncached"), 502, "Bloom-Status", "OFFLINE")
	e2e.Expect(t, s.Get("/issue/things", "Authorization", "Bearer poster"), 502, "Bloom-Status", "OFFLINE")
	clk.Add(30 * time.Second)
	e2e.Expect(t, s.Get("/issue/things"), 200, "Bloom-Status", "OFFLINE", "Age", "90",
		"body", `{"method":"GET","path":"/issue/things","auth":"","lang":""}`)
	clk.Add(5 * time.Minute)
	e2e.Expect(t, s.Get("/issue/things"), 502, "Bloom-Status", "OFFLINE")
}

func TestCacheStatusesAndControlHeaders(t *testing.T) {
	clk := e2e.FakeClock(t)
	up := newUpstream(t, api)
	s := startCacheSite(t, `
%ADDR% {
	edge_cache {
		ttl 1m
		max_size 1KB
	}
	reverse_proxy %UPSTREAM%
}`, up)
	noControl := []string{"Bloom-Response-Ignore", "", "Bloom-Response-TTL", "", "Bloom-Response-Buckets", ""}
	check := func(path string, status int, bloom string) e2e.Reply {
		t.Helper()
		r := s.Get(path)
		e2e.Expect(t, r, status, append([]string{"Bloom-Status", bloom}, noControl...)...)
		return r
	}
	// Stored: MISS, then HIT with an ETag and an Age, buckets and TTL
	// headers gone.
	r := check("/st/a?bloom-response-buckets=b1,b2&bloom-response-ttl=30", 200, "MISS")
	etag := r.Header.Get("ETag")
	if len(etag) != 26 {
		t.Fatalf("etag %q", etag)
	}
	check("/st/a?bloom-response-buckets=b1,b2&bloom-response-ttl=30", 200, "HIT")
	e2e.Expect(t, s.Get("/st/a?bloom-response-buckets=b1,b2&bloom-response-ttl=30"), 200, "ETag", etag, "Age", "0", "Content-Length", "51")
	clk.Add(31 * time.Second) // Bloom-Response-TTL: 30 beats the ttl of 1m
	check("/st/a?bloom-response-buckets=b1,b2&bloom-response-ttl=30", 200, "MISS")

	check("/st/404?status=404", 404, "MISS")
	check("/st/404?status=404", 404, "HIT")
	// Not stored: each goes upstream with DIRECT.
	for _, path := range []string{
		"/st/500?status=500",
		"/st/400?status=400",
		"/st/ignore?bloom-response-ignore=1",
		"/st/nostore?cache-control=no-store",
		"/st/private?cache-control=private,max-age=60",
		// An invalid max-age makes the response stale (RFC 9111), not
		// fresh for the default TTL.
		"/st/badage?cache-control=max-age%3Dabc",
		"/st/negage?cache-control=max-age%3D-1",
		"/st/cookie?set-cookie=s%3D1%3B%20Path%3D%2Fst%2Fcookie",
		"/st/varystar?vary=*",
		"/st/big?size=2000",
		"/st/zero?bloom-response-ttl=0",
	} {
		check(path, statusOf(path), "DIRECT")
		check(path, statusOf(path), "DIRECT")
		if n := up.count("GET " + path); n != 2 {
			t.Errorf("%s: upstream saw %d requests", path, n)
		}
	}
	// max-age sets the lifetime when Bloom-Response-TTL is absent.
	check("/st/maxage?cache-control=max-age=5", 200, "MISS")
	clk.Add(4 * time.Second)
	check("/st/maxage?cache-control=max-age=5", 200, "HIT")
	clk.Add(time.Second)
	check("/st/maxage?cache-control=max-age=5", 200, "MISS")

	// Methods: OPTIONS is cached on its own; the others pass.
	e2e.Expect(t, s.Do("OPTIONS", "/st/a"), 200, "Bloom-Status", "MISS", "body", `{"method":"OPTIONS","path":"/st/a","auth":"","lang":""}`)
	e2e.Expect(t, s.Do("OPTIONS", "/st/a"), 200, "Bloom-Status", "HIT")
	for _, m := range []string{"POST", "PUT", "PATCH", "DELETE"} {
		e2e.Expect(t, s.Do(m, "/st/a?bloom-response-buckets=x"), 200, "Bloom-Status", "DIRECT", "Bloom-Response-Buckets", "")
	}
}

func statusOf(path string) int {
	if i := strings.Index(path, "status="); i >= 0 {
		n, _ := strconv.Atoi(path[i+7:])
		return n
	}
	return 200
}

func TestCacheHeadFromGetAnd304(t *testing.T) {
	e2e.FakeClock(t)
	up := newUpstream(t, api)
	s := startCacheSite(t, `
%ADDR% {
	edge_cache
	reverse_proxy %UPSTREAM%
}`, up)
	// A HEAD before any GET goes upstream, and stores nothing.
	e2e.Expect(t, s.Do("HEAD", "/h/doc"), 200, "Bloom-Status", "DIRECT")
	r := s.Get("/h/doc")
	e2e.Expect(t, r, 200, "Bloom-Status", "MISS")
	etag := r.Header.Get("ETag")
	r = s.Do("HEAD", "/h/doc")
	e2e.Expect(t, r, 200, "Bloom-Status", "HIT", "Content-Length", strconv.Itoa(len(`{"method":"GET","path":"/h/doc","auth":"","lang":""}`)), "ETag", etag, "body", "")
	if up.count("HEAD /h/doc") != 1 || up.count("GET /h/doc") != 1 {
		t.Fatalf("upstream saw %v", up.seen)
	}

	// If-None-Match with the ETag: 304 from the cache.
	e2e.Expect(t, s.Get("/h/doc", "If-None-Match", etag), 304, "Bloom-Status", "HIT", "ETag", etag, "body", "")
	e2e.Expect(t, s.Get("/h/doc", "If-None-Match", `"other"`), 200, "Bloom-Status", "HIT")
	// On a MISS the upstream is asked for the whole response (no
	// condition forwarded) and the cache answers the condition.
	r = s.Get("/h/etag?etag=%22v1%22", "If-None-Match", `"v1"`, "If-Modified-Since", "Mon, 23 Nov 2026 00:00:00 GMT")
	e2e.Expect(t, r, 304, "Bloom-Status", "MISS", "ETag", `"v1"`)
	if h := up.lastHeader(); h.Get("If-None-Match") != "" || h.Get("If-Modified-Since") != "" {
		t.Fatalf("conditions reached the upstream: %v", h)
	}
	e2e.Expect(t, s.Get("/h/etag?etag=%22v1%22"), 200, "Bloom-Status", "HIT", "ETag", `"v1"`)
	e2e.Expect(t, s.Get("/h/etag?etag=%22v1%22", "If-None-Match", `W/"v1"`), 304, "Bloom-Status", "HIT")
}

func TestCacheIsolatesAuthorizationAndIdentity(t *testing.T) {
	e2e.FakeClock(t)
	up := newUpstream(t, api)
	s := startCacheSite(t, `
%ADDR% {
	edge_cache {
		identity {header.X-Tenant}
	}
	reverse_proxy %UPSTREAM%
}`, up)
	body := func(auth string) string {
		return `{"method":"GET","path":"/me","auth":"` + auth + `","lang":""}`
	}
	e2e.Expect(t, s.Get("/me", "Authorization", "Bearer alice"), 200, "Bloom-Status", "MISS", "body", body("Bearer alice"))
	e2e.Expect(t, s.Get("/me", "Authorization", "Bearer bob"), 200, "Bloom-Status", "MISS", "body", body("Bearer bob"))
	e2e.Expect(t, s.Get("/me"), 200, "Bloom-Status", "MISS", "body", body(""))
	e2e.Expect(t, s.Get("/me", "Authorization", "Bearer alice"), 200, "Bloom-Status", "HIT", "body", body("Bearer alice"))
	e2e.Expect(t, s.Get("/me", "Authorization", "Bearer bob"), 200, "Bloom-Status", "HIT", "body", body("Bearer bob"))
	e2e.Expect(t, s.Get("/me"), 200, "Bloom-Status", "HIT", "body", body(""))
	// The identity placeholder separates further.
	e2e.Expect(t, s.Get("/me", "Authorization", "Bearer alice", "X-Tenant", "t1"), 200, "Bloom-Status", "MISS")
	e2e.Expect(t, s.Get("/me", "Authorization", "Bearer alice", "X-Tenant", "t1"), 200, "Bloom-Status", "HIT")
	// Shards are namespaces.
	e2e.Expect(t, s.Get("/me", "Bloom-Request-Shard", "3"), 200, "Bloom-Status", "MISS")
	e2e.Expect(t, s.Get("/me", "Bloom-Request-Shard", "3"), 200, "Bloom-Status", "HIT")
}

func TestCacheVary(t *testing.T) {
	e2e.FakeClock(t)
	up := newUpstream(t, api)
	s := startCacheSite(t, `
%ADDR% {
	edge_cache
	reverse_proxy %UPSTREAM%
}`, up)
	const path = "/vary?vary=Accept-Language"
	e2e.Expect(t, s.Get(path, "Accept-Language", "en"), 200, "Bloom-Status", "MISS")
	e2e.Expect(t, s.Get(path, "Accept-Language", "en"), 200, "Bloom-Status", "HIT", "Vary", "Accept-Language")
	r := s.Get(path, "Accept-Language", "fr")
	e2e.Expect(t, r, 200, "Bloom-Status", "MISS")
	if !strings.Contains(r.Body, `"lang":"fr"`) {
		t.Fatalf("served %q for fr", r.Body)
	}
	e2e.Expect(t, s.Get(path, "Accept-Language", "fr"), 200, "Bloom-Status", "HIT")
}

func TestCacheStaleIfErrorOnUpstreamFailures(t *testing.T) {
	clk := e2e.FakeClock(t)
	var failing atomic.Int32 // a status the upstream answers with, or 0
	up := newUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		if code := failing.Load(); code != 0 {
			w.WriteHeader(int(code))
			_, _ = io.WriteString(w, "upstream trouble")
			return
		}
		api(w, r)
	})
	s := startCacheSite(t, `
%ADDR% {
	edge_cache {
		ttl 10s
		stale_if_error 1m
	}
	reverse_proxy %UPSTREAM%
}`, up)
	e2e.Expect(t, s.Get("/stale/a"), 200, "Bloom-Status", "MISS")
	clk.Add(20 * time.Second)
	// The upstream's own 503 or 502 is replaced by the stale copy.
	for _, code := range []int32{503, 502, 504} {
		failing.Store(code)
		e2e.Expect(t, s.Get("/stale/a"), 200, "Bloom-Status", "OFFLINE", "Age", "20")
	}
	// Without a stale copy, the upstream's own answer passes.
	failing.Store(503)
	e2e.Expect(t, s.Get("/stale/b"), 503, "Bloom-Status", "DIRECT", "body", "upstream trouble")
	// Other errors are the upstream's to give, stale copy or not.
	failing.Store(500)
	e2e.Expect(t, s.Get("/stale/a"), 500, "Bloom-Status", "DIRECT")
	failing.Store(0)
	e2e.Expect(t, s.Get("/stale/a"), 200, "Bloom-Status", "MISS")
}

func TestCacheOfflineWithHandleErrors(t *testing.T) {
	e2e.FakeClock(t)
	up := newUpstream(t, api)
	up.srv.Close()
	s := startCacheSite(t, `
%ADDR% {
	edge_cache
	reverse_proxy %UPSTREAM%
	handle_errors {
		respond "offline: {err.status_code}"
	}
}`, up)
	e2e.Expect(t, s.Get("/he/x"), 502, "Bloom-Status", "OFFLINE", "body", "offline: 502")
	e2e.Expect(t, s.Do("POST", "/he/x"), 502, "Bloom-Status", "OFFLINE")
	e2e.Expect(t, s.Do("HEAD", "/he/x"), 502, "Bloom-Status", "OFFLINE")
}

// TestCacheRedisStorage runs the cache on Redis through Caddy, with
// storage redis wired to a test server, then stops the server: requests
// pass with DIRECT, then cache again once it is back.
func TestCacheRedisStorage(t *testing.T) {
	e2e.FakeClock(t)
	srv := redistest.Start(t)
	client := srv.Client(t)

	up := newUpstream(t, api)
	s := startCacheSite(t, `
{
	edge_limit {
		storage redis `+srv.URL+`
	}
}
%ADDR% {
	edge_cache {
		storage redis {
			prefix edge_cache_e2e:
		}
	}
	reverse_proxy %UPSTREAM%
}`, up)
	e2e.Expect(t, s.Get("/redis/a?bloom-response-buckets=rb"), 200, "Bloom-Status", "MISS")
	e2e.Expect(t, s.Get("/redis/a?bloom-response-buckets=rb"), 200, "Bloom-Status", "HIT")
	keys, err := client.Keys(context.Background(), "edge_cache_e2e:*").Result()
	if err != nil || len(keys) != 2 {
		t.Fatalf("redis keys %v %v", keys, err)
	}
	if code, body := postPurge(t, `{"buckets":["rb"]}`); code != 200 || body != `{"purged":1}` {
		t.Fatalf("purge: %d %s", code, body)
	}
	e2e.Expect(t, s.Get("/redis/a?bloom-response-buckets=rb"), 200, "Bloom-Status", "MISS")

	srv.Stop()
	for range 3 {
		e2e.Expect(t, s.Get("/redis/a?bloom-response-buckets=rb"), 200, "Bloom-Status", "DIRECT")
	}
	if n := up.count("GET /redis/a?bloom-response-buckets=rb"); n != 5 {
		t.Fatalf("upstream saw %d requests", n)
	}
	if code, body := postPurge(t, `{"buckets":["rb"]}`); code != 502 || !strings.Contains(body, "a store failed") {
		t.Fatalf("purge with Redis down: %d %s", code, body)
	}
	srv.Restart(t)
	// The shared store's breaker lets a request probe Redis again after a
	// second: until then the cache keeps answering DIRECT.
	deadline := time.Now().Add(10 * time.Second)
	for s.Get("/redis/a?bloom-response-buckets=rb").Header.Get("Bloom-Status") != "MISS" {
		if time.Now().After(deadline) {
			t.Fatal("the cache did not come back with Redis")
		}
		time.Sleep(100 * time.Millisecond)
	}
	e2e.Expect(t, s.Get("/redis/a?bloom-response-buckets=rb"), 200, "Bloom-Status", "HIT")
}

func TestCacheRedisNotWired(t *testing.T) {
	// Without Redis settings for edge_limit, storage redis has no Redis.
	out, err := e2e.Adapt(t, "{\n\tadmin off\n}\n:80 {\n\tedge_cache {\n\t\tstorage redis\n\t}\n}\n")
	if err != nil {
		t.Fatal(err)
	}
	var cfg caddy.Config
	if err := json.Unmarshal(out, &cfg); err != nil {
		t.Fatal(err)
	}
	if err := caddy.Validate(&cfg); err == nil || !strings.Contains(err.Error(), "edge_limit { storage redis") {
		t.Fatalf("storage redis without Redis settings: %v", err)
	}
}

// TestCacheBehindAPermissiveLimit is the README's route: the limit in front
// of the cache counts HITs too, the one behind it does not.
func TestCacheBehindAPermissiveLimit(t *testing.T) {
	e2e.FakeClock(t)
	up := newUpstream(t, api)
	s := startCacheSite(t, `
%ADDR% {
	route {
		edge_limit {
			limit load_balancer {
				key {client_ip}
				rate 3/1m
			}
		}
		edge_cache {
			ttl 60s
		}
		edge_limit {
			limit api_global {
				key {header.Authorization} {client_ip}
				rate 1/1m
			}
			headers none
		}
		reverse_proxy %UPSTREAM%
	}
}`, up)
	e2e.Expect(t, s.Get("/front/a"), 200, "Bloom-Status", "MISS", "X-RateLimit-Remaining", "2")
	e2e.Expect(t, s.Get("/front/a"), 200, "Bloom-Status", "HIT", "X-RateLimit-Remaining", "1")
	e2e.Expect(t, s.Get("/front/a"), 200, "Bloom-Status", "HIT", "X-RateLimit-Remaining", "0")
	e2e.Expect(t, s.Get("/front/a"), 429, "Bloom-Status", "")
	if n := up.count("GET /front/a"); n != 1 {
		t.Fatalf("upstream saw %d", n)
	}
}

// TestCacheWaitersPastCoalesceWaitMakeOneFetch: 30 concurrent requests
// for a URL whose first upstream request hangs. Past coalesce_wait, each
// waiter used to ask the upstream itself (30 upstream requests for one
// URL) and the last answered after twice the upstream's time; now the
// first to give up has the upstream asked once more, in the background,
// and they all wait for that request or the first, whichever answers
// first: the upstream sees two requests.
func TestCacheWaitersPastCoalesceWaitMakeOneFetch(t *testing.T) {
	e2e.FakeClock(t)
	release := make(chan struct{})
	var released sync.Once
	free := func() { released.Do(func() { close(release) }) }
	var first atomic.Bool
	// The first request hangs until released; the upstream answers every
	// later one at once, so only the count of requests it sees tells
	// whether the waiters stampeded.
	up := newUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		if first.CompareAndSwap(false, true) {
			<-release
		}
		_, _ = io.WriteString(w, "slow answer")
	})
	t.Cleanup(free) // before the upstream closes, which waits for it
	s := startCacheSite(t, `
%ADDR% {
	edge_cache {
		coalesce_wait 300ms
	}
	reverse_proxy %UPSTREAM%
}`, up)
	client := &http.Client{Timeout: time.Minute}
	get := func() string {
		resp, err := client.Get(s.Base + "/slow")
		if err != nil {
			return err.Error()
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.Header.Get("Bloom-Status") + " " + string(b)
	}
	leader := make(chan string, 1)
	go func() { leader <- get() }()
	deadline := time.Now().Add(30 * time.Second)
	for up.count("GET /slow") == 0 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	const waiters = 29
	var wg sync.WaitGroup
	got := make([]string, waiters)
	for i := range waiters {
		wg.Add(1)
		go func() {
			defer wg.Done()
			got[i] = get()
		}()
	}
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(45 * time.Second):
		t.Fatal("the waiters are still waiting")
	}
	if n := up.count("GET /slow"); n != 2 {
		t.Fatalf("the upstream saw %d requests for the URL, want 2 (the hung one and one more)", n)
	}
	count := map[string]int{}
	for _, g := range got {
		count[g]++
	}
	// The second request went in the background: every waiter is served
	// what it stored.
	if count["HIT slow answer"] != waiters {
		t.Fatalf("waiters got %v, want HITs", count)
	}
	free()
	if body := <-leader; body != "MISS slow answer" {
		t.Fatalf("the leader got %q", body)
	}
}
