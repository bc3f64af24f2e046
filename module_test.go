package edgelimit

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/edgelimit/caddy-edgelimit/httpval"
	"github.com/edgelimit/caddy-edgelimit/internal/e2e"
	"github.com/edgelimit/caddy-edgelimit/limiter"
)

func TestJSONConfigDefaults(t *testing.T) {
	l := &Limit{Name: "a", Numbers: Numbers{Limit: 5, Window: caddy.Duration(time.Minute)}}
	cl, err := compileLimit(l, "z")
	if err != nil {
		t.Fatal(err)
	}
	if cl.Base.Algorithm != limiter.FixedWindow || cl.Cost != 1 || len(cl.keys) != 1 || cl.keys[0].Kind != httpval.KindClient {
		t.Fatalf("defaults: %+v", cl)
	}
	if cl.Counters[0] != "r/z/a/fixed_window#0" {
		t.Fatalf("counter %q", cl.Counters[0])
	}
	g, _ := compileLimit(&Limit{Name: "a", Numbers: Numbers{Limit: 5, Window: caddy.Duration(time.Minute)}, Scope: "global"}, "z")
	if g.Counters[0] != "g/a/fixed_window#0" {
		t.Fatalf("global counter %q", g.Counters[0])
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

// TestValidateRefusesWhatRunRefuses: `caddy validate` provisions the apps
// and never starts them, in no set order; an unknown exemption, in a
// directive or in the global option, before or after the limits it names,
// is refused there all the same, and a known one of a later directive
// loads. Each configuration is validated many times: Caddy provisions the
// edge_limit and http apps in map order, and both orders must be covered
// (one order is missed 16 times in a row once in 32,768).
func TestValidateRefusesWhatRunRefuses(t *testing.T) {
	const globalQuota = `{
	edge_limit {
		limit api_global {
			rate 5/1m
		}
		quota daily {
			key {http.auth.user.id}
			limit 20 per day
			exempt api_global %s
		}
	}
}
:0 {
	edge_limit {
		use daily api_global
	}
	handle /v1/* {
		edge_limit {
			limit api_route {
				rate 2/1m
			}
		}
	}
	respond "ok"
}`
	const directiveQuota = `:0 {
	edge_limit {
		quota daily {
			key {http.auth.user.id}
			limit 20 per day
			exempt %s
		}
	}
	route /v1/* {
		edge_limit {
			limit api_route {
				rate 2/1m
			}
		}
	}
	respond "ok"
}`
	for _, c := range []struct {
		name, body, want string
	}{
		{"global option, later directive", fmt.Sprintf(globalQuota, "api_route"), ""},
		{"global option, typo", fmt.Sprintf(globalQuota, "api_rout"), `limit "daily" in the edge_limit global option: exempt "api_rout"`},
		{"directive, later directive", fmt.Sprintf(directiveQuota, "api_route"), ""},
		{"directive, typo", fmt.Sprintf(directiveQuota, "api_rute"), `limit "daily" in the edge_limit directive with limits daily: exempt "api_rute"`},
	} {
		t.Run(c.name, func(t *testing.T) {
			cfg, err := adapt(t, c.body)
			if err != nil {
				t.Fatal(err)
			}
			for range 16 {
				var config caddy.Config
				if err := json.Unmarshal(cfg, &config); err != nil {
					t.Fatal(err)
				}
				err := caddy.Validate(&config)
				switch {
				case c.want == "" && err != nil:
					t.Fatalf("validate: %v", err)
				case c.want != "" && (err == nil || !strings.Contains(err.Error(), c.want)):
					t.Fatalf("validate: %v, want an error with %s", err, c.want)
				}
			}
		})
	}
}

// TestUnknownUseNamesItsLine: `use` of a limit that the global option does
// not declare is refused when the Caddyfile is adapted, at its line.
func TestUnknownUseNamesItsLine(t *testing.T) {
	for _, c := range []struct{ body, want string }{
		{"{\n\tedge_limit {\n\t\tlimit a {\n\t\t\trate 1/1s\n\t\t}\n\t}\n}\n:0 {\n\tedge_limit {\n\t\tuse a\n\t\tuse b\n\t}\n}\n",
			`use "b": no such limit in the edge_limit global option (it declares a), at Caddyfile:11`},
		{":0 {\n\tedge_limit {\n\t\tlimit shared\n\t}\n}\n",
			`use "shared": the edge_limit global option declares no limits to use, at Caddyfile:3`},
	} {
		_, err := adapt(t, c.body)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%v, want %s", err, c.want)
		}
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
