package edgecache_test

import (
	"io"
	"net/http"
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
	reverse_proxy %UPSTREAM%
}`, up)
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
