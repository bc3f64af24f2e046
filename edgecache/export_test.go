package edgecache

import (
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"

	"github.com/edgelimit/caddy-edgelimit/cache"
)

// CacheStatusesChecked counts the Cache-Status values CheckCacheStatus
// has read, across the tests of this binary.
var CacheStatusesChecked atomic.Int64

// ourNames are the cache names the tests configure: the Cache-Status
// members of other caches are only checked as RFC 8941 List members.
var ourNames = []string{DefaultCacheStatusName, "cdn-3.example.com", `"Example CDN"`}

// CheckCacheStatus reads the Cache-Status of a response edge_cache
// answered as RFC 9211 and RFC 8941 define it, strictly: the field lines
// joined are a List; the last member (ours) is a Token or String and
// carries only RFC 9211 parameters, with their types, hit or fwd but not
// both, and the fwd values of RFC 9211 section 2.2; and it agrees with
// Bloom-Status when both are there. A response without Cache-Status
// passes.
func CheckCacheStatus(h http.Header) error {
	vals := h.Values(HeaderCacheStatus)
	if len(vals) == 0 {
		return nil
	}
	CacheStatusesChecked.Add(1)
	joined := strings.Join(vals, ", ")
	list, err := cache.ParseSFList(joined)
	if err != nil {
		return fmt.Errorf("Cache-Status %q: %v", joined, err)
	}
	if len(list) == 0 {
		return fmt.Errorf("Cache-Status %q: empty", joined)
	}
	for _, m := range list {
		if !cache.IsSFToken(m.Item) && !strings.HasPrefix(m.Item, `"`) {
			return fmt.Errorf("Cache-Status %q: member %q names no cache (want a token or a string)", joined, m.Item)
		}
	}
	ours := list[len(list)-1]
	if !slices.Contains(ourNames, ours.Item) {
		return nil
	}
	isBool := func(v string) bool { return v == "?1" || v == "?0" }
	isInt := func(v string) bool { _, err := strconv.ParseInt(v, 10, 64); return err == nil }
	for _, p := range ours.Params {
		ok := false
		switch p.Key {
		case "hit", "stored", "collapsed":
			ok = isBool(p.Value)
		case "fwd":
			ok = slices.Contains([]string{"bypass", "method", "uri-miss", "vary-miss", "miss", "request", "stale", "partial"}, p.Value)
		case "fwd-status":
			n, err := strconv.Atoi(p.Value)
			ok = err == nil && n >= 100 && n <= 999
		case "ttl":
			ok = isInt(p.Value)
		case "key":
			ok = strings.HasPrefix(p.Value, `"`)
		case "detail":
			ok = cache.IsSFToken(p.Value) || strings.HasPrefix(p.Value, `"`)
		}
		if !ok {
			return fmt.Errorf("Cache-Status %q: parameter %s=%s is not RFC 9211's", joined, p.Key, p.Value)
		}
	}
	hit, isHit := ours.Param("hit")
	fwd, isFwd := ours.Param("fwd")
	if isHit == isFwd || isHit && hit != "?1" {
		return fmt.Errorf("Cache-Status %q: want either hit or fwd", joined)
	}
	_, stored := ours.Param("stored")
	collapsed, isCollapsed := ours.Param("collapsed")
	switch bloom := h.Get(cache.HeaderStatus); bloom {
	case "":
	case "HIT":
		if !isHit && !(isCollapsed && collapsed == "?1") {
			return fmt.Errorf("Cache-Status %q with Bloom-Status HIT", joined)
		}
	case "MISS":
		if !stored || fwd == "" {
			return fmt.Errorf("Cache-Status %q with Bloom-Status MISS", joined)
		}
	case "DIRECT", "OFFLINE":
		if !isFwd || stored {
			return fmt.Errorf("Cache-Status %q with Bloom-Status %s", joined, bloom)
		}
	default:
		return fmt.Errorf("Bloom-Status %q", bloom)
	}
	return nil
}
