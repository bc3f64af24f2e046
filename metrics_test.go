package edgelimit

import (
	"io"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"
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
	expectMetrics(t,
		`caddy_edge_limit_decisions_total{limit="metered",outcome="allowed"} 2`,
		`caddy_edge_limit_decisions_total{limit="metered",outcome="denied"} 1`,
		`caddy_edge_limit_decisions_total{limit="shadow",outcome="allowed"} 1`,
		`caddy_edge_limit_decisions_total{limit="shadow",outcome="would_deny"} 2`,
	)
}

// expectMetrics reads the admin endpoint's /metrics until it has each of
// the lines wanted, for up to 10 seconds, on a new connection each time:
// Caddy stops the admin server of the configuration before in the
// background, and until it has, a request (on a connection kept alive
// from an earlier test, or accepted on the listener they share) may get
// that configuration's registry, without this one's series.
func expectMetrics(t *testing.T, wants ...string) {
	t.Helper()
	client := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}, Timeout: 5 * time.Second}
	deadline := time.Now().Add(10 * time.Second)
	for {
		var missing []string
		resp, err := client.Get("http://localhost:" + strconv.Itoa(adminPort()) + "/metrics")
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		for _, want := range wants {
			if !strings.Contains(string(b), want) {
				missing = append(missing, want)
			}
		}
		if len(missing) == 0 {
			return
		}
		if time.Now().After(deadline) {
			for _, m := range missing {
				t.Errorf("metrics lack %s", m)
			}
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
}
