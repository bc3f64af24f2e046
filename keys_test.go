package edgelimit

import (
	"strings"
	"testing"
)

func TestMissingKeysAndHostileKeys(t *testing.T) {
	fakeClock(t)
	s := startSite(t, `
%ADDR% {
	edge_limit {
		limit users {
			key {http.auth.user.id} {header.X-User}
			rate 1/1m
		}
	}
	respond "ok"
}`)
	// No key part present: the limit does not apply at all.
	for range 3 {
		expect(t, s.get("/"), 200, "X-RateLimit-Limit", "")
	}
	expect(t, s.get("/", "X-User", "u1"), 200, "X-RateLimit-Remaining", "0")
	expect(t, s.get("/", "X-User", "u1"), 429)
	// A huge header is a key like any other; it costs no more memory.
	huge := strings.Repeat("A", 16<<10)
	expect(t, s.get("/", "X-User", huge), 200)
	expect(t, s.get("/", "X-User", huge), 429)
	expect(t, s.get("/", "X-User", huge[1:]), 200)
}
