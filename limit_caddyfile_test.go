package edgelimit

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
)

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
	if err != nil || cl.Base.Quota != 166 || cl.Base.Window != 10*time.Second {
		t.Fatalf("split compiled to %+v, %v", cl.Base, err)
	}

	bad := []struct{ body, want, line string }{
		{"quota q {\n\tlimit 5 per day\n\treset 25:00\n}", "HH:MM", "Caddyfile:5"},
		{"quota q {\n\tlimit 5 per 1h\n\treset 06:00\n}", "reset goes with a limit per day", "Caddyfile:3"},
		{"quota q {\n\tkey {client_ip}\n}", "no limit line", "Caddyfile:3"},
		{"quota q {\n\tlimit 5 per fortnight\n}", "fortnight", "Caddyfile:4"},
		{"quota q {\n\tlimit 5 per day anchored\n}", "calendar quota is aligned", "Caddyfile:4"},
		{"quota q {\n\tlimit 5 per day\n\trate 5/1m\n}", `unknown option "rate" in quota "q"`, "Caddyfile:5"},
		{"limit l {\n\ttier {vars.t} {\n\t\tT1 rate 5/1m\n\t}\n}", "no known tier need numbers", "Caddyfile:3"},
		{"limit l {\n\ttier {vars.t} {\n\t\tT1 rate 5/1m\n\t\tdefault T2\n\t}\n}", `default tier "T2"`, "Caddyfile:3"},
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

func TestCaddyfileGoodForms(t *testing.T) {
	cfg, err := adapt(t, `:8080 {
	edge_limit {
		limit per_client {
			key {header.X-Api-Key} {client_ip}
			rate 5/1m
		}
		limit burst {
			key {client_ip}
			token_bucket 3 1/1s
		}
		limit anchored {
			rate 60/m
			window anchored
		}
		limit sliding {
			rate 100/1h
			window sliding
			cost 2
			dry_run
		}
		limit spaced {
			gcra 10/1s
			burst 20
		}
		limit spaced_rate {
			rate 5/1s
			gcra
		}
		limit daily {
			key {header.X-Plugin-Id}
			quota 10000 per day at 06:30 in Europe/Paris
			scope global
		}
		limit aligned {
			rate 10/1d
			offset 6h
		}
		status 420
		headers both time
		content_type text/plain
		body "slow down {edge_limit.name}"
		handle_errors
		dry_run
		zone api
		storage memory {
			max_keys 5000
			sweep_interval 30s
		}
	}
	respond "ok"
}`)
	if err != nil {
		t.Fatal(err)
	}
	hs := handlersOf(t, cfg)
	if len(hs) != 1 {
		t.Fatalf("%d handlers in %s", len(hs), cfg)
	}
	h := hs[0]
	if h.Status != 420 || h.Headers != "both" || !h.TimeHeader || h.ContentType != "text/plain" ||
		h.Body != "slow down {edge_limit.name}" || !h.HandleErrors || !h.DryRun || h.Zone != "api" {
		t.Fatalf("handler options: %+v", h)
	}
	if !strings.Contains(string(h.StorageRaw), `"backend":"memory"`) || !strings.Contains(string(h.StorageRaw), `"max_keys":5000`) {
		t.Fatalf("storage %s", h.StorageRaw)
	}
	n := func(algo string, limit int64, window time.Duration) Numbers {
		return Numbers{Algorithm: algo, Limit: limit, Window: caddy.Duration(window)}
	}
	want := map[string]Limit{
		"per_client":  {Key: []string{"{http.request.header.X-Api-Key}", "{http.vars.client_ip}"}, Numbers: n("fixed_window", 5, time.Minute)},
		"burst":       {Key: []string{"{http.vars.client_ip}"}, Numbers: Numbers{Algorithm: "token_bucket", Limit: 3, Refill: 1, Window: caddy.Duration(time.Second)}},
		"anchored":    {Numbers: n("anchored_window", 60, time.Minute)},
		"sliding":     {Numbers: n("sliding_window", 100, time.Hour), Cost: 2, DryRun: true},
		"spaced":      {Numbers: Numbers{Algorithm: "gcra", Limit: 20, Refill: 10, Window: caddy.Duration(time.Second)}},
		"spaced_rate": {Numbers: Numbers{Algorithm: "gcra", Limit: 5, Refill: 5, Window: caddy.Duration(time.Second)}},
		"daily": {Key: []string{"{http.request.header.X-Plugin-Id}"}, Scope: "global",
			Numbers: Numbers{Algorithm: "fixed_window", Limit: 10000, Calendar: &CalendarConfig{Period: "day", At: "06:30", TimeZone: "Europe/Paris"}}},
		"aligned": {Numbers: Numbers{Algorithm: "fixed_window", Limit: 10, Window: caddy.Duration(24 * time.Hour), Offset: caddy.Duration(6 * time.Hour)}},
	}
	if len(h.Limits) != len(want) {
		t.Fatalf("%d limits", len(h.Limits))
	}
	for _, l := range h.Limits {
		w, ok := want[l.Name]
		if !ok {
			t.Fatalf("unexpected limit %q", l.Name)
		}
		w.Name = l.Name
		a, _ := json.Marshal(l)
		b, _ := json.Marshal(w)
		if string(a) != string(b) {
			t.Errorf("limit %s:\n got %s\nwant %s", l.Name, a, b)
		}
		if _, err := compileLimit(l, "z"); err != nil {
			t.Errorf("limit %s does not compile: %v", l.Name, err)
		}
	}
}

func TestCaddyfileErrorsNameTheLine(t *testing.T) {
	cases := []struct {
		name, body, want string
		line             string
	}{
		{"bad window", "limit a {\n\trate 5/xyz\n}", `rate "5/xyz": bad duration "xyz"`, "Caddyfile:4"},
		{"zero count", "limit a {\n\trate 0/1m\n}", `rate "0/1m": the count must be at least 1`, "Caddyfile:4"},
		{"negative capacity", "limit a {\n\ttoken_bucket -1 1/1s\n}", "token_bucket capacity must be at least 1, got -1", "Caddyfile:4"},
		{"unknown option", "limit a {\n\trate 5/1m\n\tburstt 3\n}", `unknown option "burstt" in limit "a"`, "Caddyfile:5"},
		{"unknown handler option", "limit a {\n\trate 5/1m\n}\nlimits 3", `unknown edge_limit option "limits"`, "Caddyfile:6"},
		{"no algorithm", "limit a {\n\tkey {client_ip}\n}", `limit "a": no algorithm`, "Caddyfile:3"},
		{"two algorithms", "limit a {\n\trate 5/1m\n\ttoken_bucket 3 1/1s\n}", "only one of", "Caddyfile:3"},
		{"no name", "limit {\n\trate 5/1m\n}", "limit needs a name", "Caddyfile:3"},
		{"bad name", "limit a\"b {\n\trate 5/1m\n}", "use letters, digits", "Caddyfile:3"},
		{"window without rate", "limit a {\n\ttoken_bucket 3 1/1s\n\twindow sliding\n}", "window sliding goes with rate", "Caddyfile:3"},
		{"unknown window", "limit a {\n\trate 5/1m\n\twindow rolling\n}", `window "rolling"`, "Caddyfile:5"},
		{"duplicate limit", "limit a {\n\trate 5/1m\n}\nlimit a {\n\trate 5/1m\n}", `limit "a" is declared twice`, "Caddyfile:6"},
		{"duplicate quota", "limit a {\n\trate 5/1m\n}\nquota a {\n\tlimit 5 per day\n}", `limit "a" is declared twice`, "Caddyfile:6"},
		{"cost above the limit", "limit a {\n\trate 2/1m\n\tcost 5\n}", "cost 5 is larger than the limit of 2", "Caddyfile:3"},
		{"cost above a tier", "limit a {\n\tcost 5\n\ttier {t} {\n\t\tA rate 9/1m\n\t\tB rate 3/1m\n\t\tdefault A\n\t}\n}", `larger than the limit of 3 of tier "B"`, "Caddyfile:3"},
		{"bucket refilled in centuries", "limit a {\n\ttoken_bucket 1000000000000 1/366d\n}", "takes longer than 100 years to refill", "Caddyfile:3"},
		{"gcra and rate", "limit a {\n\trate 5/1m\n\tgcra 5/1s\n}", "only one of rate and gcra", "Caddyfile:3"},
		{"absurd window", "limit a {\n\trate 5/1000d\n}", "longer than the maximum", "Caddyfile:3"},
		{"tiny window", "limit a {\n\trate 5/1us\n}", "shorter than the minimum", "Caddyfile:3"},
		{"absurd quota", "limit a {\n\trate 99999999999999999999/1m\n}", "not a whole number", "Caddyfile:4"},
		{"huge quota", "limit a {\n\trate 9999999999999/1m\n}", "larger than the maximum", "Caddyfile:3"},
		{"bad status", "limit a {\n\trate 5/1m\n}\nstatus 200", "status 200", "Caddyfile:6"},
		{"bad headers", "limit a {\n\trate 5/1m\n}\nheaders fancy", `headers "fancy"`, "Caddyfile:6"},
		{"bad scope", "limit a {\n\trate 5/1m\n\tscope world\n}", `scope "world"`, "Caddyfile:5"},
		{"bad cost", "limit a {\n\trate 5/1m\n\tcost 0\n}", "cost must be at least 1", "Caddyfile:5"},
		{"bad zone", "limit a {\n\tquota 5 per day in Mars/Olympus\n}", "Mars/Olympus", "Caddyfile:4"},
		{"bad reset", "limit a {\n\tquota 5 per day at 25:00\n}", "HH:MM", "Caddyfile:4"},
		{"bad period", "limit a {\n\tquota 5 per fortnight\n}", "fortnight", "Caddyfile:4"},
		{"unknown storage", "limit a {\n\trate 5/1m\n}\nstorage floppy", `unknown storage "floppy"`, "Caddyfile:6"},
		{"bad storage option", "limit a {\n\trate 5/1m\n}\nstorage memory {\n\tmax_keyz 5\n}", `unknown memory storage option "max_keyz"`, "Caddyfile:7"},
		{"sync without interval", "limit a {\n\trate 5/1m\n\tsync\n}", "wrong argument count", "Caddyfile:5"},
		{"sync not a duration", "limit a {\n\trate 5/1m\n\tsync often\n}", "often", "Caddyfile:5"},
		{"sync too short", "limit a {\n\trate 5/1m\n\tsync 100us\n}", "sync 100µs: want an interval from 1ms to 1m0s", "Caddyfile:5"},
		{"sync too long", "limit a {\n\trate 5/1m\n\tsync 2m\n}", "sync 2m0s: want an interval from 1ms to 1m0s", "Caddyfile:5"},
		{"sync twice", "limit a {\n\trate 5/1m\n\tsync 1s\n\tsync 2s\n}", `"sync" given twice`, "Caddyfile:6"},
		{"sync with ban", "limit a {\n\trate 5/1m\n\tban 60s\n\tsync 100ms\n}", `limit "a": sync does not go with ban`, "Caddyfile:3"},
		{"sync with wait", "limit a {\n\ttoken_bucket 5 1/1s\n\twait 100ms\n\tsync 100ms\n}", `limit "a": sync does not go with wait`, "Caddyfile:3"},
		{"sync with count_responses", "limit a {\n\trate 5/1m\n\tcount_responses\n\tsync 100ms\n}", `limit "a": sync does not go with a limit that counts responses`, "Caddyfile:3"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			body := ":8080 {\n\tedge_limit {\n" + indent(c.body) + "\n\t}\n\trespond ok\n}\n"
			_, err := adapt(t, body)
			if err == nil {
				t.Fatalf("accepted:\n%s", body)
			}
			if !strings.Contains(err.Error(), c.want) || !strings.Contains(err.Error(), c.line) {
				t.Fatalf("error %q, want it to contain %q and %q\n%s", err, c.want, c.line, body)
			}
		})
	}
}

func indent(s string) string {
	lines := strings.Split(s, "\n")
	for i := range lines {
		lines[i] = "\t\t" + lines[i]
	}
	return strings.Join(lines, "\n")
}

// TestCaddyRateLimitHintsInLimits: caddy-ratelimit's zone options, written
// in a limit, are refused at their line with what to write instead.
func TestCaddyRateLimitHintsInLimits(t *testing.T) {
	cases := []struct{ name, body, want, line string }{
		{"events", "limit a {\n\tkey {client_ip}\n\tevents 100\n\twindow 1m\n}", `unknown option "events" in limit "a": write the events and the window as one "rate <events>/<window>"`, "Caddyfile:5"},
		{"window", "limit a {\n\tkey {client_ip}\n\twindow 1m\n\tevents 100\n}", `window "1m": want fixed, anchored or sliding: the window's length goes in "rate <events>/<window>"`, "Caddyfile:5"},
		{"match", "limit a {\n\trate 5/1m\n\tmatch {\n\t\tmethod GET\n\t}\n}", `unknown option "match" in limit "a": a limit has no matchers: give edge_limit one`, "Caddyfile:5"},
		{"ipv4_prefix", "limit a {\n\trate 5/1m\n\tipv4_prefix 24\n}", `unknown option "ipv4_prefix" in limit "a": IPv4 addresses count one by one; IPv6 addresses count by their prefix`, "Caddyfile:5"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			body := ":8080 {\n\tedge_limit {\n" + indent(c.body) + "\n\t}\n\trespond ok\n}\n"
			_, err := adapt(t, body)
			if err == nil || !strings.Contains(err.Error(), c.want) || !strings.Contains(err.Error(), c.line) ||
				!strings.Contains(err.Error(), "see docs/caddy-ratelimit.md") {
				t.Fatalf("error %v, want %q at %s, pointing to docs/caddy-ratelimit.md\n%s", err, c.want, c.line, body)
			}
		})
	}
	// A window that is not a length gets no hint: it is edgelimit's own.
	_, err := adapt(t, ":8080 {\n\tedge_limit {\n\t\tlimit a {\n\t\t\trate 5/1m\n\t\t\twindow rolling\n\t\t}\n\t}\n}\n")
	if err == nil || strings.Contains(err.Error(), "caddy-ratelimit") {
		t.Fatalf("window rolling: %v", err)
	}
}
