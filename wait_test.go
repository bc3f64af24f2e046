package edgelimit

import (
	"context"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/edgelimit/caddy-edgelimit/internal/clock"
)

// waitSleepers waits (bounded) until n requests are held on the fake
// clock.
func waitSleepers(t *testing.T, clk *clock.Fake, n int) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for clk.Sleepers() != n {
		if time.Now().After(deadline) {
			t.Fatalf("%d requests held, want %d", clk.Sleepers(), n)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// waitServed waits (bounded) until the upstream served n requests.
func waitServed(t *testing.T, c *counter, n int64) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for c.n.Load() != n {
		if time.Now().After(deadline) {
			t.Fatalf("the upstream served %d, want %d", c.n.Load(), n)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestShapeWebhooks: the recipe of docs/directive.md, through a real Caddy
// on the fake clock: the burst passes; five more are held, each until its
// turn (one every 100ms, never all at once); one more is denied; a client
// that hangs up while held gives its place to the next.
func TestShapeWebhooks(t *testing.T) {
	clk := fakeClock(t)
	app, addr := upstream(t, ok)
	s := startSite(t, recipe(t, "docs/directive.md", "wait 500ms", map[string]string{"127.0.0.1:9000": addr}))
	for range 5 {
		expect(t, s.get("/", "X-Customer", "acme"), 200)
	}
	var wg sync.WaitGroup
	codes := make(chan int, 5)
	for i := range 5 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := s.e2e.Do("GET", "/", "X-Customer", "acme")
			codes <- r.Status
		}()
		waitSleepers(t, clk, i+1)
	}
	// Past the wait: denied until a place is free.
	expect(t, s.get("/", "X-Customer", "acme"), 429, "Retry-After", "1")
	expect(t, s.get("/", "X-Customer", "other"), 200)
	if n := app.n.Load(); n != 6 {
		t.Fatalf("%d served before the first turn, want 6", n)
	}
	// One every 100ms.
	for i := int64(1); i <= 5; i++ {
		clk.Add(100 * time.Millisecond)
		waitServed(t, app, 6+i)
		waitSleepers(t, clk, int(5-i))
	}
	wg.Wait()
	close(codes)
	for c := range codes {
		if c != 200 {
			t.Fatalf("a held request answered %d", c)
		}
	}

	// A client that hangs up while held: its place goes to the next.
	clk.Add(time.Second)
	for range 5 {
		expect(t, s.get("/", "X-Customer", "acme"), 200)
	}
	for i := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s.e2e.Do("GET", "/", "X-Customer", "acme")
		}()
		waitSleepers(t, clk, i+1)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		req, _ := http.NewRequestWithContext(ctx, "GET", s.base+"/", nil)
		req.Header.Set("X-Customer", "acme")
		if resp, err := http.DefaultClient.Do(req); err == nil {
			resp.Body.Close()
		}
	}()
	waitSleepers(t, clk, 5)
	expect(t, s.get("/", "X-Customer", "acme"), 429)
	cancel()
	<-done
	waitSleepers(t, clk, 4)
	// Its units given back: the next is held in its place.
	wg.Add(1)
	go func() {
		defer wg.Done()
		if r := s.e2e.Do("GET", "/", "X-Customer", "acme"); r.Status != 200 {
			t.Errorf("the request held in the freed place answered %d", r.Status)
		}
	}()
	waitSleepers(t, clk, 5)
	// All at once: concurrent proxied requests start dials that outlive
	// them and read the request's variables (the ledger's slot is emptied,
	// never deleted: handler.go's ledgerSlot).
	clk.Add(time.Second)
	wg.Wait()
	waitSleepers(t, clk, 0)

	// The metrics: 10 held and served, 1 abandoned; 1.5s held in the
	// first run (0.1 + 0.2 + ... + 0.5).
	expectMetrics(t,
		`caddy_edge_limit_waits_total{limit="webhooks",outcome="served"} 10`,
		`caddy_edge_limit_waits_total{limit="webhooks",outcome="abandoned"} 1`,
		`caddy_edge_limit_wait_seconds_count{limit="webhooks"} 11`,
		`caddy_edge_limit_wait_seconds_bucket{limit="webhooks",le="0.1"} 2`,
	)
}

// TestCaddyfileWaitErrors: a bad wait is refused with its line.
func TestCaddyfileWaitErrors(t *testing.T) {
	for _, c := range []struct{ numbers, option, want string }{
		{"gcra 5/1s", "wait", "Caddyfile:5"},
		{"gcra 5/1s", "wait 0s", "wait must be more than 0"},
		{"gcra 5/1s", "wait -1s", "wait must be more than 0"},
		{"gcra 5/1s", "wait 9s", "wait must be whole milliseconds from 1ms to 8s"},
		{"gcra 5/1s", "wait 1500us", "wait must be whole milliseconds"},
		{"gcra 5/1s", "wait 1s max", "Caddyfile:5"},
		{"gcra 5/1s", "wait 1s max 0", "wait max must be from 1 to 1024"},
		{"gcra 5/1s", "wait 1s most 2", `unexpected "most"`},
		{"gcra 5/1s", "wait 1s max 2 3", "Caddyfile:5"},
		{"rate 5/1s", "wait 1s", "wait needs token_bucket or gcra, not fixed_window"},
		{"token_bucket 5 1/1s\n\t\t\tcount_responses status 401", "wait 1s", "wait goes with limits that count requests"},
		{"gcra 10000/1s", "wait 1s max 1", "holds less than a millisecond"},
	} {
		_, err := adapt(t, ":8080 {\n\tedge_limit {\n\t\tlimit a {\n\t\t\t"+c.numbers+"\n\t\t\t"+c.option+"\n\t\t}\n\t}\n}\n")
		if err == nil || !strings.Contains(err.Error(), c.want) || !strings.Contains(err.Error(), "Caddyfile:") {
			t.Errorf("%q: %v, want an error with %q and its line", c.option, err, c.want)
		}
	}
	cfg, err := adapt(t, ":8080 {\n\tedge_limit {\n\t\tlimit a {\n\t\t\ttoken_bucket 5 1/1s\n\t\t\twait 1500ms max 3\n\t\t}\n\t}\n}\n")
	if err != nil || !strings.Contains(string(cfg), `"wait":1500000000,"wait_max":3`) {
		t.Fatalf("a wait: %v %s", err, cfg)
	}
}

// TestHeldClientLeftGivesBackEarlier: a client that hangs up while a later
// edge_limit handler holds its request consumes nothing at the handlers
// before it either (policy.Held with the request's ledger), as at the
// Traefik plugin (its test of the same name).
func TestHeldClientLeftGivesBackEarlier(t *testing.T) {
	clk := fakeClock(t)
	s := startSite(t, `
%ADDR% {
	route /both {
		edge_limit {
			limit outer {
				key {header.X-Customer}
				rate 3/1m
				scope global
			}
		}
		edge_limit {
			limit hooks {
				key {header.X-Customer}
				gcra 10/1s burst 1
				wait 300ms
			}
		}
		respond "ok"
	}
	route /outer {
		edge_limit {
			limit outer {
				key {header.X-Customer}
				rate 3/1m
				scope global
			}
		}
		respond "ok"
	}
}`)
	expect(t, s.get("/both", "X-Customer", "acme"), 200)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		req, _ := http.NewRequestWithContext(ctx, "GET", s.base+"/both", nil)
		req.Header.Set("X-Customer", "acme")
		if resp, err := http.DefaultClient.Do(req); err == nil {
			resp.Body.Close()
		}
	}()
	waitSleepers(t, clk, 1)
	cancel()
	<-done
	waitSleepers(t, clk, 0)
	// outer counted the first request only.
	expect(t, s.get("/outer", "X-Customer", "acme"), 200, "X-RateLimit-Remaining", "1")
}
