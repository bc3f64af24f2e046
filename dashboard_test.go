package edgelimit

import (
	"encoding/json"
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"
)

// dashboardPath is the Grafana dashboard of docs/operations.md.
const dashboardPath = "docs/grafana/edgelimit.json"

// dashboardExprs returns the PromQL expressions of the dashboard's panels.
func dashboardExprs(t testing.TB) []string {
	t.Helper()
	b, err := os.ReadFile(dashboardPath)
	if err != nil {
		t.Fatal(err)
	}
	var d struct {
		SchemaVersion int `json:"schemaVersion"`
		Templating    struct {
			List []struct{ Name, Type, Query string } `json:"list"`
		} `json:"templating"`
		Panels []struct {
			Title      string `json:"title"`
			Datasource struct{ Type, UID string }
			Targets    []struct {
				Expr       string `json:"expr"`
				Datasource struct{ Type, UID string }
			} `json:"targets"`
		} `json:"panels"`
	}
	if err := json.Unmarshal(b, &d); err != nil {
		t.Fatalf("%s: %v", dashboardPath, err)
	}
	if d.SchemaVersion < 36 {
		t.Errorf("schemaVersion %d: want Grafana 10's (36 or later)", d.SchemaVersion)
	}
	if !slices.ContainsFunc(d.Templating.List, func(v struct{ Name, Type, Query string }) bool {
		return v.Name == "DS_PROMETHEUS" && v.Type == "datasource" && v.Query == "prometheus"
	}) {
		t.Error("no DS_PROMETHEUS datasource variable")
	}
	var exprs []string
	for _, p := range d.Panels {
		if p.Datasource.UID != "${DS_PROMETHEUS}" || len(p.Targets) == 0 {
			t.Errorf("panel %q: datasource %q, %d targets", p.Title, p.Datasource.UID, len(p.Targets))
		}
		for _, tg := range p.Targets {
			if tg.Datasource.UID != "${DS_PROMETHEUS}" || tg.Expr == "" {
				t.Errorf("panel %q: target datasource %q, expr %q", p.Title, tg.Datasource.UID, tg.Expr)
			}
			exprs = append(exprs, tg.Expr)
		}
	}
	return exprs
}

var metricName = regexp.MustCompile(`\bcaddy_[a-z_]+`)

// seriesBase is the metric a series name belongs to (a histogram's
// _bucket, _count and _sum series belong to it).
func seriesBase(s string) string {
	if i := strings.IndexByte(s, '{'); i >= 0 {
		s = s[:i]
	}
	for _, suffix := range []string{"_bucket", "_count", "_sum"} {
		if base, ok := strings.CutSuffix(s, suffix); ok && strings.HasSuffix(base, "_seconds") {
			return base
		}
	}
	return s
}

// Every metric the dashboard queries is one the code registers: the
// edge_limit names of metrics.go, checked against a real Caddy's registry,
// and edge_cache's as a Caddy with edge_cache serves them. A renamed
// metric breaks this test.
func TestDashboardUsesRegisteredMetrics(t *testing.T) {
	exprs := dashboardExprs(t)
	fakeClock(t)
	s := startSite(t, `
%ADDR% {
	edge_cache {
		ttl 60s
	}
	edge_limit {
		limit per_client {
			key {header.X-Client}
			rate 2/1m
		}
	}
	respond "ok"
}`)
	for range 3 {
		s.get("/", "X-Client", "a")
	}
	registered := map[string]bool{}
	for series := range scrape(t) {
		registered[seriesBase(series)] = true
	}
	for _, name := range metricNames {
		if !registered[name] {
			t.Errorf("metrics.go names %s, the registry has no such series", name)
		}
	}
	cacheRegistered := false
	for name := range registered {
		cacheRegistered = cacheRegistered || strings.HasPrefix(name, "caddy_edge_cache_")
	}
	used := map[string]bool{}
	for _, e := range exprs {
		names := metricName.FindAllString(e, -1)
		if len(names) == 0 {
			t.Errorf("expr %q queries no caddy_ metric", e)
		}
		for _, n := range names {
			n = seriesBase(n)
			used[n] = true
			switch {
			case strings.HasPrefix(n, "caddy_edge_limit_"):
				if !slices.Contains(metricNames, n) || !registered[n] {
					t.Errorf("expr %q: %s is not registered by edge_limit", e, n)
				}
			case strings.HasPrefix(n, "caddy_edge_cache_"):
				if registered[n] {
					continue
				}
				if cacheRegistered {
					t.Errorf("expr %q: edge_cache registers caddy_edge_cache_ series but not %s", e, n)
				} else {
					t.Logf("expr %q: edge_cache registers no metrics on this branch yet", e)
				}
			default:
				t.Errorf("expr %q: %s is not an edgelimit metric", e, n)
			}
		}
	}
	for _, name := range []string{metricDecisions, metricStorageDuration, metricRedisErrors, metricMemoryKeys} {
		if !used[name] {
			t.Errorf("the dashboard has no panel on %s", name)
		}
	}
}
