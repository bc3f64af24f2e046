package main

import (
	"math"
	"testing"
	"time"
)

// Every query of the dashboard is in the subset this program evaluates.
func TestParsesTheDashboard(t *testing.T) {
	panels, err := loadDashboard("../edgelimit.json", "15s")
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, p := range panels {
		n += len(p.nodes)
	}
	if len(panels) < 6 || n < 8 {
		t.Fatalf("%d panels, %d queries", len(panels), n)
	}
}

func history(t *testing.T, texts ...string) []scrape {
	t.Helper()
	base := time.Unix(1_000_000, 0)
	var h []scrape
	for i, text := range texts {
		s := scrape{at: base.Add(time.Duration(i) * time.Second)}
		for _, l := range splitLines(text) {
			x, err := parseSample(l)
			if err != nil {
				t.Fatal(err)
			}
			s.samples = append(s.samples, x)
		}
		h = append(h, s)
	}
	return h
}

func splitLines(s string) []string {
	var out []string
	for len(s) > 0 {
		i := 0
		for i < len(s) && s[i] != '\n' {
			i++
		}
		if i > 0 {
			out = append(out, s[:i])
		}
		s = s[min(i+1, len(s)):]
	}
	return out
}

func eval1(t *testing.T, expr string, h []scrape) []series {
	t.Helper()
	n, err := parse(expr)
	if err != nil {
		t.Fatal(err)
	}
	return n.eval(h, len(h)-1)
}

func TestRateSumTopkDivide(t *testing.T) {
	h := history(t,
		`caddy_edge_limit_decisions_total{limit="a",outcome="allowed"} 0
caddy_edge_limit_decisions_total{limit="a",outcome="denied"} 0
caddy_edge_limit_decisions_total{limit="b",outcome="denied"} 0`,
		`caddy_edge_limit_decisions_total{limit="a",outcome="allowed"} 10
caddy_edge_limit_decisions_total{limit="a",outcome="denied"} 2
caddy_edge_limit_decisions_total{limit="b",outcome="denied"} 4`,
		// a counter reset (a process restart): 10 then 3 is an increase of 3
		`caddy_edge_limit_decisions_total{limit="a",outcome="allowed"} 3
caddy_edge_limit_decisions_total{limit="a",outcome="denied"} 4
caddy_edge_limit_decisions_total{limit="b",outcome="denied"} 8`)
	got := eval1(t, `sum by (limit) (rate(caddy_edge_limit_decisions_total{outcome="denied"}[1m]))`, h)
	if len(got) != 2 || got[0].labels["limit"] != "a" || got[0].value != 2 || got[1].value != 4 {
		t.Fatalf("sum by: %+v", got)
	}
	got = eval1(t, `topk(1, sum by (limit) (rate(caddy_edge_limit_decisions_total{outcome="denied"}[1m])))`, h)
	if len(got) != 1 || got[0].labels["limit"] != "b" {
		t.Fatalf("topk: %+v", got)
	}
	got = eval1(t, `sum(rate(caddy_edge_limit_decisions_total{outcome="allowed"}[1m]))`, h)
	if len(got) != 1 || got[0].value != 6.5 {
		t.Fatalf("rate across a reset: %+v", got)
	}
	got = eval1(t, `sum(rate(caddy_edge_limit_decisions_total{outcome="denied"}[1m])) / sum(rate(caddy_edge_limit_decisions_total[1m]))`, h)
	if len(got) != 1 || math.Abs(got[0].value-6.0/12.5) > 1e-9 {
		t.Fatalf("ratio: %+v", got)
	}
	// A range that holds one sample has no rate.
	if got := eval1(t, `sum(rate(caddy_edge_limit_decisions_total[1s]))`, h); len(got) != 0 {
		t.Fatalf("rate of one sample: %+v", got)
	}
}

func TestHistogramQuantile(t *testing.T) {
	h := history(t,
		`caddy_edge_limit_storage_duration_seconds_bucket{backend="memory",le="1e-06"} 0
caddy_edge_limit_storage_duration_seconds_bucket{backend="memory",le="2e-06"} 0
caddy_edge_limit_storage_duration_seconds_bucket{backend="memory",le="+Inf"} 0`,
		`caddy_edge_limit_storage_duration_seconds_bucket{backend="memory",le="1e-06"} 50
caddy_edge_limit_storage_duration_seconds_bucket{backend="memory",le="2e-06"} 100
caddy_edge_limit_storage_duration_seconds_bucket{backend="memory",le="+Inf"} 100`)
	got := eval1(t, `histogram_quantile(0.75, sum by (le, backend) (rate(caddy_edge_limit_storage_duration_seconds_bucket[1m])))`, h)
	if len(got) != 1 || got[0].labels["backend"] != "memory" || math.Abs(got[0].value-1.5e-6) > 1e-12 {
		t.Fatalf("p75: %+v", got)
	}
	got = eval1(t, `histogram_quantile(0.25, sum by (le, backend) (rate(caddy_edge_limit_storage_duration_seconds_bucket[1m])))`, h)
	if len(got) != 1 || math.Abs(got[0].value-0.5e-6) > 1e-12 {
		t.Fatalf("p25: %+v", got)
	}
}

func TestParseErrors(t *testing.T) {
	for _, bad := range []string{"", "sum(", "rate(x)", `x{a="b}`, "topk(, x)", "sum(x) extra"} {
		if _, err := parse(bad); err == nil {
			t.Errorf("%q parsed", bad)
		}
	}
}
