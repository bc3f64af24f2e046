package cache

import (
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/dunglas/httpsfv"
)

// bloomStatuses is the list of the issue and of Bloom's README, less 417
// and 431: they answer request headers that are not in the key.
var bloomStatuses = []int{200, 203, 204, 205, 206, 207, 208, 300, 301, 302, 303, 308,
	401, 402, 403, 404, 405, 410, 414, 415, 416, 418, 423, 424, 428, 501, 510}

func TestCacheableStatusIsBloomsList(t *testing.T) {
	var got []int
	for code := 100; code < 1000; code++ {
		if CacheableStatus(code) {
			got = append(got, code)
		}
	}
	if !slices.Equal(got, bloomStatuses) {
		t.Fatalf("cacheable statuses %v\nwant %v", got, bloomStatuses)
	}
}

func TestCacheableMethod(t *testing.T) {
	for _, m := range []string{"GET", "HEAD", "OPTIONS"} {
		if !CacheableMethod(m) {
			t.Errorf("%s not cacheable", m)
		}
	}
	for _, m := range []string{"POST", "PUT", "PATCH", "DELETE", "CONNECT", "TRACE", "get", ""} {
		if CacheableMethod(m) {
			t.Errorf("%s cacheable", m)
		}
	}
}

func hdr(pairs ...string) http.Header {
	h := http.Header{}
	for i := 0; i+1 < len(pairs); i += 2 {
		h.Add(pairs[i], pairs[i+1])
	}
	return h
}

func TestDecide(t *testing.T) {
	p := Policy{TTL: time.Minute, MaxTTL: time.Hour}
	cases := []struct {
		name    string
		status  int
		h       http.Header
		store   bool
		ttl     time.Duration
		buckets []string
	}{
		{"plain 200", 200, hdr(), true, time.Minute, nil},
		{"404", 404, hdr(), true, time.Minute, nil},
		{"500", 500, hdr(), false, 0, nil},
		{"429", 429, hdr(), false, 0, nil},
		{"304", 304, hdr(), false, 0, nil},
		{"ignore", 200, hdr("Bloom-Response-Ignore", "1"), false, 0, nil},
		{"ignore any value", 200, hdr("Bloom-Response-Ignore", "yes"), false, 0, nil},
		{"ignore 0", 200, hdr("Bloom-Response-Ignore", "0"), true, time.Minute, nil},
		{"no-store", 200, hdr("Cache-Control", "no-store"), false, 0, nil},
		{"NO-STORE", 200, hdr("Cache-Control", "public, NO-STORE"), false, 0, nil},
		{"private", 200, hdr("Cache-Control", "max-age=60, private"), false, 0, nil},
		{"private fields", 200, hdr("Cache-Control", `private="Set-Cookie, X-A", max-age=5`), false, 0, nil},
		{"no-cache", 200, hdr("Cache-Control", "no-cache"), false, 0, nil},
		{"second line", 200, hdr("Cache-Control", "public", "Cache-Control", "no-store"), false, 0, nil},
		{"set-cookie", 200, hdr("Set-Cookie", "s=1"), false, 0, nil},
		{"vary star", 200, hdr("Vary", "Accept, *"), false, 0, nil},
		{"vary", 200, hdr("Vary", "accept-encoding"), true, time.Minute, nil},
		{"vary too many", 200, hdr("Vary", manyNames(MaxVary+1)), false, 0, nil},
		{"ttl header", 200, hdr("Bloom-Response-TTL", "30"), true, 30 * time.Second, nil},
		{"ttl header beats max-age", 200, hdr("Bloom-Response-TTL", "30", "Cache-Control", "max-age=90"), true, 30 * time.Second, nil},
		{"ttl header capped", 200, hdr("Bloom-Response-TTL", "86400"), true, time.Hour, nil},
		{"ttl header huge", 200, hdr("Bloom-Response-TTL", "999999999999999999999999"), true, time.Hour, nil},
		{"ttl header zero", 200, hdr("Bloom-Response-TTL", "0"), false, 0, nil},
		{"ttl header invalid", 200, hdr("Bloom-Response-TTL", "soon", "Cache-Control", "max-age=90"), true, 90 * time.Second, nil},
		{"ttl header negative", 200, hdr("Bloom-Response-TTL", "-5"), true, time.Minute, nil},
		{"s-maxage beats max-age", 200, hdr("Cache-Control", "max-age=90, s-maxage=120"), true, 120 * time.Second, nil},
		{"max-age", 200, hdr("Cache-Control", "public, max-age=90"), true, 90 * time.Second, nil},
		{"max-age quoted", 200, hdr("Cache-Control", `max-age="45"`), true, 45 * time.Second, nil},
		{"max-age capped", 200, hdr("Cache-Control", "max-age=7200"), true, time.Hour, nil},
		{"max-age zero", 200, hdr("Cache-Control", "max-age=0"), false, 0, nil},
		{"max-age invalid is stale", 200, hdr("Cache-Control", "max-age=abc"), false, 0, nil},
		{"max-age negative is stale", 200, hdr("Cache-Control", "max-age=-1"), false, 0, nil},
		{"s-maxage invalid is stale", 200, hdr("Cache-Control", "max-age=90, s-maxage=soon"), false, 0, nil},
		{"buckets", 200, hdr("Bloom-Response-Buckets", "user_id:10012, heavy_route:1203,, user_id:10012"), true, time.Minute, []string{"user_id:10012", "heavy_route:1203"}},
		{"buckets two lines", 200, hdr("Bloom-Response-Buckets", "a", "Bloom-Response-Buckets", "b"), true, time.Minute, []string{"a", "b"}},
		{"bucket too long", 200, hdr("Bloom-Response-Buckets", strings.Repeat("x", MaxBucketLen+1)), false, 0, nil},
		{"too many buckets", 200, hdr("Bloom-Response-Buckets", strings.Repeat("b,", MaxBuckets)+strings.Repeat("c", 1)+","+manyNames(MaxBuckets)), false, 0, nil},
	}
	for _, c := range cases {
		d := p.Decide(c.status, c.h)
		if d.Store != c.store || d.TTL != c.ttl || !slices.Equal(d.Buckets, c.buckets) {
			t.Errorf("%s: store %v ttl %v buckets %q (%s), want %v %v %q", c.name, d.Store, d.TTL, d.Buckets, d.Reason, c.store, c.ttl, c.buckets)
		}
		if _, err := httpsfv.Marshal(httpsfv.NewItem(httpsfv.Token(d.Detail))); !d.Store && err != nil {
			t.Errorf("%s: detail %q is not a token", c.name, d.Detail)
		}
		if !d.Store && d.Reason == "" {
			t.Errorf("%s: no reason given", c.name)
		}
	}
}

// TestDecideStaleWhileRevalidate: the upstream's window (RFC 5861) beats
// the policy's default; must-revalidate and proxy-revalidate forbid one;
// MaxTTL caps it.
func TestDecideStaleWhileRevalidate(t *testing.T) {
	p := Policy{TTL: time.Minute, MaxTTL: time.Hour, StaleWhileRevalidate: 5 * time.Minute}
	none := Policy{TTL: time.Minute, MaxTTL: time.Hour}
	for _, c := range []struct {
		name string
		p    Policy
		h    http.Header
		swr  time.Duration
	}{
		{"default", p, hdr(), 5 * time.Minute},
		{"no default", none, hdr(), 0},
		{"upstream", none, hdr("Cache-Control", "max-age=10, stale-while-revalidate=30"), 30 * time.Second},
		{"upstream beats default", p, hdr("Cache-Control", "max-age=10, Stale-While-Revalidate=30"), 30 * time.Second},
		{"upstream zero", p, hdr("Cache-Control", "max-age=10, stale-while-revalidate=0"), 0},
		{"upstream invalid", p, hdr("Cache-Control", "max-age=10, stale-while-revalidate=soon"), 0},
		{"upstream quoted", none, hdr("Cache-Control", `stale-while-revalidate="20"`), 20 * time.Second},
		{"capped", none, hdr("Cache-Control", "stale-while-revalidate=86400"), time.Hour},
		{"must-revalidate", p, hdr("Cache-Control", "max-age=10, must-revalidate"), 0},
		{"must-revalidate beats upstream", p, hdr("Cache-Control", "must-revalidate, stale-while-revalidate=30"), 0},
		{"proxy-revalidate", p, hdr("Cache-Control", "s-maxage=10, proxy-revalidate"), 0},
	} {
		if d := c.p.Decide(200, c.h); !d.Store || d.SWR != c.swr {
			t.Errorf("%s: store %v, window %v, want %v", c.name, d.Store, d.SWR, c.swr)
		}
	}
}

func manyNames(n int) string {
	var b strings.Builder
	for i := range n {
		b.WriteString("n")
		b.WriteString(strings.Repeat("x", i))
		b.WriteString(",")
	}
	return b.String()
}

func TestDecideDefaults(t *testing.T) {
	var p Policy
	if d := p.Decide(200, hdr()); d.TTL != DefaultTTL {
		t.Fatalf("default ttl %v", d.TTL)
	}
	if d := p.Decide(200, hdr("Bloom-Response-TTL", "999999999")); d.TTL != DefaultMaxTTL {
		t.Fatalf("default cap %v", d.TTL)
	}
}

func TestControlHeaders(t *testing.T) {
	h := hdr("Bloom-Response-Ignore", "1", "Bloom-Response-TTL", "5", "Bloom-Response-Buckets", "a",
		"Bloom-Status", "HIT", "Content-Type", "text/plain", "X-Bloom", "kept")
	StripControl(h)
	if len(h) != 2 || h.Get("Content-Type") == "" || h.Get("X-Bloom") == "" {
		t.Fatalf("after StripControl: %v", h)
	}
}
