package edgelimit

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/edgelimit/caddy-edgelimit/internal/e2e"
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

// TestRedisOutageTwoCaddyInstances: issue 21's soak, in small. Two Caddy
// instances on one Redis with on_error local; a client used 3 of its 5 in
// Redis, then Redis goes down and the client drives both instances until
// each denies it (5 from each, on their own). Before, once Redis answered
// again it still held 3, and the client got 2 more there. Now each
// instance charges Redis what it counted before Redis decides again: 13 of
// 5, denied at both. Redis keeps its data over the outage (append-only
// file), as a paused or partitioned Redis would.
func TestRedisOutageTwoCaddyInstances(t *testing.T) {
	bin := e2e.CaddyBinary(t)
	srv := redistest.Start(t, "--appendonly", "yes", "--appendfsync", "always")
	caddyfile := `{
	admin 127.0.0.1:%ADMIN%
	edge_limit {
		storage redis {
			url ` + srv.URL + `
			on_error local
			local_denials off
			timeout 2s
		}
	}
}
http://127.0.0.1:%PORT% {
	handle /health {
		respond "up"
	}
	edge_limit {
		limit hard {
			key everyone
			rate 5/1h
			window anchored
		}
	}
	respond "ok"
}
`
	a := e2e.Run(t, bin, caddyfile)
	b := e2e.Run(t, bin, caddyfile)
	for i := range 3 {
		if code := []*e2e.Process{a, b}[i%2].Get(t, "/"); code != 200 {
			t.Fatalf("before the outage, request %d: %d", i, code)
		}
	}
	srv.Stop()
	for _, p := range []*e2e.Process{a, b} {
		for i, want := range []int{200, 200, 200, 200, 200, 429} {
			if code := p.Get(t, "/"); code != want {
				t.Fatalf("during the outage, request %d: %d, want %d\n%s", i, code, want, p.Output())
			}
		}
	}
	srv.Restart(t)
	deadline := time.Now().Add(30 * time.Second)
	for _, p := range []*e2e.Process{a, b} {
		for !strings.Contains(p.Output(), "redis rate-limit storage answers again") {
			if time.Now().After(deadline) {
				t.Fatalf("Redis answers, and an instance did not notice within 30s:\n%s", p.Output())
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	for i, p := range []*e2e.Process{a, b, a, b} {
		if code := p.Get(t, "/"); code != 429 {
			t.Fatalf("after the outage, request %d: %d, want 429 (Redis holds 3 + 5 + 5)", i, code)
		}
	}
}
