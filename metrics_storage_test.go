package edgelimit

import (
	"bufio"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/edgelimit/caddy-edgelimit/internal/redistest"
	"github.com/edgelimit/caddy-edgelimit/storage"
)

// scrape reads the admin endpoint's /metrics into series ("name{labels}",
// as Prometheus's text format writes them) and their values.
func scrape(t testing.TB) map[string]float64 {
	t.Helper()
	resp, err := http.Get("http://localhost:" + strconv.Itoa(adminPort()) + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		b, _ := io.ReadAll(resp.Body)
		t.Fatalf("/metrics: %d %s", resp.StatusCode, b)
	}
	out := make(map[string]float64)
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || line[0] == '#' {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			t.Fatalf("metrics line %q: %v", line, err)
		}
		out[line[:i]] = v
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

// edgeSeries are the edge_limit series of a scrape.
func edgeSeries(m map[string]float64) []string {
	var out []string
	for s := range m {
		if strings.HasPrefix(s, "caddy_edge_limit_") {
			out = append(out, s)
		}
	}
	return out
}

func wantSeries(t *testing.T, m map[string]float64, series string, want float64) {
	t.Helper()
	if got, ok := m[series]; !ok {
		t.Errorf("no series %s", series)
	} else if got != want {
		t.Errorf("%s = %v, want %v", series, got, want)
	}
}

// The memory store: one storage_duration_seconds observation per decision
// (however many limits it holds), and memory_keys counts (limit, client).
func TestMetricsStorageMemory(t *testing.T) {
	fakeClock(t)
	s := startSite(t, `
%ADDR% {
	edge_limit {
		limit per_client {
			key {header.X-Client}
			rate 3/1m
		}
		limit all {
			key {header.X-Client}
			rate 1000/1m
		}
		storage memory {
			max_keys 4096
		}
	}
	respond "ok"
}`)
	const clients, each = 4, 5 // 3 allowed and 2 denied per client
	for c := range clients {
		for range each {
			s.get("/", "X-Client", fmt.Sprint("client-", c))
		}
	}
	s.get("/") // no key: no decision
	m := scrape(t)
	wantSeries(t, m, `caddy_edge_limit_storage_duration_seconds_count{backend="memory"}`, clients*each)
	wantSeries(t, m, `caddy_edge_limit_memory_keys`, 2*clients)
	wantSeries(t, m, `caddy_edge_limit_memory_evictions_total`, 0)
	wantSeries(t, m, `caddy_edge_limit_decisions_total{limit="per_client",outcome="allowed"}`, 3*clients)
	wantSeries(t, m, `caddy_edge_limit_decisions_total{limit="per_client",outcome="denied"}`, 2*clients)
	// Every decision is in the histogram's buckets. (How long one took is
	// not for a test to say: under -race on a loaded machine, a memory
	// decision has taken over a millisecond.)
	wantSeries(t, m, `caddy_edge_limit_storage_duration_seconds_bucket{backend="memory",le="+Inf"}`, clients*each)
	for _, kind := range []string{"timeout", "connection", "script", "oom", "other"} {
		wantSeries(t, m, `caddy_edge_limit_redis_errors_total{kind="`+kind+`"}`, 0)
	}
	for _, action := range []string{"allow", "deny", "local"} {
		wantSeries(t, m, `caddy_edge_limit_on_error_total{action="`+action+`"}`, 0)
	}
	wantSeries(t, m, `caddy_edge_limit_local_denials_total`, 0)
	wantSeries(t, m, `caddy_edge_limit_redis_carried_units_total`, 0)
}

// Many distinct clients add keys to the store, not series to the metrics.
func TestMetricsClientsAddNoSeries(t *testing.T) {
	fakeClock(t)
	s := startSite(t, `
%ADDR% {
	edge_limit {
		limit per_client {
			key {header.X-Client}
			rate 1/1m
		}
		storage memory {
			max_keys 8192
		}
	}
	respond "ok"
}`)
	s.get("/", "X-Client", "first")
	s.get("/", "X-Client", "first")
	before := edgeSeries(scrape(t))
	const clients = 300
	for c := range clients {
		s.get("/", "X-Client", fmt.Sprint("client-", c))
		s.get("/", "X-Client", fmt.Sprint("client-", c))
	}
	m := scrape(t)
	after := edgeSeries(m)
	if len(after) != len(before) {
		t.Fatalf("%d edge_limit series after %d clients, %d after one:\n%s", len(after), clients, len(before), strings.Join(after, "\n"))
	}
	for _, s := range after {
		if strings.Contains(s, "client-") {
			t.Fatalf("a client key in a series: %s", s)
		}
	}
	wantSeries(t, m, `caddy_edge_limit_memory_keys`, clients+1)
	wantSeries(t, m, `caddy_edge_limit_storage_duration_seconds_count{backend="memory"}`, 2*clients+2)
}

// Redis: local denials are counted; when the test's redis-server is killed,
// the errors by kind and every decision of on_error local.
func TestMetricsRedisDown(t *testing.T) {
	srv := redistest.Start(t)
	clk := fakeClock(t)
	s := startSite(t, `
%ADDR% {
	edge_limit {
		limit per_client {
			key {header.X-Client}
			rate 2/1m
		}
		storage redis `+srv.URL+` {
			clock local
			on_error local
			timeout 2s
		}
	}
	respond "ok"
}`)
	waitLocalDenials(t)
	for i, want := range []int{200, 200, 429, 429, 429} {
		if r := s.get("/", "X-Client", "a"); r.status != want {
			t.Fatalf("request %d: %d, want %d", i, r.status, want)
		}
	}
	m := scrape(t)
	wantSeries(t, m, `caddy_edge_limit_storage_duration_seconds_count{backend="redis"}`, 5)
	// The first denial asked Redis; the two after it were answered here.
	wantSeries(t, m, `caddy_edge_limit_local_denials_total`, 2)
	wantSeries(t, m, `caddy_edge_limit_redis_errors_total{kind="connection"}`, 0)
	wantSeries(t, m, `caddy_edge_limit_on_error_total{action="local"}`, 0)

	srv.Stop()
	clk.Add(time.Minute) // past the remembered denial: each request asks Redis
	const down = 6
	for i := range down {
		if r := s.get("/", "X-Client", "a"); r.status != 200 && r.status != 429 {
			t.Fatalf("request %d with Redis down: %d %s", i, r.status, r.body)
		}
	}
	m = scrape(t)
	wantSeries(t, m, `caddy_edge_limit_on_error_total{action="local"}`, down)
	wantSeries(t, m, `caddy_edge_limit_on_error_total{action="allow"}`, 0)
	wantSeries(t, m, `caddy_edge_limit_storage_duration_seconds_count{backend="redis"}`, 5+down)
	// The first request found Redis gone (its connection closed, or the
	// dial refused); the others were decided locally at once, but for a
	// probe after the retry interval on a slow machine.
	if n := m[`caddy_edge_limit_redis_errors_total{kind="connection"}`]; n < 1 || n > down {
		t.Errorf("connection errors: %v, want 1 to %d", n, down)
	}
	wantSeries(t, m, `caddy_edge_limit_redis_errors_total{kind="script"}`, 0)
	wantSeries(t, m, `caddy_edge_limit_redis_errors_total{kind="other"}`, 0)
	// on_error local decides in memory: its keys count.
	wantSeries(t, m, `caddy_edge_limit_memory_keys`, 1)
	wantSeries(t, m, `caddy_edge_limit_redis_carried_units_total`, 0)

	// Redis back: the 2 counted here meanwhile are charged to it.
	srv.Restart(t)
	deadline := time.Now().Add(20 * time.Second)
	for scrape(t)[`caddy_edge_limit_redis_carried_units_total`] == 0 {
		if time.Now().After(deadline) {
			t.Fatal("Redis answers, and nothing was carried to it within 20s")
		}
		time.Sleep(10 * time.Millisecond)
	}
	wantSeries(t, scrape(t), `caddy_edge_limit_redis_carried_units_total`, 2)
	if r := s.get("/", "X-Client", "a"); r.status != 429 {
		t.Fatalf("after the outage: %d, want 429 (Redis holds the 2 counted here)", r.status)
	}
}

// The dashboard uses the names metrics.go registers.
func TestMetricNamesRegistered(t *testing.T) {
	fakeClock(t)
	startSite(t, `
%ADDR% {
	edge_limit {
		limit per_client {
			key {header.X-Client}
			rate 2/1m
		}
	}
	respond "ok"
}`)
	m := scrape(t)
	for _, name := range metricNames {
		found := false
		for s := range m {
			base := s
			if i := strings.IndexByte(s, '{'); i >= 0 {
				base = s[:i]
			}
			if base == name || base == name+"_count" {
				found = true
				break
			}
		}
		// decisions_total and storage_duration have series only once a
		// limit decided.
		if !found && name != metricDecisions && name != metricStorageDuration {
			t.Errorf("%s is not registered", name)
		}
	}
}

// Observing a decision's latency allocates nothing: the allowed path gains
// no allocation. Nothing on that path is pooled, so the count holds under
// the race detector too (which drops sync.Pool items at random).
func TestStorageTimerAllocatesNothing(t *testing.T) {
	m := buildMetrics()
	timer := m.timerFor(nil)
	if n := testing.AllocsPerRun(1000, func() { timer.observe(time.Now()) }); n != 0 {
		t.Fatalf("%v allocations per observation", n)
	}
	var none storeTimer
	none.observe(time.Now()) // without metrics: nothing, no panic
}

// waitLocalDenials waits (10 s at most) until every Redis store of the
// running configuration uses local denials (its invalidation subscription
// is confirmed).
func waitLocalDenials(t *testing.T) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		active := true
		for _, e := range liveRegistry.Load().list() {
			if r, ok := e.store.(*storage.Redis); ok && !r.LocalDenialsActive() {
				active = false
			}
		}
		if active {
			return
		}
		if time.Now().After(deadline) {
			t.Fatal("local denials not active after 10s")
		}
		time.Sleep(5 * time.Millisecond)
	}
}
