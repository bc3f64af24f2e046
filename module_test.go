package edgelimit

import (
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/edgelimit/caddy-edgelimit/internal/e2e"
	"github.com/edgelimit/caddy-edgelimit/limiter"
)

func TestJSONConfigDefaults(t *testing.T) {
	l := &Limit{Name: "a", Numbers: Numbers{Limit: 5, Window: caddy.Duration(time.Minute)}}
	cl, err := compileLimit(l, "z")
	if err != nil {
		t.Fatal(err)
	}
	if cl.limit.Algorithm != limiter.FixedWindow || cl.cost != 1 || len(cl.keys) != 1 || cl.keys[0].kind != keyClientIP {
		t.Fatalf("defaults: %+v", cl)
	}
	if cl.counters[0] != "r/z/a/fixed_window#0" {
		t.Fatalf("counter %q", cl.counters[0])
	}
	g, _ := compileLimit(&Limit{Name: "a", Numbers: Numbers{Limit: 5, Window: caddy.Duration(time.Minute)}, Scope: "global"}, "z")
	if g.counters[0] != "g/a/fixed_window#0" {
		t.Fatalf("global counter %q", g.counters[0])
	}
}

// TestUnknownExemptionIsRefused: exempting a limit that nothing declares
// (a typo, which silently exempted nothing) fails the configuration's
// load with the limit and the name; exempting a limit of a later
// directive or of the global option loads.
func TestUnknownExemptionIsRefused(t *testing.T) {
	_, err := loadConfig(t, `
%ADDR% {
	edge_limit {
		quota daily {
			key {http.auth.user.id}
			limit 20 per day
			exempt api_glob
		}
	}
	respond "ok"
}`)
	if err == nil || !strings.Contains(err.Error(), `limit "daily"`) || !strings.Contains(err.Error(), `exempt "api_glob"`) {
		t.Fatalf("exempting an unknown limit: %v", err)
	}
	if _, err := loadConfig(t, `
{
	edge_limit {
		limit api_global {
			rate 5/1m
		}
	}
}
%ADDR% {
	edge_limit {
		quota daily {
			key {http.auth.user.id}
			limit 20 per day
			exempt api_global api_route
		}
		use api_global
	}
	handle /v1/* {
		edge_limit {
			limit api_route {
				rate 2/1m
			}
		}
	}
	respond "ok"
}`); err != nil {
		t.Fatalf("exempting limits of the global option and of a later directive: %v", err)
	}
}

// loadConfig adapts a test Caddyfile and loads it into the in-process
// Caddy, returning the load's error instead of failing the test.
func loadConfig(t *testing.T, body string) ([]byte, error) {
	t.Helper()
	body, _ = e2e.Caddyfile(t, body)
	cfg, err := adapt(t, body)
	if err != nil {
		return nil, err
	}
	return cfg, caddy.Load(cfg, true)
}
