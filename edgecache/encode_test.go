package edgecache_test

import (
	"compress/gzip"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp/encode"

	"github.com/edgelimit/caddy-edgelimit/cache"
	"github.com/edgelimit/caddy-edgelimit/internal/e2e"
)

// The Accept-Encoding values of ordinary clients.
const (
	chrome = "gzip, deflate, br, zstd"
	curl   = "deflate, gzip"
)

// rawClient sends Accept-Encoding as given ("" for none) and never
// decompresses, as a client that asks for a coding does.
type rawClient struct {
	t    *testing.T
	base string
	c    *http.Client
}

func newRawClient(t *testing.T, s *e2e.Site) *rawClient {
	tr := &http.Transport{DisableCompression: true}
	t.Cleanup(tr.CloseIdleConnections)
	return &rawClient{t: t, base: s.Base, c: &http.Client{Transport: checkStatus{t: t, base: tr}, Timeout: 30 * time.Second}}
}

// get returns the response's Bloom-Status, and checks that its coding is
// one the request accepts.
func (c *rawClient) get(path, ae string) string {
	c.t.Helper()
	req, _ := http.NewRequest(http.MethodGet, c.base+path, nil)
	if ae != "" {
		req.Header.Set("Accept-Encoding", ae)
	}
	resp, err := c.c.Do(req)
	if err != nil {
		c.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 || len(b) == 0 {
		c.t.Fatalf("GET %s with %q: %d, %d bytes", path, ae, resp.StatusCode, len(b))
	}
	if ce := resp.Header.Get("Content-Encoding"); ce != "" && !strings.Contains(strings.ToLower(ae), ce) {
		c.t.Fatalf("GET %s with Accept-Encoding %q: Content-Encoding %q", path, ae, ce)
	}
	return resp.Header.Get("Bloom-Status")
}

// TestCacheWithEncodeKeepsItsHits: with encode in front of reverse_proxy,
// each Accept-Encoding spelling replaced the one entry of its URL
// (fwd=vary-miss): a victim's hit rate fell from 19/20 to 0/20 while an
// attacker alternated spellings, and to 0/20 with three ordinary clients
// (Chrome, curl, none). Accept-Encoding selects a variant by the codings it
// accepts, and a URL keeps one entry per variant.
func TestCacheWithEncodeKeepsItsHits(t *testing.T) {
	e2e.FakeClock(t)
	up := newUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		if !strings.HasPrefix(r.URL.Path, "/self/") {
			api(w, r)
			return
		}
		// An upstream that compresses itself.
		w.Header().Set("Vary", "Accept-Encoding")
		body := strings.Repeat("x", 2000)
		if !strings.Contains(r.Header.Get("Accept-Encoding"), "gzip") {
			_, _ = io.WriteString(w, body)
			return
		}
		w.Header().Set("Content-Encoding", "gzip")
		zw := gzip.NewWriter(w)
		_, _ = io.WriteString(zw, body)
		_ = zw.Close()
	})
	s := startCacheSite(t, `
%ADDR% {
	handle /self/* {
		edge_cache
		reverse_proxy %UPSTREAM%
	}
	handle /gzip/* {
		encode gzip
		edge_cache
		reverse_proxy %UPSTREAM%
	}
	handle /default/* {
		edge_cache
		encode
		reverse_proxy %UPSTREAM%
	}
	handle /route/* {
		route {
			encode zstd gzip
			edge_cache
			reverse_proxy %UPSTREAM%
		}
	}
}`, up)
	c := newRawClient(t, s)
	attacker := []string{"gzip", "GZIP", "gzip;q=1.0", curl, "br", "identity", "x-gzip", "gzip, made-up", "zstd", "br, gzip", ""}
	for _, site := range []string{"/gzip", "/default", "/route", "/self"} {
		t.Run(site, func(t *testing.T) {
			c.t = t
			victim := site + "/victim?size=2000"
			hits := 0
			for i := range 20 {
				if c.get(victim, chrome) == "HIT" {
					hits++
				}
				c.get(victim, attacker[i%len(attacker)])
			}
			if hits != 19 {
				t.Errorf("the victim hit %d of 20 times while an attacker alternated encodings", hits)
			}
			shared := site + "/shared?size=2000"
			got := map[string]int{}
			for range 20 {
				for _, ae := range []string{chrome, curl, ""} {
					if c.get(shared, ae) == "HIT" {
						got[ae]++
					}
				}
			}
			// Each misses once at most (under /route/, the one entry has no
			// Vary: encode compresses after the cache).
			for _, ae := range []string{chrome, curl, ""} {
				if got[ae] < 19 {
					t.Errorf("Accept-Encoding %q hit %d of 20 times beside two other ordinary clients", ae, got[ae])
				}
			}
		})
	}
	// The cache asked the upstream once per variant.
	if n := up.count("GET /gzip/shared?size=2000"); n != 3 {
		t.Errorf("the upstream saw %d requests for 60 of three clients", n)
	}
}

// TestAcceptedCodingsAgreesWithEncode: the cache reads Accept-Encoding as
// Caddy's encode does (which codings a request accepts), for every
// spelling but "*", which encode never compresses for and the cache
// expands as RFC 9110 says.
func TestAcceptedCodingsAgreesWithEncode(t *testing.T) {
	known := []string{"br", "compress", "deflate", "gzip", "zstd"}
	for _, ae := range []string{
		chrome, curl, "gzip", "GZIP", "gzip;q=1.0", "gzip ; q=0.5", "x-gzip", "gzip, made-up", "br, gzip;q=0",
		"gzip;q=0", "gzip;q=0.000001", "gzip;q=abc", "gzip;q=2", "identity", "", "zstd;q=0.1, br;q=0.9",
		" br\t,\tgzip ", "br;foo=bar;q=0", "br;q=0;foo=bar", "gzip,,deflate", "compress;q=0.5, x-gzip",
	} {
		r := httptest.NewRequest(http.MethodGet, "/", nil)
		r.Header.Set("Accept-Encoding", ae)
		var want []string
		for _, name := range encode.AcceptedEncodings(r, nil) {
			name = strings.TrimPrefix(name, "x-")
			if slices.Contains(known, name) && !slices.Contains(want, name) {
				want = append(want, name)
			}
		}
		// The last word on a coding wins for the cache; encode keeps every
		// mention with its weight: the two agree where a coding is named
		// once or with one weight, as here.
		slices.Sort(want)
		w := strings.Join(want, ",")
		if w == "" {
			w = "identity"
		}
		if got := cache.AcceptedCodings([]string{ae}); got != w {
			t.Errorf("Accept-Encoding %q: the cache reads %q, encode %q", ae, got, w)
		}
	}
}

// TestVariantOnlyInACodingItsRequestAccepts: an upstream that compresses
// itself and reads Accept-Encoding as a substring ("gzip" in "gzipx" or in
// "gzip;q=0") answered an attacker's request with gzip, and the cache,
// which reads those as accepting no coding, stored it as the identity
// variant: a client asking for identity got the gzip body as a HIT. A
// response that varies on Accept-Encoding is stored only in codings its
// request accepts; the others are served and not stored.
func TestVariantOnlyInACodingItsRequestAccepts(t *testing.T) {
	e2e.FakeClock(t)
	up := newUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Vary", "Accept-Encoding")
		w.Header().Set("Cache-Control", "max-age=600")
		body := strings.Repeat("x", 2000)
		if !strings.Contains(r.Header.Get("Accept-Encoding"), "gzip") {
			_, _ = io.WriteString(w, body)
			return
		}
		w.Header().Set("Content-Encoding", "gzip")
		zw := gzip.NewWriter(w)
		_, _ = io.WriteString(zw, body)
		_ = zw.Close()
	})
	s := startCacheSite(t, `
%ADDR% {
	edge_cache
	reverse_proxy %UPSTREAM%
}`, up)
	c := newRawClient(t, s)
	for i, attack := range []string{"gzipx", "gzip;q=0", "x-gzip;q=0, br"} {
		path := "/poison" + string(rune('a'+i))
		send := func(ae string) (string, string) {
			req, _ := http.NewRequest(http.MethodGet, s.Base+path, nil)
			if ae != "" {
				req.Header.Set("Accept-Encoding", ae)
			}
			resp, err := c.c.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			_, _ = io.Copy(io.Discard, resp.Body)
			_ = resp.Body.Close()
			return resp.Header.Get("Content-Encoding"), resp.Header.Get("Bloom-Status")
		}
		send(attack)
		for _, victim := range []string{"identity", "br"} {
			if ce, st := send(victim); ce != "" {
				t.Errorf("after %q, a client asking for %q got Content-Encoding %q (%s)", attack, victim, ce, st)
			}
		}
		// The victims' own variant is stored and hit.
		if _, st := send("identity"); st != "HIT" {
			t.Errorf("after %q, identity's own variant: %s", attack, st)
		}
	}
}
