package edgelimit

import (
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestBanAbusiveClients: the recipe of docs/directive.md, through a real
// Caddy: the request that exceeds 100 a minute bans the address for 10
// minutes, past the window; Retry-After and the headers count down to the
// ban's end; another address is served; then the client starts afresh.
func TestBanAbusiveClients(t *testing.T) {
	clk := fakeClock(t)
	app, addr := upstream(t, ok)
	s := startSite(t, recipe(t, "docs/directive.md", "ban 10m", map[string]string{"127.0.0.1:9000": addr}))
	start := clk.Now()
	for i := 99; i >= 0; i-- {
		expect(t, s.get("/"), 200, "X-RateLimit-Remaining", strconv.Itoa(i))
	}
	end := start.Add(10 * time.Minute)
	expect(t, s.get("/"), 429, "Retry-After", "600", "X-RateLimit-Remaining", "0",
		"X-RateLimit-Reset", strconv.FormatInt(end.Unix(), 10))
	served := app.n.Load()
	// The next window would have room: the ban holds.
	clk.Add(time.Minute)
	expect(t, s.get("/"), 429, "Retry-After", "540", "X-RateLimit-Reset", strconv.FormatInt(end.Unix(), 10))
	expect(t, from(t, s, "127.0.0.2", "GET", "/"), 200, "X-RateLimit-Remaining", "99")
	clk.Set(end.Add(-time.Second))
	expect(t, s.get("/"), 429, "Retry-After", "1")
	if app.n.Load() != served+1 {
		t.Fatal("a banned client was served")
	}
	clk.Set(end)
	expect(t, s.get("/"), 200, "X-RateLimit-Remaining", "99")
}

// TestBanFailedLogins: the recipe with count_responses: five wrong
// passwords, and the next request (the right password) begins an hour's
// ban, which outlasts the 15-minute window.
func TestBanFailedLogins(t *testing.T) {
	clk := fakeClock(t)
	app, addr := upstream(t, ok)
	s := startSite(t, recipe(t, "docs/directive.md", "ban 1h", map[string]string{"127.0.0.1:9000": addr}))
	right, wrong := basic("alice", "correct horse"), basic("alice", "guess")
	expect(t, s.get("/", "Authorization", right), 200)
	for range 5 {
		expect(t, s.get("/", "Authorization", wrong), 401)
	}
	served := app.n.Load()
	start := clk.Now()
	expect(t, s.get("/", "Authorization", right), 429, "Retry-After", "3600")
	clk.Add(20 * time.Minute)
	expect(t, s.get("/", "Authorization", right), 429, "Retry-After", "2400")
	if app.n.Load() != served {
		t.Fatal("a banned client was served")
	}
	clk.Set(start.Add(time.Hour))
	expect(t, s.get("/", "Authorization", right), 200, "X-RateLimit-Remaining", "5")
}

// TestBanEventsAndAdmin: the denial that begins a ban is reported once, as
// a ban (ban, banned_until); inspect shows the ban and its end; reset
// lifts it.
func TestBanEventsAndAdmin(t *testing.T) {
	clk := fakeClock(t)
	resetRecorded()
	s := startSite(t, `
{
	events {
		on edge_limit.exceeded edge_limit_test_recorder
	}
}
%ADDR% {
	edge_limit {
		limit boxed {
			key {header.X-Token}
			rate 2/1m
			ban 5m
		}
	}
	respond "ok"
}`)
	start := clk.Now()
	end := start.Add(5 * time.Minute)
	expect(t, s.get("/", "X-Token", "t1"), 200)
	expect(t, s.get("/", "X-Token", "t1"), 200)
	for range 3 {
		expect(t, s.get("/", "X-Token", "t1"), 429, "Retry-After", "300")
	}
	got := eventsFor(t, "boxed", 1)
	if len(got) != 1 || got[0].Data["ban"] != int64(300) || got[0].Data["banned_until"] != end.UTC().Format(time.RFC3339) ||
		got[0].Data["retry_after"] != int64(300) {
		t.Fatalf("events %v", got)
	}

	admin := adminAddr()
	v := inspectAt(t, admin, "POST", "/edge_limit/inspect", `{"limit": "boxed", "key": "t1"}`)
	if len(v.Parts) != 1 || !v.Parts[0].Banned || !v.Parts[0].Denying || v.Parts[0].BannedUntil != end.UTC().Format(time.RFC3339) ||
		v.Parts[0].RetryAfterSeconds != 300 {
		t.Fatalf("inspect: %+v", v.Parts)
	}
	if status, body := adminDo(t, admin, "POST", "/edge_limit/reset", `{"limit": "boxed", "key": "t1"}`); status != 200 {
		t.Fatalf("reset: %d %s", status, body)
	}
	expect(t, s.get("/", "X-Token", "t1"), 200, "X-RateLimit-Remaining", "1")
	v = inspectAt(t, admin, "POST", "/edge_limit/inspect", `{"limit": "boxed", "key": "t1"}`)
	if v.Parts[0].Banned || v.Parts[0].Denying {
		t.Fatalf("inspect after the reset: %+v", v.Parts)
	}
	// The next ban, once the first would have ended, is reported again.
	clk.Set(end)
	expect(t, s.get("/", "X-Token", "t1"), 200)
	expect(t, s.get("/", "X-Token", "t1"), 200)
	expect(t, s.get("/", "X-Token", "t1"), 429, "Retry-After", "300")
	if got := eventsFor(t, "boxed", 2); len(got) != 2 {
		t.Fatalf("%d events after two bans, want 2", len(got))
	}
}

// TestCaddyfileBanErrors: a bad ban is refused with its line.
func TestCaddyfileBanErrors(t *testing.T) {
	for _, c := range []struct{ option, want string }{
		{"ban", "Caddyfile:5"},
		{"ban 0s", "ban must be more than 0"},
		{"ban -5m", "ban must be more than 0"},
		{"ban 1500ms", "ban must be whole seconds"},
		{"ban 30d", "ban must be whole seconds from 1s to 24 days"},
		{"ban soon", "bad duration"},
		{"ban 1m 2m", "Caddyfile:5"},
		{"ban 1m\n\t\t\tban 2m", `"ban" given twice`},
	} {
		_, err := adapt(t, ":8080 {\n\tedge_limit {\n\t\tlimit a {\n\t\t\trate 5/1m\n\t\t\t"+c.option+"\n\t\t}\n\t}\n}\n")
		if err == nil || !strings.Contains(err.Error(), c.want) || !strings.Contains(err.Error(), "Caddyfile:") {
			t.Errorf("%q: %v, want an error with %q and its line", c.option, err, c.want)
		}
	}
	cfg, err := adapt(t, ":8080 {\n\tedge_limit {\n\t\tquota q {\n\t\t\tlimit 5 per day\n\t\t\tban 2h\n\t\t}\n\t}\n}\n")
	if err != nil || !strings.Contains(string(cfg), `"ban":7200000000000`) {
		t.Fatalf("a quota's ban: %v %s", err, cfg)
	}
}
