package main

import (
	"bytes"
	"context"
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// need is the path of a binary the test needs: under CI (where .ci/run
// installs it) its absence fails the test, elsewhere it skips it.
func need(t *testing.T, bin, pkg string) string {
	t.Helper()
	p, err := exec.LookPath(bin)
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("%s is required under CI (.ci/run installs it: apt-get install %s)", bin, pkg)
		}
		t.Skipf("no %s (Debian: apt-get install %s): the dashboard's queries are not checked against Prometheus", bin, pkg)
	}
	return p
}

// dashboard is the repository's Grafana dashboard.
func dashboard(t *testing.T) *board {
	t.Helper()
	root, err := pluginRoot()
	if err != nil {
		t.Fatal(err)
	}
	b, err := loadBoard(filepath.Join(root, "docs", "grafana", "edgelimit.json"))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// Every query of the dashboard, as written, answers through a real
// Prometheus (Debian's, as a user would run it) that scrapes a real Caddy
// built from this repository every second, under a bounded load with 429s
// and a Redis outage: /api/v1/query and /api/v1/query_range return series
// for each, and what the load did shows in them. No label carries a
// client key, and promtool finds nothing to say of edgelimit's metrics.
func TestDashboardQueriesOnPrometheus(t *testing.T) {
	if testing.Short() {
		t.Skip("builds Caddy and runs Prometheus")
	}
	prom := need(t, "prometheus", "prometheus")
	need(t, "redis-server", "redis-server")
	b := dashboard(t)
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	s, err := startStack(ctx, stackOptions{Redis: true, Prometheus: prom, Logf: t.Logf})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.close)
	// Bounded in time (and each client in requests); stopped at the end.
	tr := drive(ctx, s.caddyBase, 4*time.Minute)
	t.Cleanup(tr.stop)
	deadline := time.Now().Add(3 * time.Minute)
	await := func(expr string, ok func(model.Vector) bool) model.Vector {
		t.Helper()
		v, err := s.await(ctx, expr, deadline, ok)
		if err != nil {
			t.Fatalf("%v\ncaddy: %s\nprometheus: %s", err, s.caddy.output(), s.prom.output())
		}
		return v
	}

	// Redis decides /shared's limit, as Prometheus sees it over two
	// scrapes; then Redis goes away until the dashboard's own query of
	// Redis errors, and Prometheus's count of on_error decisions, show it,
	// and comes back.
	var redisErrors string
	for _, p := range b.Panels {
		for _, tg := range p.Targets {
			if strings.Contains(tg.Expr, "caddy_edge_limit_redis_errors_total") {
				redisErrors = tg.Expr
			}
		}
	}
	if redisErrors == "" {
		t.Fatal("the dashboard has no query of caddy_edge_limit_redis_errors_total")
	}
	await(`sum(rate(caddy_edge_limit_storage_duration_seconds_count{backend="redis"}[1m]))`, positive)
	s.stopRedis()
	await(redisErrors, positive)
	await(`sum(rate(caddy_edge_limit_on_error_total{action="local"}[1m]))`, positive)
	if err := s.startRedis(ctx); err != nil {
		t.Fatal(err)
	}
	// And the heavy clients have been denied.
	await(`sum(rate(caddy_edge_limit_decisions_total{outcome="denied"}[1m]))`, positive)

	// Each query now, as the dashboard has it.
	n := 0
	for _, p := range b.Panels {
		for _, tg := range p.Targets {
			v := await(tg.Expr, nil)
			t.Logf("%s / %s: %d series: %v", p.Title, tg.RefID, len(v), v)
			n++
		}
	}
	if n < 10 {
		t.Errorf("%d queries: the dashboard had 10", n)
	}

	// And over the run, a point a second, as a panel draws it: each
	// panel's series, named by its legends, and the outage and the cache's
	// hits above zero. Prometheus evaluates a range at its steps, which
	// may come before the scrapes an instant query saw: asked again until
	// the answer is complete, or the deadline.
	for _, p := range b.Panels {
		for {
			problem := checkPanel(ctx, s, p, tr.start)
			if problem == "" {
				break
			}
			if time.Now().After(deadline) {
				t.Errorf("panel %q over the run: %s", p.Title, problem)
				break
			}
			select {
			case <-ctx.Done():
				t.Fatal(ctx.Err())
			case <-time.After(250 * time.Millisecond):
			}
		}
	}
	if tr.status(429) == 0 || tr.status(200) == 0 {
		t.Errorf("the load: %s; want 200s and 429s", tr)
	}
	end := time.Now()

	// No label of any series carries a client key.
	names, _, _, err := s.api.LabelNames(ctx, nil, tr.start, end)
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range names {
		values, _, _, err := s.api.LabelValues(ctx, string(name), nil, tr.start, end)
		if err != nil {
			t.Fatal(err)
		}
		for _, v := range values {
			for _, c := range clientPrefixes {
				if strings.Contains(string(v), c) {
					t.Errorf("label %s=%q carries a client key", name, v)
				}
			}
		}
	}

	// promtool's lint of the edgelimit families, as Caddy serves them.
	lintMetrics(t, s.adminPort)
	t.Logf("%s", tr)
}

// lintMetrics runs `promtool check metrics` on the caddy_edge_ families of
// Caddy's /metrics.
func lintMetrics(t *testing.T, adminPort int) {
	t.Helper()
	promtool := need(t, "promtool", "prometheus")
	resp, err := http.Get("http://127.0.0.1:" + strconv.Itoa(adminPort) + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	parser := expfmt.NewTextParser(model.UTF8Validation)
	families, err := parser.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatalf("/metrics: %v", err)
	}
	var text bytes.Buffer
	enc := expfmt.NewEncoder(&text, expfmt.NewFormat(expfmt.TypeTextPlain))
	var edge []string
	for name, f := range families {
		if strings.HasPrefix(name, "caddy_edge_") {
			edge = append(edge, name)
			if err := enc.Encode(f); err != nil {
				t.Fatal(err)
			}
		}
	}
	if !slices.Contains(edge, "caddy_edge_limit_decisions_total") || !slices.Contains(edge, "caddy_edge_cache_responses_total") {
		t.Fatalf("/metrics has the families %q: no edge_limit or no edge_cache", edge)
	}
	cmd := exec.Command(promtool, "check", "metrics")
	cmd.Stdin = &text
	out, err := cmd.CombinedOutput()
	if err != nil || len(bytes.TrimSpace(out)) > 0 {
		t.Errorf("promtool check metrics on %d families: %v\n%s", len(edge), err, out)
	}
}

// panelSeries are the series each panel of the dashboard must draw, by
// legend, under the test's load.
var panelSeries = map[string][]string{
	"Requests/s allowed vs denied per limit": {"per_client allowed", "per_client denied", "search allowed", "shared_client allowed"},
	"Top denial reasons":                     {"per_client"},
	"Cache hit ratio":                        {"hit ratio"},
	"Storage decision latency p50 / p99":     {"p50 memory", "p99 memory", "p50 redis", "p99 redis"},
	"Redis errors and on_error decisions":    {"error connection", "on_error local", "local denials"},
	"Memory store keys":                      {"keys", "evictions/s"},
}

// checkPanel asks Prometheus for p's queries from start to now, a point a
// second, and tells what is missing from the answers ("" for nothing).
func checkPanel(ctx context.Context, s *stack, p panel, start time.Time) string {
	want, ok := panelSeries[p.Title]
	if !ok {
		return "not a panel this test knows"
	}
	var got []string
	for _, tg := range p.Targets {
		m, err := s.series(ctx, tg.Expr, start, time.Now(), time.Second)
		if err != nil {
			return err.Error()
		}
		if len(m) == 0 {
			return fmt.Sprintf("query_range %q answered no series", tg.Expr)
		}
		for _, ss := range m {
			if len(ss.Values) == 0 {
				continue
			}
			labels := map[string]string{}
			for k, v := range ss.Metric {
				labels[string(k)] = string(v)
			}
			got = append(got, legend(tg.LegendFormat, labels, ss.Metric.String()))
		}
		if (strings.Contains(tg.Expr, "redis_errors_total") || strings.Contains(tg.Expr, `status="HIT"`)) && !anyPositive(m) {
			return fmt.Sprintf("query_range %q never above zero: %v", tg.Expr, m)
		}
	}
	for _, w := range want {
		if !slices.Contains(got, w) {
			return fmt.Sprintf("no series %q among %q", w, got)
		}
	}
	return ""
}

func maxValue(ps []model.SamplePair) (float64, bool) {
	if len(ps) == 0 {
		return 0, false
	}
	m := float64(ps[0].Value)
	for _, p := range ps {
		m = max(m, float64(p.Value))
	}
	return m, true
}

func anyPositive(m model.Matrix) bool {
	for _, ss := range m {
		if v, ok := maxValue(ss.Values); ok && v > 0 {
			return true
		}
	}
	return false
}

// The picture: a panel per dashboard panel with series, named as the
// legend format says, at the times Prometheus gave; a panel without any
// left out and named; well-formed SVG.
func TestChart(t *testing.T) {
	b := dashboard(t)
	start := time.Unix(1_800_000_000, 0)
	series := func(labels model.Metric, vs ...float64) *model.SampleStream {
		ss := &model.SampleStream{Metric: labels}
		for i, v := range vs {
			ss.Values = append(ss.Values, model.SamplePair{Timestamp: model.TimeFromUnix(start.Unix() + int64(i)), Value: model.SampleValue(v)})
		}
		return ss
	}
	ch := chart{start: start, end: start.Add(3 * time.Second), outage: [2]float64{1, 2}, subtitle: []string{"a <test> & co", "line 2"}}
	var first panel
	for i, p := range b.Panels {
		ms := make([]model.Matrix, len(p.Targets))
		if i == 0 {
			first = p
			ms[0] = model.Matrix{
				series(model.Metric{"limit": "api", "outcome": "allowed"}, 1, 2, 3),
				series(model.Metric{"limit": "api", "outcome": "denied"}, 0, 5, 1, 2),
			}
		}
		if got := ch.addPanel(p, ms); got != (i == 0) {
			t.Errorf("panel %q: drawn %v", p.Title, got)
		}
	}
	if len(ch.panels) != 1 || len(ch.missing) != len(b.Panels)-1 {
		t.Fatalf("%d panels, %d missing", len(ch.panels), len(ch.missing))
	}
	d := ch.panels[0]
	if d.title != first.Title || len(d.lines) != 2 || d.lines[0].name != "api allowed" || d.lines[1].name != "api denied" ||
		!slices.Equal(d.lines[1].xs, []float64{0, 1, 2, 3}) || !slices.Equal(d.lines[1].ys, []float64{0, 5, 1, 2}) {
		t.Errorf("%+v", d)
	}
	svg := ch.svg()
	dec := xml.NewDecoder(strings.NewReader(svg))
	for {
		_, err := dec.Token()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("not well-formed: %v\n%s", err, svg)
		}
	}
	for _, want := range []string{"api denied", "a &lt;test&gt; &amp; co", "line 2", "Redis down", "Panels not drawn", b.Panels[1].Title} {
		if !strings.Contains(svg, want) {
			t.Errorf("the SVG has no %q", want)
		}
	}
}

func TestWithRangeAndLegend(t *testing.T) {
	if got, want := withRange("sum(rate(x[1m])) / sum(rate(y{a=\"[1m]\"}[5m]))", "15s"), "sum(rate(x[15s])) / sum(rate(y{a=\"[15s]\"}[15s]))"; got != want {
		// A label value that looks like a range is rewritten too: the
		// dashboard has none.
		t.Errorf("withRange: %s, want %s", got, want)
	}
	if got := withRange("rate(x[1m])", ""); got != "rate(x[1m])" {
		t.Errorf("withRange with no range: %s", got)
	}
	if got := legend("p99 {{backend}} {{ missing }}", map[string]string{"backend": "redis"}, "x"); got != "p99 redis " {
		t.Errorf("legend: %q", got)
	}
	if got := legend("", nil, `{a="b"}`); got != `{a="b"}` {
		t.Errorf("legend without a format: %q", got)
	}
}
