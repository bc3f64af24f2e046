package edgecache

import (
	"net/http"
	"testing"
)

// The checker the suite runs on every Cache-Status refuses what RFC 8941
// and RFC 9211 refuse.
func TestCheckCacheStatus(t *testing.T) {
	for v, valid := range map[string]bool{
		"edgelimit; hit; ttl=42":                    true,
		"edgelimit; fwd=uri-miss; stored":           true,
		`Origin; hit, edgelimit; fwd=stale; ttl=-3`: true,
		`edgelimit; fwd=miss; detail="x y"`:         true,
		"edgelimit; hit; fwd=miss":                  false, // both
		"edgelimit; fwd=elsewhere":                  false, // not a fwd value
		"edgelimit; hit; ttl=4.2":                   false, // ttl is an integer
		"edgelimit; hit=1":                          false, // hit is a boolean
		"edgelimit; hit; colour=blue":               false, // not RFC 9211's
		"edgelimit; hit,":                           false, // not a List
		"(a b), edgelimit; hit":                     false, // an inner list names no cache
	} {
		h := http.Header{HeaderCacheStatus: {v}}
		if err := CheckCacheStatus(h); (err == nil) != valid {
			t.Errorf("%q: %v, want valid %v", v, err, valid)
		}
	}
}
