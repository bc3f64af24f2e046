package edgecache_test

import (
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/edgelimit/caddy-edgelimit/edgecache"
	"github.com/edgelimit/caddy-edgelimit/internal/e2e"
)

// expectStatus checks a reply's status, Bloom-Status and Cache-Status.
func expectStatus(t *testing.T, r e2e.Reply, status int, bloom, cacheStatus string) {
	t.Helper()
	e2e.Expect(t, r, status, "Bloom-Status", bloom)
	if got := strings.Join(r.Header.Values("Cache-Status"), ", "); got != cacheStatus {
		t.Fatalf("Cache-Status %q, want %q (Bloom-Status %s)", got, cacheStatus, bloom)
	}
}

// TestCacheStatusMapping: every outcome of the cache, with the
// Cache-Status member RFC 9211 gives it (docs/cache.md has the table).
func TestCacheStatusMapping(t *testing.T) {
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
	checked := edgecache.CacheStatusesChecked.Load()
	s := startCacheSite(t, `
%ADDR% {
	edge_cache {
		ttl 1m
		max_size 1KB
		stale_if_error 1m
	}
	reverse_proxy %UPSTREAM%
}`, up)
	const (
		miss   = "edgelimit; fwd=uri-miss; stored"
		hit60  = "edgelimit; hit; ttl=60"
		direct = "edgelimit; fwd=uri-miss; detail="
	)
	// Stored, then hits counting their lifetime down, with Age.
	expectStatus(t, s.Get("/cs/a"), 200, "MISS", miss)
	expectStatus(t, s.Get("/cs/a"), 200, "HIT", hit60)
	clk.Add(18 * time.Second)
	r := s.Get("/cs/a")
	expectStatus(t, r, 200, "HIT", "edgelimit; hit; ttl=42")
	e2e.Expect(t, r, 200, "Age", "18")
	expectStatus(t, s.Do("HEAD", "/cs/a"), 200, "HIT", "edgelimit; hit; ttl=42")
	// A 304 made from the entry is still a hit (RFC 9211 2.1).
	expectStatus(t, s.Get("/cs/a", "If-None-Match", r.Header.Get("ETag")), 304, "HIT", "edgelimit; hit; ttl=42")

	// A MISS answered 304 here from the upstream's 200.
	expectStatus(t, s.Get("/cs/etag?etag=%22v1%22", "If-None-Match", `"v1"`), 304, "MISS", "edgelimit; fwd=uri-miss; fwd-status=200; stored")

	// Another variant of a stored URL.
	expectStatus(t, s.Get("/cs/v?vary=Accept-Language", "Accept-Language", "en"), 200, "MISS", miss)
	expectStatus(t, s.Get("/cs/v?vary=Accept-Language", "Accept-Language", "fr"), 200, "MISS", "edgelimit; fwd=vary-miss; stored")

	// Not stored, with why.
	for path, detail := range map[string]string{
		"/cs/500?status=500":                                     "status",
		"/cs/ignore?bloom-response-ignore=1":                     "ignore",
		"/cs/nostore?cache-control=no-store":                     "no-store",
		"/cs/private?cache-control=private":                      "private",
		"/cs/nocache?cache-control=no-cache":                     "no-cache",
		"/cs/cookie?set-cookie=s%3D1%3B%20Path%3D%2Fcs%2Fcookie": "set-cookie",
		"/cs/varystar?vary=*":                                    "vary",
		"/cs/zero?bloom-response-ttl=0":                          "ttl-zero",
		"/cs/big?size=2000":                                      "too-large",
	} {
		expectStatus(t, s.Get(path), statusOf(path), "DIRECT", direct+detail)
	}
	// A HEAD with no GET entry is not stored.
	expectStatus(t, s.Do("HEAD", "/cs/head"), 200, "DIRECT", direct+"head")
	// Methods that must go forward, and requests the cache stays out of.
	expectStatus(t, s.Do("POST", "/cs/a"), 200, "DIRECT", "edgelimit; fwd=method")
	expectStatus(t, s.Do("DELETE", "/cs/a"), 200, "DIRECT", "edgelimit; fwd=method")
	req, err := http.NewRequest("GET", s.Base+"/cs/a", strings.NewReader("a body"))
	if err != nil {
		t.Fatal(err)
	}
	resp, err := s.Tester.Client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	expectStatus(t, e2e.Reply{Status: resp.StatusCode, Header: resp.Header}, 200, "DIRECT", "edgelimit; fwd=bypass; detail=body")
	// A session cookie: the fresh entry is not shared, so the request
	// goes forward, and its unshared answer is not stored.
	expectStatus(t, s.Get("/cs/a", "Cookie", "session=1"), 200, "DIRECT", "edgelimit; fwd=request; detail=not-shared")
	expectStatus(t, s.Get("/cs/pub?cache-control=public", "Cookie", "session=1"), 200, "MISS", miss)
	expectStatus(t, s.Get("/cs/pub?cache-control=public", "Cookie", "session=1"), 200, "HIT", hit60)

	// Past its lifetime: a stale copy is kept (stale_if_error), served
	// when the upstream fails, and replaced when it answers again.
	clk.Add(50 * time.Second) // age 68 for /cs/a
	failing.Store(503)
	expectStatus(t, s.Get("/cs/a"), 200, "OFFLINE", "edgelimit; fwd=stale; fwd-status=503; ttl=-8; detail=offline")
	// The upstream's own 503 without a stale copy is its answer.
	expectStatus(t, s.Get("/cs/none"), 503, "DIRECT", direct+"status")
	failing.Store(0)
	expectStatus(t, s.Get("/cs/a"), 200, "MISS", "edgelimit; fwd=stale; stored")
	expectStatus(t, s.Get("/cs/a"), 200, "HIT", hit60)

	// Unreachable: the stale copy, else Caddy's 502.
	clk.Add(61 * time.Second)
	up.srv.Close()
	expectStatus(t, s.Get("/cs/a"), 200, "OFFLINE", "edgelimit; fwd=stale; ttl=-1; detail=offline")
	expectStatus(t, s.Get("/cs/gone"), 502, "OFFLINE", "edgelimit; fwd=uri-miss; detail=offline")
	expectStatus(t, s.Do("POST", "/cs/gone"), 502, "OFFLINE", "edgelimit; fwd=method; detail=offline")

	if n := edgecache.CacheStatusesChecked.Load() - checked; n < 30 {
		t.Fatalf("%d Cache-Status values checked", n)
	}
}

// TestCacheStatusAfterUpstreamCaches: a Cache-Status from caches behind
// this one comes first (RFC 9211 section 2: the first member is the cache
// closest to the origin), on the MISS and on the hits from the entry; a
// value that is not a valid List is dropped, not passed on with ours.
func TestCacheStatusAfterUpstreamCaches(t *testing.T) {
	clk := e2e.FakeClock(t)
	up := newUpstream(t, api)
	s := startCacheSite(t, `
%ADDR% {
	edge_cache {
		ttl 1m
	}
	reverse_proxy %UPSTREAM%
}`, up)
	origin := "/up/a?cache-status=" + urlEncode(`OriginCache; hit; ttl=1100`)
	expectStatus(t, s.Get(origin), 200, "MISS", "OriginCache; hit; ttl=1100, edgelimit; fwd=uri-miss; stored")
	expectStatus(t, s.Get(origin), 200, "HIT", "OriginCache; hit; ttl=1100, edgelimit; hit; ttl=60")
	clk.Add(15 * time.Second)
	expectStatus(t, s.Get(origin), 200, "HIT", "OriginCache; hit; ttl=1100, edgelimit; hit; ttl=45")

	two := "/up/b?cache-status=" + urlEncode(`"Origin Cache"; fwd=uri-miss; stored, CDN; fwd=stale; fwd-status=304`)
	expectStatus(t, s.Get(two), 200, "MISS", `"Origin Cache"; fwd=uri-miss; stored, CDN; fwd=stale; fwd-status=304, edgelimit; fwd=uri-miss; stored`)
	expectStatus(t, s.Do("POST", two), 200, "DIRECT", `"Origin Cache"; fwd=uri-miss; stored, CDN; fwd=stale; fwd-status=304, edgelimit; fwd=method`)

	for _, bad := range []string{`Origin Cache; hit`, `origin; hit=?2`, `origin;`, `, origin`} {
		path := "/up/bad?cache-status=" + urlEncode(bad)
		expectStatus(t, s.Do("POST", path), 200, "DIRECT", "edgelimit; fwd=method")
	}
}

func urlEncode(s string) string {
	r := strings.NewReplacer("%", "%25", " ", "%20", ";", "%3B", "=", "%3D", ",", "%2C", `"`, "%22", "&", "%26", "+", "%2B")
	return r.Replace(s)
}

// TestCacheStatusOptions: cache_status names the cache (a token as it is,
// other text as a string) or turns Cache-Status off, leaving an upstream's
// as it is; bloom_status off drops Bloom-Status alone.
func TestCacheStatusOptions(t *testing.T) {
	e2e.FakeClock(t)
	up := newUpstream(t, api)
	s := startCacheSite(t, `
%ADDR% {
	route /named/* {
		edge_cache {
			cache_status cdn-3.example.com
		}
	}
	route /quoted/* {
		edge_cache {
			cache_status "Example CDN"
		}
	}
	route /nocs/* {
		edge_cache {
			cache_status off
		}
	}
	route /nobloom/* {
		edge_cache {
			bloom_status off
		}
	}
	handle /err/* {
		edge_cache
		error "short and stout" 418
	}
	reverse_proxy %UPSTREAM%
}`, up)
	// An error for Caddy's error handling to answer: nothing stored.
	expectStatus(t, s.Get("/err/a"), 418, "DIRECT", "edgelimit; fwd=uri-miss; detail=error")
	expectStatus(t, s.Get("/named/a"), 200, "MISS", "cdn-3.example.com; fwd=uri-miss; stored")
	expectStatus(t, s.Get("/named/a"), 200, "HIT", "cdn-3.example.com; hit; ttl=600")
	expectStatus(t, s.Get("/quoted/a"), 200, "MISS", `"Example CDN"; fwd=uri-miss; stored`)
	expectStatus(t, s.Get("/quoted/a"), 200, "HIT", `"Example CDN"; hit; ttl=600`)
	expectStatus(t, s.Get("/nocs/a"), 200, "MISS", "")
	expectStatus(t, s.Get("/nocs/a"), 200, "HIT", "")
	expectStatus(t, s.Get("/nocs/b?cache-status=Origin%3B%20hit"), 200, "MISS", "Origin; hit")
	expectStatus(t, s.Get("/nocs/b?cache-status=Origin%3B%20hit"), 200, "HIT", "Origin; hit")
	expectStatus(t, s.Get("/nobloom/a"), 200, "", "edgelimit; fwd=uri-miss; stored")
	expectStatus(t, s.Get("/nobloom/a"), 200, "", "edgelimit; hit; ttl=600")
	expectStatus(t, s.Do("POST", "/nobloom/a"), 200, "", "edgelimit; fwd=method")
}

// scrape reads the edge_cache series from the admin API's /metrics:
// name{labels} to value.
func scrape(t *testing.T) map[string]float64 {
	t.Helper()
	resp, err := http.Get(fmt.Sprintf("http://localhost:%d/metrics", e2e.AdminPort()))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("/metrics: %d %v", resp.StatusCode, err)
	}
	out := map[string]float64{}
	for line := range strings.SplitSeq(string(b), "\n") {
		if !strings.HasPrefix(line, "caddy_edge_cache_") {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			t.Fatalf("metrics line %q: %v", line, err)
		}
		out[line[:i]] = v
	}
	return out
}

// TestCacheMetrics drives each outcome through a Caddy and reads the
// edge_cache series from its /metrics: exact counts, also for the handler
// that sends no Bloom-Status.
func TestCacheMetrics(t *testing.T) {
	clk := e2e.FakeClock(t)
	var failing atomic.Int32
	up := newUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		if code := failing.Load(); code != 0 {
			w.WriteHeader(int(code))
			return
		}
		api(w, r)
	})
	s := startCacheSite(t, `
%ADDR% {
	handle /off/* {
		edge_cache {
			max_size 1000
			max_memory 5000
			bloom_status off
		}
		reverse_proxy %UPSTREAM%
	}
	handle {
		edge_cache {
			ttl 10s
			max_size 1000
			max_memory 5000
			stale_if_error 1m
		}
		reverse_proxy %UPSTREAM%
	}
}`, up)
	before := scrape(t)
	for _, name := range []string{
		`caddy_edge_cache_responses_total{status="MISS"}`, `caddy_edge_cache_responses_total{status="HIT"}`,
		`caddy_edge_cache_responses_total{status="DIRECT"}`, `caddy_edge_cache_responses_total{status="OFFLINE"}`,
		"caddy_edge_cache_entries", "caddy_edge_cache_bytes", "caddy_edge_cache_evictions_total",
		"caddy_edge_cache_coalesced_total", "caddy_edge_cache_stale_served_total", "caddy_edge_cache_purged_total",
	} {
		if _, ok := before[name]; !ok {
			t.Fatalf("no series %s in %v", name, before)
		}
	}
	if before["caddy_edge_cache_entries"] != 0 || before["caddy_edge_cache_bytes"] != 0 {
		t.Fatalf("entries before any request: %v", before)
	}
	delta := func(name string) float64 { return scrape(t)[name] - before[name] }
	stored := 0
	// Counted without the header.
	expectStatus(t, s.Get("/off/x"), 200, "", "edgelimit; fwd=uri-miss; stored")
	expectStatus(t, s.Get("/off/x"), 200, "", "edgelimit; hit; ttl=600")
	stored++
	expectStatus(t, s.Get("/m/1"), 200, "MISS", "edgelimit; fwd=uri-miss; stored")
	stored++
	for range 3 {
		e2e.Expect(t, s.Get("/m/1"), 200, "Bloom-Status", "HIT")
	}
	for range 2 {
		e2e.Expect(t, s.Do("POST", "/m/1"), 200, "Bloom-Status", "DIRECT")
	}
	e2e.Expect(t, s.Get("/m/p?bloom-response-buckets=metrics_bucket"), 200, "Bloom-Status", "MISS")
	stored++
	if got := scrape(t); got["caddy_edge_cache_entries"] != 3 || got["caddy_edge_cache_bytes"] <= 0 {
		t.Fatalf("entries %v, bytes %v, want 3 and some", got["caddy_edge_cache_entries"], got["caddy_edge_cache_bytes"])
	}
	if code, body := postPurge(t, `{"buckets":["metrics_bucket"]}`); code != 200 || body != `{"purged":1}` {
		t.Fatalf("purge: %d %s", code, body)
	}
	stored--
	// More than max_memory holds: the least recently used go.
	for i := range 20 {
		e2e.Expect(t, s.Get(fmt.Sprintf("/m/e%d", i)), 200, "Bloom-Status", "MISS")
		stored++
	}
	now := scrape(t)
	evicted := now["caddy_edge_cache_evictions_total"] - before["caddy_edge_cache_evictions_total"]
	if evicted <= 0 || now["caddy_edge_cache_entries"]+evicted != float64(stored) {
		t.Fatalf("entries %v and evictions %v, want %d in all", now["caddy_edge_cache_entries"], evicted, stored)
	}
	// A stale copy served while the upstream fails.
	e2e.Expect(t, s.Get("/m/s"), 200, "Bloom-Status", "MISS")
	clk.Add(20 * time.Second)
	failing.Store(502)
	e2e.Expect(t, s.Get("/m/s"), 200, "Bloom-Status", "OFFLINE")
	failing.Store(0)

	for name, want := range map[string]float64{
		`caddy_edge_cache_responses_total{status="MISS"}`:    24,
		`caddy_edge_cache_responses_total{status="HIT"}`:     4,
		`caddy_edge_cache_responses_total{status="DIRECT"}`:  2,
		`caddy_edge_cache_responses_total{status="OFFLINE"}`: 1,
		"caddy_edge_cache_stale_served_total":                1,
		"caddy_edge_cache_purged_total":                      1,
		"caddy_edge_cache_coalesced_total":                   0,
	} {
		if got := delta(name); got != want {
			t.Errorf("%s grew by %v, want %v", name, got, want)
		}
	}
}

// TestCacheMetricsBounded: a thousand distinct URLs (and credentials) add
// no series: no label holds a URL or a key.
func TestCacheMetricsBounded(t *testing.T) {
	e2e.FakeClock(t)
	up := newUpstream(t, api)
	s := startCacheSite(t, `
%ADDR% {
	edge_cache
	reverse_proxy %UPSTREAM%
}`, up)
	s.Get("/bounded/warm-up")
	before := scrape(t)
	deadline := time.Now().Add(2 * time.Minute)
	for i := 0; i < 1000 && time.Now().Before(deadline); i++ {
		s.Get(fmt.Sprintf("/bounded/%d?q=%d", i, i), "Authorization", fmt.Sprintf("Bearer t%d", i))
	}
	after := scrape(t)
	if len(after) != len(before) {
		t.Fatalf("%d series after 1000 URLs, %d before:\n%v", len(after), len(before), after)
	}
	if d := after[`caddy_edge_cache_responses_total{status="MISS"}`] - before[`caddy_edge_cache_responses_total{status="MISS"}`]; d != 1000 {
		t.Fatalf("%v MISSes counted, want 1000", d)
	}
	n := 0
	for name := range after {
		if strings.HasPrefix(name, "caddy_edge_cache_responses_total") {
			n++
		}
	}
	if n != 4 {
		t.Fatalf("%d responses_total series, want 4 (MISS, HIT, DIRECT, OFFLINE)", n)
	}
}
