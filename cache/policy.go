package cache

import (
	"net/http"
	"strconv"
	"strings"
	"time"
)

// Defaults of a Policy, as Bloom's: 600 s for an entry, 30 days at most,
// bodies up to 256000 bytes.
const (
	DefaultTTL     = 10 * time.Minute
	DefaultMaxTTL  = 30 * 24 * time.Hour
	DefaultMaxSize = 256_000
)

// Bounds on what an upstream may ask for, so that a hostile or broken
// response cannot make an entry expensive to index.
const (
	// MaxBuckets is the most buckets one entry may be tagged with.
	MaxBuckets = 64
	// MaxBucketLen is the longest bucket name, in bytes.
	MaxBucketLen = 512
	// MaxVary is the most request headers a response may vary on.
	MaxVary = 16
)

// Policy decides which responses are stored and for how long.
type Policy struct {
	// TTL is the lifetime of an entry when the upstream gives none.
	// Default DefaultTTL.
	TTL time.Duration
	// MaxTTL caps every lifetime, whether from Bloom-Response-TTL or
	// Cache-Control, and every stale-while-revalidate window. Default
	// DefaultMaxTTL.
	MaxTTL time.Duration
	// StaleWhileRevalidate is how long past its lifetime an entry is
	// served while it is refreshed in the background, when the upstream
	// says nothing (RFC 5861: Cache-Control stale-while-revalidate).
	// Default 0: none.
	StaleWhileRevalidate time.Duration
}

func (p *Policy) ttl() time.Duration {
	if p.TTL > 0 {
		return p.TTL
	}
	return DefaultTTL
}

func (p *Policy) maxTTL() time.Duration {
	if p.MaxTTL > 0 {
		return p.MaxTTL
	}
	return DefaultMaxTTL
}

// Decision is the verdict on one response.
type Decision struct {
	// Store tells whether the response may be stored.
	Store bool
	// TTL is how long the entry is fresh.
	TTL time.Duration
	// SWR is how long past TTL the entry may be served while it is
	// refreshed in the background (stale-while-revalidate).
	SWR time.Duration
	// Buckets are the tags from Bloom-Response-Buckets.
	Buckets []string
	// Shared tells that the upstream said the response may be shared
	// between users (Cache-Control public or s-maxage): it may be stored
	// for, and served to, a request that carries a user's credentials.
	Shared bool
	// Reason says why a response is not stored, for logs.
	Reason string
	// Detail is Reason as a short RFC 8941 Token, for the detail
	// parameter of Cache-Status: status, ignore, no-store, private,
	// no-cache, set-cookie, vary, buckets or ttl-zero.
	Detail string
}

// CacheableStatus tells whether a response status may be stored: Bloom's
// list, less 417 (Expectation Failed) and 431 (Request Header Fields Too
// Large), which answer request headers that are not in the key: one
// client's odd Expect or oversized header would otherwise serve everyone
// the error.
func CacheableStatus(code int) bool {
	switch code {
	case 200, 203, 204, 205, 206, 207, 208,
		300, 301, 302, 303, 308,
		401, 402, 403, 404, 405, 410, 414, 415, 416, 418, 423, 424, 428,
		501, 510:
		return true
	}
	return false
}

// Decide tells whether a response to a GET or OPTIONS request, with this
// status and these headers, may be stored, and for how long.
//
// Not stored: a status outside Bloom's list; Bloom-Response-Ignore (any
// value but 0); Cache-Control no-store, private or no-cache (this cache
// does not revalidate); Set-Cookie (a cookie must never be handed to
// another client); Vary: * or a Vary on more than MaxVary headers; more
// than MaxBuckets buckets or a longer name than MaxBucketLen (a purge
// could then miss the entry); a lifetime of zero.
//
// The lifetime is Bloom-Response-TTL in seconds if given and valid, else
// Cache-Control s-maxage, else max-age, else the policy's TTL; each capped
// by MaxTTL. The stale-while-revalidate window is the upstream's
// (Cache-Control stale-while-revalidate=N, RFC 5861) if given, else the
// policy's; capped by MaxTTL; none when the upstream says must-revalidate
// or proxy-revalidate, which forbid serving the response stale (RFC 9111,
// 4.2.4).
func (p *Policy) Decide(status int, h http.Header) Decision {
	if !CacheableStatus(status) {
		return Decision{Reason: "status " + strconv.Itoa(status) + " is not cacheable", Detail: "status"}
	}
	if v, ok := h[HeaderIgnore]; ok && !(len(v) == 1 && strings.TrimSpace(v[0]) == "0") {
		return Decision{Reason: "Bloom-Response-Ignore", Detail: "ignore"}
	}
	cc := parseCacheControl(h["Cache-Control"])
	switch {
	case cc.noStore:
		return Decision{Reason: "Cache-Control: no-store", Detail: "no-store"}
	case cc.private:
		return Decision{Reason: "Cache-Control: private", Detail: "private"}
	case cc.noCache:
		return Decision{Reason: "Cache-Control: no-cache", Detail: "no-cache"}
	}
	if _, ok := h["Set-Cookie"]; ok {
		return Decision{Reason: "Set-Cookie", Detail: "set-cookie"}
	}
	if _, ok := VaryNames(h); !ok {
		return Decision{Reason: "Vary: * or too many Vary headers", Detail: "vary"}
	}
	buckets, ok := parseBuckets(h[HeaderBuckets])
	if !ok {
		return Decision{Reason: "too many or too long Bloom-Response-Buckets", Detail: "buckets"}
	}
	ttl := p.ttl()
	switch t, ok := parseSeconds(h[HeaderTTL]); {
	case ok:
		ttl = t
	case cc.sMaxAge >= 0:
		ttl = time.Duration(cc.sMaxAge) * time.Second
	case cc.maxAge >= 0:
		ttl = time.Duration(cc.maxAge) * time.Second
	}
	ttl = min(ttl, p.maxTTL())
	if ttl <= 0 {
		return Decision{Reason: "a lifetime of zero", Detail: "ttl-zero"}
	}
	swr := p.StaleWhileRevalidate
	switch {
	case cc.mustRevalidate:
		swr = 0
	case cc.swr >= 0:
		swr = time.Duration(cc.swr) * time.Second
	}
	swr = max(min(swr, p.maxTTL()), 0)
	return Decision{Store: true, TTL: ttl, SWR: swr, Buckets: buckets, Shared: cc.public || cc.sMaxAge > 0}
}

// cacheControl holds the directives of Cache-Control that matter here;
// ages are -1 when absent. mustRevalidate stands for must-revalidate and
// proxy-revalidate, which mean the same to a shared cache.
type cacheControl struct {
	noStore, private, noCache, public, mustRevalidate bool
	maxAge, sMaxAge, swr                              int64
}

func parseCacheControl(vals []string) cacheControl {
	cc := cacheControl{maxAge: -1, sMaxAge: -1, swr: -1}
	for _, line := range vals {
		for len(line) > 0 {
			var item string
			item, line = nextDirective(line)
			name, value, _ := strings.Cut(item, "=")
			name = strings.TrimSpace(name)
			value = strings.Trim(strings.TrimSpace(value), `"`)
			switch {
			case strings.EqualFold(name, "no-store"):
				cc.noStore = true
			case strings.EqualFold(name, "private"):
				cc.private = true
			case strings.EqualFold(name, "no-cache"):
				cc.noCache = true
			case strings.EqualFold(name, "public"):
				cc.public = true
			// An invalid age (-1, abc) makes the response stale, as RFC 9111
			// (5.2.2.1) asks: it is not stored, rather than kept for the
			// default TTL.
			case strings.EqualFold(name, "max-age"):
				cc.maxAge = ageOrStale(value)
			case strings.EqualFold(name, "s-maxage"):
				cc.sMaxAge = ageOrStale(value)
			case strings.EqualFold(name, "must-revalidate"), strings.EqualFold(name, "proxy-revalidate"):
				cc.mustRevalidate = true
			// An invalid window grants nothing (RFC 5861 gives no other
			// reading), rather than the operator's default.
			case strings.EqualFold(name, "stale-while-revalidate"):
				cc.swr = 0
				if n, ok := parseAge(value); ok {
					cc.swr = n
				}
			}
		}
	}
	return cc
}

// nextDirective splits off the first comma-separated directive, keeping
// commas inside a quoted value (private="a, b").
func nextDirective(s string) (string, string) {
	quoted := false
	for i := 0; i < len(s); i++ {
		switch s[i] {
		case '"':
			quoted = !quoted
		case ',':
			if !quoted {
				return s[:i], s[i+1:]
			}
		}
	}
	return s, ""
}

// maxSeconds bounds parsed lifetimes so that converting them to a Duration
// cannot overflow; MaxTTL caps them further.
const maxSeconds = int64(100 * 365 * 24 * 3600)

// parseAge reads a delta-seconds value; a huge one is clamped, as RFC 9111
// asks.
func parseAge(s string) (int64, bool) {
	if s == "" {
		return 0, false
	}
	var n int64
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c < '0' || c > '9' {
			return 0, false
		}
		if n < maxSeconds {
			n = n*10 + int64(c-'0')
		}
	}
	return min(n, maxSeconds), true
}

// ageOrStale is a delta-seconds value, or 0 (stale) when it is invalid.
func ageOrStale(s string) int64 {
	if n, ok := parseAge(s); ok {
		return n
	}
	return 0
}

// parseSeconds reads Bloom-Response-TTL: whole seconds, zero or more.
func parseSeconds(vals []string) (time.Duration, bool) {
	if len(vals) != 1 {
		return 0, false
	}
	n, ok := parseAge(strings.TrimSpace(vals[0]))
	if !ok {
		return 0, false
	}
	return time.Duration(n) * time.Second, true
}

// parseBuckets reads Bloom-Response-Buckets: comma-separated names, blanks
// dropped, duplicates once. ok is false when the list is beyond the bounds.
func parseBuckets(vals []string) ([]string, bool) {
	var out []string
	for _, line := range vals {
		for part := range strings.SplitSeq(line, ",") {
			name := strings.TrimSpace(part)
			if name == "" {
				continue
			}
			if len(name) > MaxBucketLen {
				return nil, false
			}
			dup := false
			for _, o := range out {
				if o == name {
					dup = true
					break
				}
			}
			if !dup {
				if len(out) == MaxBuckets {
					return nil, false
				}
				out = append(out, name)
			}
		}
	}
	return out, true
}

// VaryNames returns the request headers a response varies on, canonical;
// ok is false for Vary: * and for more than MaxVary names.
func VaryNames(h http.Header) (names []string, ok bool) {
	for _, line := range h["Vary"] {
		for part := range strings.SplitSeq(line, ",") {
			name := strings.TrimSpace(part)
			switch name {
			case "":
				continue
			case "*":
				return nil, false
			}
			name = http.CanonicalHeaderKey(name)
			dup := false
			for _, n := range names {
				if n == name {
					dup = true
					break
				}
			}
			if dup {
				continue
			}
			if len(names) == MaxVary {
				return nil, false
			}
			names = append(names, name)
		}
	}
	return names, true
}
