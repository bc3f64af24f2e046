package edgelimit

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
)

// recorder is an events handler for tests: it keeps every event it gets.
type recorder struct{}

var (
	recordedMu sync.Mutex
	recorded   []caddy.Event
)

func init() { caddy.RegisterModule(recorder{}) }

func (recorder) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{ID: "events.handlers.edge_limit_test_recorder", New: func() caddy.Module { return new(recorder) }}
}

func (recorder) Handle(_ context.Context, e caddy.Event) error {
	recordedMu.Lock()
	recorded = append(recorded, e)
	recordedMu.Unlock()
	return nil
}

func (*recorder) UnmarshalCaddyfile(d *caddyfile.Dispenser) error { d.Next(); return nil }

func resetRecorded() {
	recordedMu.Lock()
	recorded = nil
	recordedMu.Unlock()
}

// eventsFor waits (bounded) until n events for limit arrived, and returns
// what arrived.
func eventsFor(t *testing.T, limit string, n int) []caddy.Event {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		recordedMu.Lock()
		var got []caddy.Event
		for _, e := range recorded {
			if e.Data["limit"] == limit {
				got = append(got, e)
			}
		}
		recordedMu.Unlock()
		if len(got) >= n || time.Now().After(deadline) {
			return got
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestCaddyfileTiersQuotasExemptions(t *testing.T) {
	cfg, err := adapt(t, `{
	edge_limit {
		limit api_global {
			key {http.auth.user.id} {client_ip}
			rate 1000/1m
		}
		quota plugin_daily {
			key {header.X-Plugin-Id}
			limit 10000 per day
			reset 00:00 UTC
			exempt api_global api_route
		}
	}
}
:8080 {
	edge_limit {
		limit DEFAULT {
			key {header.X-Org-Id} {header.X-Api-Key} {http.auth.user.id} {client_ip}
			tier {vars.tier} {
				BASE token_bucket 50 5/1s
				TIER_1 token_bucket 150 15/1s
				default BASE
			}
		}
		limit app {
			rate 1000/1m
			split 10s
			status 420
			body "{\"error\":\"{edge_limit.name}\"}"
		}
		quota window5 {
			key {header.X-Site}
			limit 10000 per 5m
		}
		quota paris {
			limit 10 per month
			reset 06:00 Europe/Paris
			scope route
		}
		use api_global plugin_daily
		show_key raw
	}
}`)
	if err != nil {
		t.Fatal(err)
	}
	var v struct {
		Apps map[string]json.RawMessage `json:"apps"`
	}
	if err := json.Unmarshal(cfg, &v); err != nil {
		t.Fatal(err)
	}
	var app App
	if err := json.Unmarshal(v.Apps["edge_limit"], &app); err != nil {
		t.Fatal(err)
	}
	if len(app.Limits) != 2 || app.Limits[1].Calendar == nil || app.Limits[1].Calendar.Period != "day" ||
		strings.Join(app.Limits[1].Exempt, ",") != "api_global,api_route" {
		t.Fatalf("global limits: %s", v.Apps["edge_limit"])
	}
	h := handlersOf(t, cfg)[0]
	if strings.Join(h.Use, ",") != "api_global,plugin_daily" || h.ShowKey != "raw" {
		t.Fatalf("use %v show_key %q", h.Use, h.ShowKey)
	}
	byName := map[string]*Limit{}
	for _, l := range h.Limits {
		byName[l.Name] = l
	}
	d := byName["DEFAULT"]
	if d.Tier != "{http.vars.tier}" || d.DefaultTier != "BASE" || len(d.Tiers) != 2 ||
		d.Tiers["TIER_1"].Limit != 150 || d.Tiers["TIER_1"].Refill != 15 || d.Tiers["TIER_1"].Algorithm != "token_bucket" {
		t.Fatalf("tiers: %+v %+v", d, d.Tiers["TIER_1"])
	}
	if a := byName["app"]; a.Split != caddy.Duration(10*time.Second) || a.Status != 420 || a.Body != `{"error":"{edge_limit.name}"}` {
		t.Fatalf("app: %+v", a)
	}
	if w := byName["window5"]; w.Algorithm != "anchored_window" || w.Window != caddy.Duration(5*time.Minute) || w.Scope != "global" {
		t.Fatalf("window5: %+v", w)
	}
	if p := byName["paris"]; p.Calendar == nil || p.Calendar.At != "06:00" || p.Calendar.TimeZone != "Europe/Paris" || p.Scope != "route" {
		t.Fatalf("paris: %+v", p)
	}
	cl, err := compileLimit(byName["app"], "z")
	if err != nil || cl.limit.Quota != 166 || cl.limit.Window != 10*time.Second {
		t.Fatalf("split compiled to %+v, %v", cl.limit, err)
	}

	bad := []struct{ body, want, line string }{
		{"quota q {\n\tlimit 5 per day\n\treset 25:00\n}", "HH:MM", "Caddyfile:5"},
		{"quota q {\n\tlimit 5 per 1h\n\treset 06:00\n}", "reset goes with a limit per day", "Caddyfile:3"},
		{"quota q {\n\tkey {client_ip}\n}", "no limit line", "Caddyfile:3"},
		{"quota q {\n\tlimit 5 per fortnight\n}", "fortnight", "Caddyfile:4"},
		{"quota q {\n\tlimit 5 per day anchored\n}", "calendar quota is aligned", "Caddyfile:4"},
		{"quota q {\n\tlimit 5 per day\n\trate 5/1m\n}", `unknown option "rate" in quota "q"`, "Caddyfile:5"},
		{"limit l {\n\ttier {vars.t} {\n\t\tT1 rate 5/1m\n\t}\n}", "no known tier need numbers", "Caddyfile:3"},
		{"limit l {\n\ttier {vars.t} {\n\t\tT1 rate 5/1m\n\t\tdefault T2\n\t}\n}", `default_tier "T2"`, "Caddyfile:3"},
		{"limit l {\n\trate 5/1m\n\ttier {vars.t} {\n\t\tT1 token_bucket 5 1/1s\n\t}\n}", "one algorithm", "Caddyfile:3"},
		{"limit l {\n\trate 5/1m\n\ttier {vars.t} {\n\t\tT1 leaky 5\n\t}\n}", `"leaky" is not rate`, "Caddyfile:6"},
		{"limit l {\n\trate 5/1m\n\ttier {vars.t} {\n\t\tT1\n\t}\n}", "needs numbers", "Caddyfile:6"},
		{"limit l {\n\trate 5/1m\n\ttier {vars.t} {\n\t\tT1 rate 5/xyz\n\t}\n}", "bad duration", "Caddyfile:6"},
		{"limit l {\n\trate 1000/1m\n\tsplit 7s\n}", "equal parts", "Caddyfile:3"},
		{"limit l {\n\ttoken_bucket 5 1/1s\n\tsplit 1s\n}", "split goes with windows", "Caddyfile:3"},
		{"limit l {\n\trate 5/1m\n\texempt l\n}", "cannot exempt itself", "Caddyfile:3"},
		{"limit l {\n\trate 5/1m\n\tstatus 302\n}", "status 302", "Caddyfile:5"},
		{"limit l {\n\trate 5/1m\n}\nshow_key plain", `show_key "plain"`, "Caddyfile:6"},
		{"use", "wrong argument count", "Caddyfile:3"},
	}
	for _, c := range bad {
		body := ":8080 {\n\tedge_limit {\n" + indent(c.body) + "\n\t}\n}\n"
		_, err := adapt(t, body)
		if err == nil || !strings.Contains(err.Error(), c.want) || !strings.Contains(err.Error(), c.line) {
			t.Errorf("error %v, want %q at %s in\n%s", err, c.want, c.line, body)
		}
	}
}

func TestTiersSelectNumbers(t *testing.T) {
	fakeClock(t)
	s := startSite(t, `
%ADDR% {
	map {header.X-Api-Key} {tier} {
		gold-key TIER_1
		default  BASE
	}
	edge_limit {
		limit DEFAULT {
			key {header.X-Org-Id} {header.X-Api-Key} {client_ip}
			tier {tier} {
				BASE token_bucket 2 1/1s
				TIER_1 token_bucket 4 2/1s
			}
			token_bucket 1 1/10s
		}
		body "{\"tier\":\"{edge_limit.tier}\",\"type\":\"{edge_limit.name}\",\"retry\":\"{edge_limit.retry_after_human}\"}"
	}
	respond "ok"
}`)
	for range 4 {
		expect(t, s.get("/", "X-Api-Key", "gold-key"), 200, "X-RateLimit-Limit", "4")
	}
	expect(t, s.get("/", "X-Api-Key", "gold-key"), 429, "body", `{"tier":"TIER_1","type":"DEFAULT","retry":"1 second"}`)
	for range 2 {
		expect(t, s.get("/", "X-Api-Key", "plain-key"), 200, "X-RateLimit-Limit", "2")
	}
	expect(t, s.get("/", "X-Api-Key", "plain-key"), 429, "body", `{"tier":"BASE","type":"DEFAULT","retry":"1 second"}`)
}

func TestQuotaExemptsAcrossHandlers(t *testing.T) {
	clk := fakeClock(t)
	clk.Set(clk.Now().Truncate(24 * time.Hour).Add(23*time.Hour + 59*time.Minute))
	s := startSite(t, `
{
	edge_limit {
		limit api_global {
			key {header.X-User} {client_ip}
			rate 3/1h
		}
	}
}
%ADDR% {
	edge_limit {
		quota plugin_daily {
			key {header.X-Plugin-Id}
			limit 5 per day
			reset 00:00 UTC
			exempt api_global api_route
			status 420
		}
		use api_global
	}
	handle /route {
		edge_limit {
			limit api_route {
				key {header.X-User} {client_ip}
				rate 2/1h
			}
		}
	}
	respond "ok"
}`)
	// A user is held to the route limit...
	expect(t, s.get("/route", "X-User", "u"), 200)
	expect(t, s.get("/route", "X-User", "u"), 200)
	expect(t, s.get("/route", "X-User", "u"), 429)
	// ...a plugin is not, in this handler nor in the nested one, but its
	// daily quota holds, with 420.
	for range 5 {
		expect(t, s.get("/route", "X-User", "u", "X-Plugin-Id", "p1"), 200)
	}
	r := s.get("/route", "X-User", "u", "X-Plugin-Id", "p1")
	expect(t, r, 420, "Retry-After", "60")
	// Midnight UTC resets the quota.
	clk.Add(time.Minute)
	expect(t, s.get("/route", "X-User", "u", "X-Plugin-Id", "p1"), 200, "X-RateLimit-Limit", "5", "X-RateLimit-Remaining", "4")
}

func TestSplitEnforcesShortWindows(t *testing.T) {
	clk := fakeClock(t)
	s := startSite(t, `
%ADDR% {
	edge_limit {
		limit app {
			key {header.X-App}
			rate 60/1m
			split 10s
		}
		headers x-ratelimit time
	}
	respond "ok"
}`)
	start := clk.Now()
	for i := range 10 {
		expect(t, s.get("/", "X-App", "a"), 200, "X-RateLimit-Limit", "10", "X-RateLimit-Time", "10")
		_ = i
	}
	expect(t, s.get("/", "X-App", "a"), 429, "X-RateLimit-Reset", strconv.FormatInt(start.Add(10*time.Second).Unix(), 10))
	clk.Add(10 * time.Second)
	expect(t, s.get("/", "X-App", "a"), 200, "X-RateLimit-Remaining", "9")
}

func TestEventsOncePerWindowAndKeyDisplay(t *testing.T) {
	clk := fakeClock(t)
	resetRecorded()
	s := startSite(t, `
{
	events {
		on edge_limit.exceeded edge_limit_test_recorder
	}
}
%ADDR% {
	edge_limit /raw* {
		limit rawkey {
			key {header.X-Token}
			rate 1/1m
		}
		show_key raw
		body "{edge_limit.key}"
		content_type text/plain
	}
	edge_limit /hashed* {
		limit hashedkey {
			key {header.X-Token}
			rate 1/1m
			window anchored
		}
		body "{edge_limit.key}"
		content_type text/plain
	}
	edge_limit /dry* {
		limit drykey {
			key {header.X-Token}
			rate 1/1m
			dry_run
		}
	}
	respond "ok"
}`)
	expect(t, s.get("/raw", "X-Token", "secret-1"), 200)
	for range 3 {
		expect(t, s.get("/raw", "X-Token", "secret-1"), 429, "body", "secret-1")
	}
	got := eventsFor(t, "rawkey", 1)
	if len(got) != 1 {
		t.Fatalf("%d events for the first window, want 1", len(got))
	}
	e := got[0]
	if e.Name() != "edge_limit.exceeded" || e.Data["key"] != "secret-1" || e.Data["dry_run"] != false || e.Data["retry_after"] != int64(60) {
		t.Fatalf("event %s %v", e.Name(), e.Data)
	}
	// The next window's first denial is reported again.
	clk.Add(time.Minute)
	expect(t, s.get("/raw", "X-Token", "secret-1"), 200)
	expect(t, s.get("/raw", "X-Token", "secret-1"), 429)
	if got := eventsFor(t, "rawkey", 2); len(got) != 2 {
		t.Fatalf("%d events after two windows, want 2", len(got))
	}

	expect(t, s.get("/hashed", "X-Token", "secret-2"), 200)
	r := s.get("/hashed", "X-Token", "secret-2")
	if r.status != 429 || len(r.body) != 16 || strings.Contains(r.body, "secret") {
		t.Fatalf("hashed key shown as %q", r.body)
	}
	if got := eventsFor(t, "hashedkey", 1); len(got) != 1 || got[0].Data["key"] != r.body {
		t.Fatalf("hashed events %v", got)
	}

	expect(t, s.get("/dry", "X-Token", "t"), 200)
	expect(t, s.get("/dry", "X-Token", "t"), 200)
	expect(t, s.get("/dry", "X-Token", "t"), 200)
	if got := eventsFor(t, "drykey", 1); len(got) != 1 || got[0].Data["dry_run"] != true {
		t.Fatalf("dry-run events %v", got)
	}
}

func TestWebhookDeliversEvents(t *testing.T) {
	fakeClock(t)
	var mu sync.Mutex
	var bodies []map[string]any
	var auth []string
	hook := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		var v map[string]any
		_ = json.Unmarshal(b, &v)
		mu.Lock()
		bodies = append(bodies, v)
		auth = append(auth, r.Header.Get("Authorization"))
		mu.Unlock()
	}))
	defer hook.Close()
	t.Setenv("EDGE_HOOK_TOKEN", "Bearer s3cret")
	s := startSite(t, `
{
	events {
		on edge_limit.exceeded edge_limit_webhook `+hook.URL+` {
			header Authorization {env.EDGE_HOOK_TOKEN}
			timeout 2s
		}
	}
}
%ADDR% {
	edge_limit {
		limit hooked {
			rate 1/1m
		}
	}
	respond "ok"
}`)
	expect(t, s.get("/"), 200)
	expect(t, s.get("/"), 429)
	expect(t, s.get("/"), 429)
	deadline := time.Now().Add(30 * time.Second)
	for {
		mu.Lock()
		n := len(bodies)
		mu.Unlock()
		if n >= 1 || time.Now().After(deadline) {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(bodies) != 1 {
		t.Fatalf("%d deliveries, want 1", len(bodies))
	}
	data, _ := bodies[0]["data"].(map[string]any)
	if bodies[0]["type"] != "edge_limit.exceeded" || data["limit"] != "hooked" || auth[0] != "Bearer s3cret" {
		t.Fatalf("delivery %v, auth %q", bodies[0], auth[0])
	}
}

// TestHumanSeconds: singular for one, plural otherwise, and never sooner
// than the truth (150 s is not "2 minutes").
func TestHumanSeconds(t *testing.T) {
	for n, want := range map[int64]string{
		0: "0 seconds", 1: "1 second", 5: "5 seconds", 59: "59 seconds", 60: "1 minute", 61: "1 minute 1 second",
		90: "1 minute 30 seconds", 120: "2 minutes", 150: "2 minutes 30 seconds", 3599: "59 minutes 59 seconds",
		3600: "1 hour", 3601: "1 hour 1 minute", 3660: "1 hour 1 minute", 7200: "2 hours", 86399: "24 hours",
		86400: "1 day", 90000: "1 day 1 hour", 172800: "2 days",
	} {
		if got := humanSeconds(n); got != want {
			t.Errorf("humanSeconds(%d) = %q, want %q", n, got, want)
		}
	}
	for n, want := range map[int64]string{0: "0 seconds", 1: "1 second", 2: "2 seconds", 3600: "3600 seconds"} {
		if got := secondsText(n); got != want {
			t.Errorf("secondsText(%d) = %q, want %q", n, got, want)
		}
	}
}

func TestMetricsCountDecisions(t *testing.T) {
	fakeClock(t)
	s := startSite(t, `
%ADDR% {
	edge_limit {
		limit metered {
			rate 2/1m
		}
		limit shadow {
			rate 1/1m
			dry_run
		}
	}
	respond "ok"
}`)
	for range 3 {
		s.get("/")
	}
	resp, err := http.Get("http://localhost:" + strconv.Itoa(adminPort()) + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	for _, want := range []string{
		`caddy_edge_limit_decisions_total{limit="metered",outcome="allowed"} 2`,
		`caddy_edge_limit_decisions_total{limit="metered",outcome="denied"} 1`,
		`caddy_edge_limit_decisions_total{limit="shadow",outcome="allowed"} 1`,
		`caddy_edge_limit_decisions_total{limit="shadow",outcome="would_deny"} 2`,
	} {
		if !strings.Contains(string(b), want) {
			t.Errorf("metrics lack %s", want)
		}
	}
}
