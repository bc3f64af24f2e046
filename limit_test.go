package edgelimit

import (
	"encoding/json"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/edgelimit/caddy-edgelimit/internal/e2e"
)

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

func TestProvisionRejectsBadLimits(t *testing.T) {
	sec := caddy.Duration(time.Second)
	cases := []struct {
		h    Handler
		want string
	}{
		{Handler{Limits: []*Limit{{Name: "a", Numbers: Numbers{Limit: 5}}}}, "shorter than the minimum"},
		{Handler{Limits: []*Limit{{Name: "a", Numbers: Numbers{Algorithm: "leaky", Limit: 5, Window: sec}}}}, "unknown algorithm"},
		{Handler{Limits: []*Limit{{Name: "a", Numbers: Numbers{Algorithm: "token_bucket", Limit: 5, Window: sec}}}}, "refill rate"},
		{Handler{Limits: []*Limit{{Name: "", Numbers: Numbers{Limit: 5, Window: sec}}}}, "needs a name"},
		{Handler{Limits: []*Limit{{Name: "a", Numbers: Numbers{Limit: 5, Window: sec}, Key: []string{""}}}}, "empty key part"},
		// A name no request carries: the key would never apply.
		{Handler{Limits: []*Limit{{Name: "a", Numbers: Numbers{Limit: 5, Window: sec}, Key: []string{"{cookie.a;b}"}}}}, `{cookie.a;b}: name "a;b": ";" is not allowed`},
		{Handler{Limits: []*Limit{{Name: "a", Numbers: Numbers{Limit: 5, Window: sec}, Key: []string{"{http.request.header.X Api}/{path.0}"}}}}, `name "X Api"`},
		{Handler{Limits: []*Limit{{Name: "a", Numbers: Numbers{Limit: 5, Window: sec}}}, Headers: "loud"}, "headers"},
		{Handler{Limits: []*Limit{{Name: "a", Numbers: Numbers{Limit: 5, Window: sec}}}, ShowKey: "plain"}, "show_key"},
		{Handler{Limits: []*Limit{{Name: "a", Numbers: Numbers{Limit: 5, Window: sec}}}, Use: []string{"nope"}}, "no such limit"},
		{Handler{Limits: []*Limit{{Name: "a", Tier: "{http.vars.tier}", Tiers: map[string]*Numbers{"T1": {Limit: 5, Window: sec}}}}}, "no known tier need numbers"},
		{Handler{Limits: []*Limit{{Name: "a", Tier: "{http.vars.tier}", DefaultTier: "T9", Tiers: map[string]*Numbers{"T1": {Limit: 5, Window: sec}}}}}, "not one of the tiers"},
		{Handler{Limits: []*Limit{{Name: "a", Numbers: Numbers{Limit: 5, Window: sec}, Tiers: map[string]*Numbers{"T1": {Limit: 5, Window: sec}}}}}, "tier source"},
		{Handler{Limits: []*Limit{{Name: "a", Tier: "{t}", Numbers: Numbers{Limit: 5, Window: sec}, Tiers: map[string]*Numbers{"T1": {Algorithm: "token_bucket", Limit: 5, Refill: 1, Window: sec}}}}}, "one algorithm"},
		{Handler{Limits: []*Limit{{Name: "a", Numbers: Numbers{Limit: 5, Window: sec, Split: caddy.Duration(7 * time.Millisecond)}}}}, "equal parts"},
		{Handler{Limits: []*Limit{{Name: "a", Numbers: Numbers{Limit: 5, Window: sec}, Exempt: []string{"a"}}}}, "cannot exempt itself"},
		{Handler{Limits: []*Limit{{Name: "a", Numbers: Numbers{Limit: 5, Window: sec}, Status: 302}}}, "status 302"},
		{Handler{Limits: []*Limit{{Name: "a", Numbers: Numbers{Limit: 5, Window: sec}, IPv6Prefix: 200}}}, `limit "a": IPv6 prefix 200: want a length from 1 to 128`},
	}
	for _, c := range cases {
		err := validateHandler(t, &c.h)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%+v: error %v, want %q", c.h, err, c.want)
		}
	}
	if err := (&Handler{Status: 302}).Validate(); err == nil {
		t.Error("status 302 accepted")
	}
}

// validateHandler provisions a handler inside a whole config, as `caddy
// validate` does.
func validateHandler(t *testing.T, h *Handler) error {
	t.Helper()
	raw, err := json.Marshal(h)
	if err != nil {
		t.Fatal(err)
	}
	var obj map[string]any
	_ = json.Unmarshal(raw, &obj)
	obj["handler"] = "edge_limit"
	cfg := map[string]any{
		"admin": map[string]any{"disabled": true},
		"apps": map[string]any{"http": map[string]any{"servers": map[string]any{"s": map[string]any{
			"listen": []string{"127.0.0.1:0"},
			"routes": []any{map[string]any{"handle": []any{obj}}},
		}}}},
	}
	b, _ := json.Marshal(cfg)
	var c caddy.Config
	if err := json.Unmarshal(b, &c); err != nil {
		t.Fatal(err)
	}
	return caddy.Validate(&c)
}

// TestPrivilegeFromARequestHeaderWarns: a limit that exempts others, or
// that chooses a tier, from a header the client sends logs a warning when
// the configuration loads; from authenticated input it does not.
func TestPrivilegeFromARequestHeaderWarns(t *testing.T) {
	fakeClock(t)
	logOption, logs := e2e.Logs(t)
	startSite(t, `{
`+logOption+`
	edge_limit {
		quota plugin_daily {
			key {header.X-Plugin-Id}
			limit 20 per day
			exempt api_global
		}
		limit api_global {
			key {http.auth.user.id} {client_ip}
			rate 2/1h
		}
	}
}
%ADDR% {
	map {http.auth.user.id} {plugin_id} {
		~^plugin-(.+)$ "${1}"
	}
	edge_limit {
		use plugin_daily api_global
		limit tiered {
			tier {header.X-Tier} {
				gold rate 100/1m
				default gold
			}
		}
		limit cookie_quota {
			key {cookie.plugin}
			rate 5/1m
			exempt api_global
		}
		limit safe_quota {
			key {plugin_id}
			rate 5/1m
			exempt api_global
		}
	}
	respond "ok"
}`)
	lines := logs()
	if e2e.Count(lines, "exempts others", `"limit":"plugin_daily"`, `"from":"header X-Plugin-Id"`) != 1 {
		t.Errorf("no warning for an exemption keyed on X-Plugin-Id:\n%s", strings.Join(lines, "\n"))
	}
	if e2e.Count(lines, "chooses its tier", `"limit":"tiered"`, `"from":"header X-Tier"`) != 1 {
		t.Errorf("no warning for a tier from X-Tier:\n%s", strings.Join(lines, "\n"))
	}
	if e2e.Count(lines, "exempts others", `"limit":"cookie_quota"`, `"from":"cookie plugin"`) != 1 {
		t.Errorf("no warning for an exemption keyed on a cookie:\n%s", strings.Join(lines, "\n"))
	}
	if e2e.Count(lines, `"limit":"safe_quota"`) != 0 || e2e.Count(lines, `"limit":"api_global"`) != 0 {
		t.Errorf("a warning for a limit keyed on authenticated input:\n%s", strings.Join(lines, "\n"))
	}
}

// TestTiersInheritOffsetAndSplit: a tier given only a limit and a window,
// under a limit with an offset and a split, has the limit's offset and
// split in JSON as in the Caddyfile (and in the Traefik plugin): one
// counter, one window. In JSON the tier had offset 0, so a fleet of both
// edges ran one shared counter on two windows.
func TestTiersInheritOffsetAndSplit(t *testing.T) {
	l := &Limit{Name: "daily", Tier: "{http.vars.tier}",
		Numbers: Numbers{Limit: 1000, Window: caddy.Duration(24 * time.Hour), Offset: caddy.Duration(6 * time.Hour), Split: caddy.Duration(12 * time.Hour)},
		Tiers:   map[string]*Numbers{"GOLD": {Limit: 5000, Window: caddy.Duration(24 * time.Hour)}}}
	cl, err := compileLimit(l, "z")
	if err != nil {
		t.Fatal(err)
	}
	gold := cl.Tiers["GOLD"].Limit
	if gold.Offset != 6*time.Hour || gold.Window != 12*time.Hour || gold.Quota != 2500 {
		t.Errorf("tier GOLD compiled to offset %s window %s quota %d, want 6h, 12h (split) and 2500", gold.Offset, gold.Window, gold.Quota)
	}
	if cl.Base.Offset != gold.Offset || cl.Base.Window != gold.Window {
		t.Errorf("the limit's window %s+%s, its tier's %s+%s", cl.Base.Window, cl.Base.Offset, gold.Window, gold.Offset)
	}
}
