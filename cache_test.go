package edgelimit

import (
	"context"
	"encoding/json"
	"errors"
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
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"

	"github.com/edgelimit/caddy-edgelimit/cache"
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
	for _, name := range []string{"Bloom-Response-Ignore", "Bloom-Response-TTL", "Bloom-Response-Buckets", "Cache-Control", "Vary", "ETag", "Set-Cookie"} {
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

func startCacheSite(t *testing.T, body string, up *upstream) *site {
	t.Helper()
	return startSite(t, strings.ReplaceAll(body, "%UPSTREAM%", up.addr()))
}

func TestCacheIssueCaddyfile(t *testing.T) {
	clk := fakeClock(t)
	up := newUpstream(t, api)
	s := startCacheSite(t, cacheIssueCaddyfile, up)

	// Ten GETs of one URL: one MISS, nine HITs, all 200; one upstream
	// request, and only the MISS counted by the limiter.
	r := s.get("/issue/things")
	expect(t, r, 200, "Bloom-Status", "MISS", "X-RateLimit-Remaining", "2")
	for range 9 {
		r = s.get("/issue/things")
		expect(t, r, 200, "Bloom-Status", "HIT", "X-RateLimit-Remaining", "", "body", `{"method":"GET","path":"/issue/things","auth":"","lang":""}`)
	}
	if n := up.count("GET /issue/things"); n != 1 {
		t.Fatalf("upstream saw %d GETs", n)
	}

	// POSTs pass with DIRECT and are counted: three per minute, the
	// fourth is denied, and a 429 is never stored.
	for i := range 3 {
		expect(t, s.do("POST", "/issue/things", "Authorization", "Bearer poster"), 200, "Bloom-Status", "DIRECT", "X-RateLimit-Remaining", strconv.Itoa(2-i))
	}
	expect(t, s.do("POST", "/issue/things", "Authorization", "Bearer poster"), 429, "Bloom-Status", "DIRECT", "Retry-After", "60")
	// The anonymous client spent one request on the MISS: two more pass.
	expect(t, s.do("POST", "/issue/things"), 200, "Bloom-Status", "DIRECT")
	expect(t, s.do("POST", "/issue/things"), 200, "Bloom-Status", "DIRECT")
	expect(t, s.do("POST", "/issue/things"), 429, "Bloom-Status", "DIRECT")
	expect(t, s.get("/issue/things"), 200, "Bloom-Status", "HIT")
	expect(t, s.get("/issue/denied"), 429, "Bloom-Status", "DIRECT")
	clk.Add(time.Minute)
	expect(t, s.get("/issue/denied"), 200, "Bloom-Status", "MISS")

	// With the upstream stopped, an uncached GET gets 502 OFFLINE; the
	// cached one is still a HIT, and once expired, served stale.
	up.srv.Close()
	expect(t, s.get("/issue/uncached"), 502, "Bloom-Status", "OFFLINE")
	expect(t, s.get("/issue/things", "Authorization", "Bearer poster"), 502, "Bloom-Status", "OFFLINE")
	clk.Add(30 * time.Second)
	expect(t, s.get("/issue/things"), 200, "Bloom-Status", "OFFLINE", "Age", "90",
		"body", `{"method":"GET","path":"/issue/things","auth":"","lang":""}`)
	clk.Add(5 * time.Minute)
	expect(t, s.get("/issue/things"), 502, "Bloom-Status", "OFFLINE")
}

func TestCacheStatusesAndControlHeaders(t *testing.T) {
	clk := fakeClock(t)
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
	check := func(path string, status int, bloom string) reply {
		t.Helper()
		r := s.get(path)
		expect(t, r, status, append([]string{"Bloom-Status", bloom}, noControl...)...)
		return r
	}
	// Stored: MISS, then HIT with an ETag and an Age, buckets and TTL
	// headers gone.
	r := check("/st/a?bloom-response-buckets=b1,b2&bloom-response-ttl=30", 200, "MISS")
	etag := r.get("ETag")
	if len(etag) != 26 {
		t.Fatalf("etag %q", etag)
	}
	check("/st/a?bloom-response-buckets=b1,b2&bloom-response-ttl=30", 200, "HIT")
	expect(t, s.get("/st/a?bloom-response-buckets=b1,b2&bloom-response-ttl=30"), 200, "ETag", etag, "Age", "0", "Content-Length", "51")
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
		"/st/cookie?set-cookie=s%3D1",
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
	expect(t, s.do("OPTIONS", "/st/a"), 200, "Bloom-Status", "MISS", "body", `{"method":"OPTIONS","path":"/st/a","auth":"","lang":""}`)
	expect(t, s.do("OPTIONS", "/st/a"), 200, "Bloom-Status", "HIT")
	for _, m := range []string{"POST", "PUT", "PATCH", "DELETE"} {
		expect(t, s.do(m, "/st/a?bloom-response-buckets=x"), 200, "Bloom-Status", "DIRECT", "Bloom-Response-Buckets", "")
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
	fakeClock(t)
	up := newUpstream(t, api)
	s := startCacheSite(t, `
%ADDR% {
	edge_cache
	reverse_proxy %UPSTREAM%
}`, up)
	// A HEAD before any GET goes upstream, and stores nothing.
	expect(t, s.do("HEAD", "/h/doc"), 200, "Bloom-Status", "DIRECT")
	r := s.get("/h/doc")
	expect(t, r, 200, "Bloom-Status", "MISS")
	etag := r.get("ETag")
	r = s.do("HEAD", "/h/doc")
	expect(t, r, 200, "Bloom-Status", "HIT", "Content-Length", strconv.Itoa(len(`{"method":"GET","path":"/h/doc","auth":"","lang":""}`)), "ETag", etag, "body", "")
	if up.count("HEAD /h/doc") != 1 || up.count("GET /h/doc") != 1 {
		t.Fatalf("upstream saw %v", up.seen)
	}

	// If-None-Match with the ETag: 304 from the cache.
	expect(t, s.get("/h/doc", "If-None-Match", etag), 304, "Bloom-Status", "HIT", "ETag", etag, "body", "")
	expect(t, s.get("/h/doc", "If-None-Match", `"other"`), 200, "Bloom-Status", "HIT")
	// On a MISS the upstream is asked for the whole response (no
	// condition forwarded) and the cache answers the condition.
	r = s.get("/h/etag?etag=%22v1%22", "If-None-Match", `"v1"`, "If-Modified-Since", "Mon, 23 Nov 2026 00:00:00 GMT")
	expect(t, r, 304, "Bloom-Status", "MISS", "ETag", `"v1"`)
	if h := up.lastHeader(); h.Get("If-None-Match") != "" || h.Get("If-Modified-Since") != "" {
		t.Fatalf("conditions reached the upstream: %v", h)
	}
	expect(t, s.get("/h/etag?etag=%22v1%22"), 200, "Bloom-Status", "HIT", "ETag", `"v1"`)
	expect(t, s.get("/h/etag?etag=%22v1%22", "If-None-Match", `W/"v1"`), 304, "Bloom-Status", "HIT")
}

func TestCacheIsolatesAuthorizationAndIdentity(t *testing.T) {
	fakeClock(t)
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
	expect(t, s.get("/me", "Authorization", "Bearer alice"), 200, "Bloom-Status", "MISS", "body", body("Bearer alice"))
	expect(t, s.get("/me", "Authorization", "Bearer bob"), 200, "Bloom-Status", "MISS", "body", body("Bearer bob"))
	expect(t, s.get("/me"), 200, "Bloom-Status", "MISS", "body", body(""))
	expect(t, s.get("/me", "Authorization", "Bearer alice"), 200, "Bloom-Status", "HIT", "body", body("Bearer alice"))
	expect(t, s.get("/me", "Authorization", "Bearer bob"), 200, "Bloom-Status", "HIT", "body", body("Bearer bob"))
	expect(t, s.get("/me"), 200, "Bloom-Status", "HIT", "body", body(""))
	// The identity placeholder separates further.
	expect(t, s.get("/me", "Authorization", "Bearer alice", "X-Tenant", "t1"), 200, "Bloom-Status", "MISS")
	expect(t, s.get("/me", "Authorization", "Bearer alice", "X-Tenant", "t1"), 200, "Bloom-Status", "HIT")
	// Shards are namespaces.
	expect(t, s.get("/me", "Bloom-Request-Shard", "3"), 200, "Bloom-Status", "MISS")
	expect(t, s.get("/me", "Bloom-Request-Shard", "3"), 200, "Bloom-Status", "HIT")
}

func TestCacheVary(t *testing.T) {
	fakeClock(t)
	up := newUpstream(t, api)
	s := startCacheSite(t, `
%ADDR% {
	edge_cache
	reverse_proxy %UPSTREAM%
}`, up)
	const path = "/vary?vary=Accept-Language"
	expect(t, s.get(path, "Accept-Language", "en"), 200, "Bloom-Status", "MISS")
	expect(t, s.get(path, "Accept-Language", "en"), 200, "Bloom-Status", "HIT", "Vary", "Accept-Language")
	r := s.get(path, "Accept-Language", "fr")
	expect(t, r, 200, "Bloom-Status", "MISS")
	if !strings.Contains(r.body, `"lang":"fr"`) {
		t.Fatalf("served %q for fr", r.body)
	}
	expect(t, s.get(path, "Accept-Language", "fr"), 200, "Bloom-Status", "HIT")
}

func TestCacheStaleIfErrorOnUpstreamFailures(t *testing.T) {
	clk := fakeClock(t)
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
	expect(t, s.get("/stale/a"), 200, "Bloom-Status", "MISS")
	clk.Add(20 * time.Second)
	// The upstream's own 503 or 502 is replaced by the stale copy.
	for _, code := range []int32{503, 502, 504} {
		failing.Store(code)
		expect(t, s.get("/stale/a"), 200, "Bloom-Status", "OFFLINE", "Age", "20")
	}
	// Without a stale copy, the upstream's own answer passes.
	failing.Store(503)
	expect(t, s.get("/stale/b"), 503, "Bloom-Status", "DIRECT", "body", "upstream trouble")
	// Other errors are the upstream's to give, stale copy or not.
	failing.Store(500)
	expect(t, s.get("/stale/a"), 500, "Bloom-Status", "DIRECT")
	failing.Store(0)
	expect(t, s.get("/stale/a"), 200, "Bloom-Status", "MISS")
}

func TestCacheOfflineWithHandleErrors(t *testing.T) {
	fakeClock(t)
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
	expect(t, s.get("/he/x"), 502, "Bloom-Status", "OFFLINE", "body", "offline: 502")
	expect(t, s.do("POST", "/he/x"), 502, "Bloom-Status", "OFFLINE")
	expect(t, s.do("HEAD", "/he/x"), 502, "Bloom-Status", "OFFLINE")
}

func postPurge(t *testing.T, body string) (int, string) {
	t.Helper()
	resp, err := http.Post(fmt.Sprintf("http://localhost:%d/edge_cache/purge", adminPort()), "application/json", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, strings.TrimSpace(string(b))
}

func TestCachePurgeThroughAdminAPI(t *testing.T) {
	fakeClock(t)
	up := newUpstream(t, api)
	s := startCacheSite(t, `
%ADDR% {
	edge_cache
	reverse_proxy %UPSTREAM%
}`, up)
	get := func(path string, status string, headers ...string) {
		t.Helper()
		expect(t, s.get(path, headers...), 200, "Bloom-Status", status)
	}
	tagged := "/purge/a?bloom-response-buckets=purge_user:1,purge_all"
	other := "/purge/b?bloom-response-buckets=purge_user:2,purge_all"
	get(tagged, "MISS")
	get(other, "MISS")
	get("/purge/me", "MISS", "Authorization", "Bearer purge-alice")
	get("/purge/me", "MISS", "Authorization", "Bearer purge-bob")
	get(tagged, "HIT")

	if code, body := postPurge(t, `{"buckets":["purge_user:1"]}`); code != 200 || body != `{"purged":1}` {
		t.Fatalf("purge bucket: %d %s", code, body)
	}
	get(tagged, "MISS")
	get(other, "HIT")
	if code, body := postPurge(t, `{"authorization":"Bearer purge-alice"}`); code != 200 || body != `{"purged":1}` {
		t.Fatalf("purge authorization: %d %s", code, body)
	}
	get("/purge/me", "MISS", "Authorization", "Bearer purge-alice")
	get("/purge/me", "HIT", "Authorization", "Bearer purge-bob")
	hash := cache.AuthHash("Bearer purge-bob").String()
	if code, body := postPurge(t, `{"authorization_hash":"`+hash+`","buckets":["purge_all"],"shard":0}`); code != 200 || body != `{"purged":3}` {
		t.Fatalf("purge hash and bucket: %d %s", code, body)
	}
	get(other, "MISS")
	get("/purge/me", "MISS", "Authorization", "Bearer purge-bob")

	for body, want := range map[string]string{
		``:                               "JSON object",
		`{`:                              "JSON object",
		`[]`:                             "JSON object",
		`{}`:                             "name what to purge",
		`{"buckets":[]}`:                 "name what to purge",
		`{"bucket":["a"]}`:               "unknown field",
		`{"buckets":[""]}`:               "bucket",
		`{"authorization_hash":"abc"}`:   "64 hexadecimal digits",
		`{"buckets":["a"],"shard":16}`:   "shard 16",
		`{"buckets":["a"],"shard":-1}`:   "shard -1",
		`{"buckets":["a"]} {"x":1}`:      "one JSON object",
		`{"buckets":"a"}`:                "JSON object",
		`{"authorization":"","shard":1}`: "name what to purge",
	} {
		code, got := postPurge(t, body)
		if code != 400 || !strings.Contains(got, want) || !strings.HasPrefix(got, `{"error":`) {
			t.Errorf("body %q: %d %s, want 400 with %q", body, code, got, want)
		}
	}
	resp, err := http.Get(fmt.Sprintf("http://localhost:%d/edge_cache/purge", adminPort()))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 405 || resp.Header.Get("Allow") != "POST" {
		t.Fatalf("GET: %d %v", resp.StatusCode, resp.Header)
	}
}

// TestCacheRedisStorage runs the cache on Redis through Caddy, with
// storage redis wired to a test server, then stops the server: requests
// pass with DIRECT, then cache again once it is back.
func TestCacheRedisStorage(t *testing.T) {
	fakeClock(t)
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
	expect(t, s.get("/redis/a?bloom-response-buckets=rb"), 200, "Bloom-Status", "MISS")
	expect(t, s.get("/redis/a?bloom-response-buckets=rb"), 200, "Bloom-Status", "HIT")
	keys, err := client.Keys(context.Background(), "edge_cache_e2e:*").Result()
	if err != nil || len(keys) != 2 {
		t.Fatalf("redis keys %v %v", keys, err)
	}
	if code, body := postPurge(t, `{"buckets":["rb"]}`); code != 200 || body != `{"purged":1}` {
		t.Fatalf("purge: %d %s", code, body)
	}
	expect(t, s.get("/redis/a?bloom-response-buckets=rb"), 200, "Bloom-Status", "MISS")

	srv.Stop()
	for range 3 {
		expect(t, s.get("/redis/a?bloom-response-buckets=rb"), 200, "Bloom-Status", "DIRECT")
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
	for s.get("/redis/a?bloom-response-buckets=rb").header.Get("Bloom-Status") != "MISS" {
		if time.Now().After(deadline) {
			t.Fatal("the cache did not come back with Redis")
		}
		time.Sleep(100 * time.Millisecond)
	}
	expect(t, s.get("/redis/a?bloom-response-buckets=rb"), 200, "Bloom-Status", "HIT")
}

func TestCacheRedisNotWired(t *testing.T) {
	// Without Redis settings for edge_limit, storage redis has no Redis.
	out, err := adapt(t, "{\n\tadmin off\n}\n:80 {\n\tedge_cache {\n\t\tstorage redis\n\t}\n}\n")
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

// failingStore fails every operation, as a store whose server is down.
type failingStore struct{ calls atomic.Int32 }

var errStoreDown = errors.New("store down")

func (f *failingStore) Get(context.Context, cache.Key, time.Time) (*cache.Entry, error) {
	f.calls.Add(1)
	return nil, errStoreDown
}

func (f *failingStore) Set(context.Context, cache.Key, *cache.Entry, time.Time) error {
	f.calls.Add(1)
	return errStoreDown
}

func (f *failingStore) Purge(context.Context, cache.Purge) (int, error) { return 0, errStoreDown }
func (f *failingStore) Close() error                                    { return nil }

// newTestCache provisions a handler outside a server.
func newTestCache(t testing.TB, c *Cache) *Cache {
	t.Helper()
	ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	t.Cleanup(cancel)
	if err := c.Provision(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Cleanup() })
	c.logger = zap.NewNop()
	return c
}

// serveCache runs one request through c and next.
func serveCache(c *Cache, next caddyhttp.Handler, method, target string, headers ...string) *httptest.ResponseRecorder {
	r := httptest.NewRequest(method, target, nil)
	for i := 0; i+1 < len(headers); i += 2 {
		r.Header.Set(headers[i], headers[i+1])
	}
	w := httptest.NewRecorder()
	r = caddyhttp.PrepareRequest(r, caddy.NewReplacer(), w, nil)
	if err := c.ServeHTTP(w, r, next); err != nil {
		var he caddyhttp.HandlerError
		if errors.As(err, &he) {
			w.Code = he.StatusCode
		} else {
			w.Code = 500
		}
	}
	return w
}

func TestCacheStoreFailureIsDirect(t *testing.T) {
	fakeClock(t)
	c := newTestCache(t, &Cache{Zone: "failing"})
	fs := new(failingStore)
	c.store = fs
	var calls atomic.Int32
	next := caddyhttp.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
		calls.Add(1)
		w.Header().Set("Bloom-Response-Buckets", "x")
		_, _ = io.WriteString(w, "fresh")
		return nil
	})
	for range 3 {
		w := serveCache(c, next, "GET", "http://example/fail")
		if w.Code != 200 || w.Header().Get("Bloom-Status") != "DIRECT" || w.Body.String() != "fresh" || w.Header().Get("Bloom-Response-Buckets") != "" {
			t.Fatalf("%d %v %q", w.Code, w.Header(), w.Body)
		}
	}
	if calls.Load() != 3 || fs.calls.Load() != 3 {
		t.Fatalf("upstream %d, store %d calls", calls.Load(), fs.calls.Load())
	}
}

// TestCacheCoalescesConcurrentMisses: many concurrent requests for one
// URL make one upstream request; the others are HITs.
func TestCacheCoalescesConcurrentMisses(t *testing.T) {
	fakeClock(t)
	c := newTestCache(t, &Cache{Zone: "coalesce"})
	const n = 32
	key := cache.KeyOf(httptest.NewRequest("GET", "http://example/hot", nil), c.Zone, nil)
	var calls atomic.Int32
	next := caddyhttp.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
		calls.Add(1)
		deadline := time.Now().Add(10 * time.Second)
		for c.flights.Waiting(key.ID) < n-1 && time.Now().Before(deadline) {
			time.Sleep(time.Millisecond)
		}
		_, _ = io.WriteString(w, "hot")
		return nil
	})
	var wg sync.WaitGroup
	statuses := make([]string, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			w := serveCache(c, next, "GET", "http://example/hot")
			if w.Code != 200 || w.Body.String() != "hot" {
				t.Errorf("%d %q", w.Code, w.Body)
			}
			statuses[i] = w.Header().Get("Bloom-Status")
		}()
	}
	wg.Wait()
	if calls.Load() != 1 {
		t.Fatalf("%d upstream requests", calls.Load())
	}
	count := map[string]int{}
	for _, s := range statuses {
		count[s]++
	}
	if count["MISS"] != 1 || count["HIT"] != n-1 {
		t.Fatalf("statuses %v", count)
	}
}

// TestCacheCoalescedUncacheable: waiters on a response that is not stored
// ask the upstream themselves, never reuse it.
func TestCacheCoalescedUncacheable(t *testing.T) {
	fakeClock(t)
	c := newTestCache(t, &Cache{Zone: "private"})
	key := cache.KeyOf(httptest.NewRequest("GET", "http://example/private", nil), c.Zone, nil)
	var calls atomic.Int32
	next := caddyhttp.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
		if calls.Add(1) == 1 {
			deadline := time.Now().Add(10 * time.Second)
			for c.flights.Waiting(key.ID) < 1 && time.Now().Before(deadline) {
				time.Sleep(time.Millisecond)
			}
		}
		w.Header().Set("Cache-Control", "private")
		_, _ = io.WriteString(w, r.Header.Get("Cookie"))
		return nil
	})
	var wg sync.WaitGroup
	bodies := make([]string, 2)
	for i, cookie := range []string{"a", "b"} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if i == 1 {
				deadline := time.Now().Add(10 * time.Second)
				for calls.Load() == 0 && time.Now().Before(deadline) {
					time.Sleep(time.Millisecond)
				}
			}
			bodies[i] = serveCache(c, next, "GET", "http://example/private", "Cookie", cookie).Body.String()
		}()
	}
	wg.Wait()
	if bodies[0] != "a" || bodies[1] != "b" || calls.Load() != 2 {
		t.Fatalf("bodies %q, %d calls", bodies, calls.Load())
	}
}

func TestCacheLargeBodyStreamsThrough(t *testing.T) {
	fakeClock(t)
	c := newTestCache(t, &Cache{Zone: "large", MaxSize: 1000})
	big := strings.Repeat("z", 5000)
	next := caddyhttp.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
		for i := 0; i < len(big); i += 700 {
			_, _ = io.WriteString(w, big[i:min(i+700, len(big))])
		}
		return nil
	})
	for range 2 {
		w := serveCache(c, next, "GET", "http://example/large")
		if w.Code != 200 || w.Body.String() != big || w.Header().Get("Bloom-Status") != "DIRECT" {
			t.Fatalf("%d %v %d bytes", w.Code, w.Header(), w.Body.Len())
		}
	}
}

func BenchmarkCacheHit(b *testing.B) {
	fakeClock(b)
	body := `{"id":1,"name":"a cached answer","tags":["x","y"]}`
	b.Run("edge_cache", func(b *testing.B) {
		c := newTestCache(b, &Cache{Zone: "bench"})
		next := caddyhttp.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
			w.Header().Set("Content-Type", "application/json")
			_, _ = io.WriteString(w, body)
			return nil
		})
		benchCacheHandler(b, func(w http.ResponseWriter, r *http.Request) error { return c.ServeHTTP(w, r, next) }, "HIT")
	})
	b.Run("respond", func(b *testing.B) {
		sr := caddyhttp.StaticResponse{Body: body, Headers: http.Header{"Content-Type": {"application/json"}}}
		benchCacheHandler(b, func(w http.ResponseWriter, r *http.Request) error { return sr.ServeHTTP(w, r, nil) }, "")
	})
}

// benchCacheWriter is a ResponseWriter that keeps nothing, reset per request as
// a server's would be.
type benchCacheWriter struct {
	h      http.Header
	status int
	n      int
}

func (w *benchCacheWriter) Header() http.Header         { return w.h }
func (w *benchCacheWriter) WriteHeader(code int)        { w.status = code }
func (w *benchCacheWriter) Write(p []byte) (int, error) { w.n += len(p); return len(p), nil }

func benchCacheHandler(b *testing.B, h func(http.ResponseWriter, *http.Request) error, wantStatus string) {
	w := &benchCacheWriter{h: make(http.Header)}
	r := httptest.NewRequest("GET", "http://example/bench?page=1", nil)
	r.Header.Set("Authorization", "Bearer benchmark-token")
	r = caddyhttp.PrepareRequest(r, caddy.NewReplacer(), w, nil)
	if err := h(w, r); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		clear(w.h)
		if err := h(w, r); err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	if got := w.h.Get("Bloom-Status"); got != wantStatus || w.status != 200 {
		b.Fatalf("Bloom-Status %q, status %d", got, w.status)
	}
}

// TestCacheBehindAPermissiveLimit is the README's route: the limit in front
// of the cache counts HITs too, the one behind it does not.
func TestCacheBehindAPermissiveLimit(t *testing.T) {
	fakeClock(t)
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
	expect(t, s.get("/front/a"), 200, "Bloom-Status", "MISS", "X-RateLimit-Remaining", "2")
	expect(t, s.get("/front/a"), 200, "Bloom-Status", "HIT", "X-RateLimit-Remaining", "1")
	expect(t, s.get("/front/a"), 200, "Bloom-Status", "HIT", "X-RateLimit-Remaining", "0")
	expect(t, s.get("/front/a"), 429, "Bloom-Status", "")
	if n := up.count("GET /front/a"); n != 1 {
		t.Fatalf("upstream saw %d", n)
	}
}

func TestCacheEventStreamPassesThrough(t *testing.T) {
	fakeClock(t)
	c := newTestCache(t, &Cache{Zone: "sse"})
	var flushed atomic.Int32
	next := caddyhttp.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
		w.Header().Set("Content-Type", "text/event-stream")
		w.WriteHeader(200)
		for range 3 {
			_, _ = io.WriteString(w, "data: x\n\n")
			if err := http.NewResponseController(w).Flush(); err == nil {
				flushed.Add(1)
			}
		}
		return nil
	})
	for range 2 {
		w := serveCache(c, next, "GET", "http://example/events")
		if w.Header().Get("Bloom-Status") != "DIRECT" || !w.Flushed || w.Body.String() != strings.Repeat("data: x\n\n", 3) {
			t.Fatalf("%v flushed %v %q", w.Header(), w.Flushed, w.Body)
		}
	}
	if flushed.Load() != 6 {
		t.Fatalf("%d flushes", flushed.Load())
	}
}
