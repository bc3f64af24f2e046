package edgecache

import (
	"fmt"
	"net/http"
	"slices"
	"strings"
	"sync/atomic"

	"github.com/dunglas/httpsfv"
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
	list, err := httpsfv.UnmarshalList([]string{joined})
	if err != nil {
		return fmt.Errorf("Cache-Status %q: %v", joined, err)
	}
	if len(list) == 0 {
		return fmt.Errorf("Cache-Status %q: empty", joined)
	}
	var ours httpsfv.Item
	for _, m := range list {
		it, ok := m.(httpsfv.Item)
		if ok {
			switch it.Value.(type) {
			case httpsfv.Token, string:
			default:
				ok = false
			}
		}
		if !ok {
			return fmt.Errorf("Cache-Status %q: member %v names no cache (want a token or a string)", joined, m)
		}
		ours = it
	}
	name, err := httpsfv.Marshal(httpsfv.NewItem(ours.Value))
	if err != nil || !slices.Contains(ourNames, name) {
		return nil
	}
	param := func(k string) (any, bool) { return ours.Params.Get(k) }
	for _, k := range ours.Params.Names() {
		v, _ := param(k)
		ok := false
		switch k {
		case "hit", "stored", "collapsed":
			_, ok = v.(bool)
		case "fwd":
			t, isToken := v.(httpsfv.Token)
			ok = isToken && slices.Contains([]string{"bypass", "method", "uri-miss", "vary-miss", "miss", "request", "stale", "partial"}, string(t))
		case "fwd-status":
			n, isInt := v.(int64)
			ok = isInt && n >= 100 && n <= 999
		case "ttl":
			_, ok = v.(int64)
		case "key":
			_, ok = v.(string)
		case "detail":
			switch v.(type) {
			case httpsfv.Token, string:
				ok = true
			}
		}
		if !ok {
			return fmt.Errorf("Cache-Status %q: parameter %s=%v is not RFC 9211's", joined, k, v)
		}
	}
	hit, isHit := param("hit")
	fwd, isFwd := param("fwd")
	if isHit == isFwd || isHit && hit != true {
		return fmt.Errorf("Cache-Status %q: want either hit or fwd", joined)
	}
	_, stored := param("stored")
	collapsed, isCollapsed := param("collapsed")
	switch bloom := h.Get(cache.HeaderStatus); bloom {
	case "":
	case "HIT":
		if !isHit && !(isCollapsed && collapsed == true) {
			return fmt.Errorf("Cache-Status %q with Bloom-Status HIT", joined)
		}
	case "MISS":
		if !stored || fwd == nil {
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
