package edgelimit

import (
	"encoding/json"
	"fmt"
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"
)

// dashboardPath is the Grafana dashboard of docs/operations.md.
const dashboardPath = "docs/grafana/edgelimit.json"

// dashboardVar is the dashboard's data source variable: its panels query
// ${datasource}, which the dropdown at the top of the dashboard switches.
const dashboardVar = "datasource"

// dashboardJSON is the dashboard's JSON, as a tree.
func dashboardJSON(t testing.TB) map[string]any {
	t.Helper()
	b, err := os.ReadFile(dashboardPath)
	if err != nil {
		t.Fatal(err)
	}
	var d map[string]any
	if err := json.Unmarshal(b, &d); err != nil {
		t.Fatalf("%s: %v", dashboardPath, err)
	}
	return d
}

// dashboardBoard is what the tests read of a dashboard.
type dashboardBoard struct {
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

// parseDashboard reads a dashboard's tree into a dashboardBoard.
func parseDashboard(t testing.TB, tree map[string]any) dashboardBoard {
	t.Helper()
	b, err := json.Marshal(tree)
	if err != nil {
		t.Fatal(err)
	}
	var d dashboardBoard
	if err := json.Unmarshal(b, &d); err != nil {
		t.Fatal(err)
	}
	return d
}

// dashboardSourceErrors tells what is wrong with d's data sources: it must
// declare one data source variable of Prometheus, dashboardVar, and every
// panel and query must use it.
func dashboardSourceErrors(d dashboardBoard) []string {
	var errs []string
	vars := 0
	for _, v := range d.Templating.List {
		if v.Type == "datasource" {
			vars++
			if v.Name != dashboardVar || v.Query != "prometheus" {
				errs = append(errs, fmt.Sprintf("data source variable %q of %q: want %q of prometheus", v.Name, v.Query, dashboardVar))
			}
		}
	}
	if vars != 1 {
		errs = append(errs, fmt.Sprintf("%d data source variables, want 1", vars))
	}
	want := "${" + dashboardVar + "}"
	for _, p := range d.Panels {
		if p.Datasource.UID != want || p.Datasource.Type != "prometheus" || len(p.Targets) == 0 {
			errs = append(errs, fmt.Sprintf("panel %q: data source %s %q, %d queries", p.Title, p.Datasource.Type, p.Datasource.UID, len(p.Targets)))
		}
		for _, tg := range p.Targets {
			if tg.Datasource.UID != want || tg.Datasource.Type != "prometheus" || tg.Expr == "" {
				errs = append(errs, fmt.Sprintf("panel %q: query %q on data source %s %q", p.Title, tg.Expr, tg.Datasource.Type, tg.Datasource.UID))
			}
		}
	}
	return errs
}

// dashboardExprs returns the PromQL expressions of the dashboard's panels.
func dashboardExprs(t testing.TB) []string {
	t.Helper()
	d := parseDashboard(t, dashboardJSON(t))
	if d.SchemaVersion < 36 {
		t.Errorf("schemaVersion %d: want Grafana 10's (36 or later)", d.SchemaVersion)
	}
	for _, e := range dashboardSourceErrors(d) {
		t.Errorf("%s: %s", dashboardPath, e)
	}
	var exprs []string
	for _, p := range d.Panels {
		for _, tg := range p.Targets {
			exprs = append(exprs, tg.Expr)
		}
	}
	return exprs
}

// grafanaImport does to a dashboard what Grafana's import does: each
// ${NAME} of an __inputs entry, in every string, becomes the value picked
// for it on the import page (here value), and __inputs goes.
func grafanaImport(tree map[string]any, value string) map[string]any {
	inputs := map[string]bool{}
	if in, ok := tree["__inputs"].([]any); ok {
		for _, i := range in {
			if m, ok := i.(map[string]any); ok {
				inputs["${"+fmt.Sprint(m["name"])+"}"] = true
			}
		}
	}
	var eval func(v any) any
	eval = func(v any) any {
		switch v := v.(type) {
		case string:
			return grafanaVarRe.ReplaceAllStringFunc(v, func(m string) string {
				if inputs[m] {
					return value
				}
				return m
			})
		case []any:
			out := make([]any, len(v))
			for i, x := range v {
				out[i] = eval(x)
			}
			return out
		case map[string]any:
			out := map[string]any{}
			for k, x := range v {
				if k != "__inputs" {
					out[k] = eval(x)
				}
			}
			return out
		}
		return v
	}
	return eval(tree).(map[string]any)
}

var grafanaVarRe = regexp.MustCompile(`\$\{.+?\}`)

// The dashboard declares its data source once, as a variable: after an
// import, every panel still queries the variable, so that its dropdown
// switches them all. (An __inputs entry of the same name, as the
// dashboard had, is replaced by the data source picked at import in every
// panel: the variable's dropdown then switches nothing.)
func TestDashboardDataSourceIsTheVariable(t *testing.T) {
	tree := dashboardJSON(t)
	if _, ok := tree["__inputs"]; ok {
		t.Errorf("%s has __inputs: the data source is declared twice", dashboardPath)
	}
	imported := parseDashboard(t, grafanaImport(tree, "uid-picked-at-import"))
	for _, e := range dashboardSourceErrors(imported) {
		t.Errorf("after an import: %s", e)
	}

	// And the check catches what it is for: the dashboard as it was.
	twice := grafanaImport(tree, "") // a copy: it has no inputs to replace
	twice["__inputs"] = []any{map[string]any{"name": dashboardVar, "type": "datasource", "pluginId": "prometheus"}}
	if errs := dashboardSourceErrors(parseDashboard(t, grafanaImport(twice, "uid-picked-at-import"))); len(errs) == 0 {
		t.Error("a dashboard with an input of the variable's name passes after an import")
	}
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
