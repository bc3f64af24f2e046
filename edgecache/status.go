package edgecache

import (
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/dunglas/httpsfv"
	"github.com/edgelimit/caddy-edgelimit/cache"
)

// HeaderCacheStatus is the RFC 9211 response header.
const HeaderCacheStatus = "Cache-Status"

// DefaultCacheStatusName names the cache in Cache-Status.
const DefaultCacheStatusName = "edgelimit"

// The fwd parameter values of RFC 9211 section 2.2 that edge_cache sends.
const (
	fwdBypass   = "bypass"
	fwdMethod   = "method"
	fwdURIMiss  = "uri-miss"
	fwdVaryMiss = "vary-miss"
	fwdMiss     = "miss"
	fwdRequest  = "request"
	fwdStale    = "stale"
)

// verdict is what the cache did for one response: its Bloom-Status, its
// Cache-Status member, and what the metrics count.
type verdict struct {
	st cache.Status
	// fwd says why the request went forward (RFC 9211 fwd); empty for a
	// hit.
	fwd string
	// fwdStatus is the status the next handler answered, when the client
	// gets another one (a 304 made here from a 200, a stale copy instead
	// of a 502); 0 otherwise.
	fwdStatus int
	stored    bool
	// collapsed: 1 when the response is another request's fetch, -1 when
	// the request waited for one and then went forward itself.
	collapsed int8
	hasTTL    bool
	ttl       int64
	// detail is a token: why a response was not stored, or that the
	// upstream was offline.
	detail string
	// background: the response goes to no client (a background fetch),
	// so it is not counted among the responses.
	background bool
}

// member writes the Cache-Status member of v for the cache named item (a
// serialized sf-token or sf-string).
func (v *verdict) member(item string) string {
	b := make([]byte, 0, 96)
	b = append(b, item...)
	if v.fwd == "" {
		b = append(b, "; hit"...)
	} else {
		b = append(b, "; fwd="...)
		b = append(b, v.fwd...)
		if v.fwdStatus != 0 {
			b = append(b, "; fwd-status="...)
			b = strconv.AppendInt(b, int64(v.fwdStatus), 10)
		}
		if v.stored {
			b = append(b, "; stored"...)
		}
		switch v.collapsed {
		case 1:
			b = append(b, "; collapsed"...)
		case -1:
			b = append(b, "; collapsed=?0"...)
		}
	}
	if v.hasTTL {
		b = append(b, "; ttl="...)
		b = strconv.AppendInt(b, v.ttl, 10)
	}
	if v.detail != "" {
		b = append(b, "; detail="...)
		b = append(b, v.detail...)
	}
	return string(b)
}

// withUpstream returns the Cache-Status value that carries member after
// the members of the caches behind this one, from vals (the upstream's
// field lines): RFC 9211 section 2 lists the cache closest to the origin
// first and asks each cache to keep what is there. Values that are not a
// valid List are dropped, as they would make recipients ignore the whole
// field (RFC 8941 section 4.2), ours with it.
func withUpstream(vals []string, member string) string {
	prev := upstreamStatus(vals)
	if prev == "" {
		return member
	}
	return prev + ", " + member
}

// upstreamStatus joins the upstream's Cache-Status field lines into one
// List, or returns "" when they are empty or not a valid List.
func upstreamStatus(vals []string) string {
	if len(vals) == 0 {
		return ""
	}
	joined := strings.TrimSpace(strings.Join(vals, ", "))
	if joined == "" {
		return ""
	}
	if _, err := httpsfv.UnmarshalList([]string{joined}); err != nil {
		return ""
	}
	return joined
}

// settle puts the verdict's headers on h (Bloom-Status, Cache-Status after
// any upstream member, each unless turned off) and counts the response.
func (c *Handler) settle(h http.Header, v verdict) {
	if !c.BloomStatusOff {
		h[cache.HeaderStatus] = []string{v.st.String()}
	}
	if c.statusItem != "" {
		h[HeaderCacheStatus] = []string{withUpstream(h[HeaderCacheStatus], v.member(c.statusItem))}
	}
	if !v.background {
		countResponse(v.st)
	}
}

// ttlOf is the entry's remaining freshness lifetime in whole seconds at
// the given age, negative once stale: with Age, it adds up to the
// lifetime.
func ttlOf(e *cache.Entry, age int64) int64 {
	return int64(e.TTL/time.Second) - age
}

// hitMemo returns the Age value and Cache-Status value of a plain hit on
// e at now, formatted once per second of the entry's age and shared by the
// hits within it (so that a hit allocates nothing for them).
func (c *Handler) hitMemo(e *cache.Entry, now time.Time) *cache.HitMemo {
	age := e.Age(now)
	if m := e.HitMemo(); m != nil && m.Age == age && m.Tag == c.statusItem {
		return m
	}
	m := &cache.HitMemo{Age: age, Tag: c.statusItem, AgeValue: strconv.FormatInt(age, 10)}
	if c.statusItem != "" {
		v := verdict{st: cache.Hit, hasTTL: true, ttl: ttlOf(e, age)}
		m.Status = withUpstream(e.Header[HeaderCacheStatus], v.member(c.statusItem))
	}
	e.SetHitMemo(m)
	return m
}
