package edgelimit

import (
	"fmt"
	"testing"

	"github.com/edgelimit/caddy-edgelimit/internal/redistest"
)

// TestRedisKeyFloodThroughCaddy: issue 21's flood, through Caddy. With
// maxmemory and noeviction, a flood of made-up keys (a new X-Key per
// request) fills Redis, which refuses the script's writes (OOM). Before,
// that was Redis failing: on_error allow let everyone through, the client
// that had used its limit included, and the metric said kind="script".
// Now the exhausted client is still denied (from the counts Redis holds),
// a client Redis has no room for is let through by on_error allow, and
// the errors are kind="oom".
func TestRedisKeyFloodThroughCaddy(t *testing.T) {
	srv := redistest.Start(t, "--maxmemory", "2mb", "--maxmemory-policy", "noeviction")
	fakeClock(t)
	s := startSite(t, `
%ADDR% {
	edge_limit {
		limit per_key {
			key {header.X-Key}
			rate 3/1h
		}
		storage redis `+srv.URL+` {
			clock local
			local_denials off
			timeout 5s
		}
	}
	respond "ok"
}`)
	before := scrape(t)
	for range 3 {
		expect(t, s.get("/", "X-Key", "victim"), 200)
	}
	expect(t, s.get("/", "X-Key", "victim"), 429, "Retry-After", "3600")
	oom := func() float64 {
		return scrape(t)[`caddy_edge_limit_redis_errors_total{kind="oom"}`] - before[`caddy_edge_limit_redis_errors_total{kind="oom"}`]
	}
	sent := 0
	for ; sent < 50000 && (sent%500 != 0 || oom() == 0); sent++ {
		s.get("/", "X-Key", fmt.Sprint("made-up-", sent))
	}
	if oom() == 0 {
		t.Fatalf("%d made-up keys and Redis never refused a write", sent)
	}
	t.Logf("Redis full after %d made-up keys", sent)
	for range 5 {
		expect(t, s.get("/", "X-Key", "victim"), 429, "Retry-After", "3600")
	}
	// Redis has no room for a new client: on_error allow, uncounted.
	for range 5 {
		expect(t, s.get("/", "X-Key", "fresh"), 200)
	}
	m := scrape(t)
	script := `caddy_edge_limit_redis_errors_total{kind="script"}`
	if m[script] != before[script] {
		t.Errorf("%s went from %v to %v", script, before[script], m[script])
	}
	allow := `caddy_edge_limit_on_error_total{action="allow"}`
	if got := m[allow] - before[allow]; got < 5 {
		t.Errorf("%s: %v more, want at least 5", allow, got)
	}
}
