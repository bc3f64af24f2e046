package edgelimit

import (
	"io"
	"net/http"
	"strconv"
	"strings"
	"testing"
)

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
