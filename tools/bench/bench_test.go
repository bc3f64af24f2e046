package main

import (
	"context"
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// wrkOutput is what wrk prints with one of the bench's scripts: its own
// text, then the done() hook's line.
const wrkOutput = `Running 8s test @ http://127.0.0.1:41461/
  1 threads and 64 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     2.31ms    1.98ms  41.02ms   91.20%
    Req/Sec    28.40k     2.11k   31.02k    80.00%
  226118 requests in 8.00s, 28.68MB read
  Socket errors: connect 0, read 2, write 0, timeout 1
  Non-2xx or 3xx responses: 226000
Requests/sec:  28264.04
Transfer/sec:      3.58MB
` + wrkMarker + `{"duration_us":8000000,"requests":226118,"errors":{"connect":0,"read":2,"write":0,"status":226000,"timeout":1},"p50_us":2010,"p99_us":850}
`

func TestParseWrk(t *testing.T) {
	r, err := parseWrk([]byte(wrkOutput))
	if err != nil {
		t.Fatal(err)
	}
	want := wrkResult{Requests: 226118, Seconds: 8, RPS: 226118.0 / 8, P50ms: 2.01, P99ms: 0.85,
		Non2xx: 226000, SocketErrors: 3, Timeouts: 1}
	if r != want {
		t.Errorf("got %+v\nwant %+v", r, want)
	}
	for _, bad := range []string{
		"unable to connect to 127.0.0.1:1 Connection refused",
		wrkMarker + `{"duration_us":0,"requests":0}`,
		wrkMarker + `{"duration_us":"x"}`,
	} {
		if _, err := parseWrk([]byte(bad)); err == nil {
			t.Errorf("no error for %q", bad)
		}
	}
}

// The scripts' done() hook reports wrk's figures: a real wrk, a second
// on loopback against a server that counts what it answers, every fourth
// request with a 429.
func TestWrkScriptReports(t *testing.T) {
	if _, err := exec.LookPath("wrk"); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal("wrk is required under CI (Debian: apt-get install wrk)")
		}
		t.Skip("no wrk (Debian: apt-get install wrk)")
	}
	var served, denied atomic.Int64
	keys := sync.Map{}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		keys.Store(r.Header.Get("X-Api-Key"), true)
		if served.Add(1)%4 == 0 {
			denied.Add(1)
			w.WriteHeader(http.StatusTooManyRequests)
		}
	}))
	script, err := writeScript(t.TempDir(), 50)
	if err != nil {
		t.Fatal(err)
	}
	r, out, err := runWrk(context.Background(), "", script, srv.URL+"/", 4, time.Second)
	srv.Close() // waits for the handlers: the counts are final
	if err != nil {
		t.Fatal(err)
	}
	// wrk counts the responses it read; the server may have answered a
	// few more that wrk's stop cut off.
	if r.Requests < 100 || r.Requests > served.Load() || r.Non2xx < r.Requests/4-4 || r.Non2xx > denied.Load() {
		t.Errorf("wrk reported %+v; the server answered %d, %d of them 429\n%s", r, served.Load(), denied.Load(), out)
	}
	if r.Seconds < 0.9 || r.Seconds > 5 || r.RPS <= 0 || r.P50ms <= 0 || r.P99ms < r.P50ms {
		t.Errorf("wrk reported %+v\n%s", r, out)
	}
	n := 0
	keys.Range(func(k, _ any) bool {
		if !strings.HasPrefix(k.(string), "client-000") {
			t.Errorf("X-Api-Key %q", k)
		}
		n++
		return true
	})
	if n < 10 {
		t.Errorf("%d distinct keys of 50", n)
	}
}

func TestParseRedisInfo(t *testing.T) {
	before := parseRedisInfo("# Commandstats\r\ncmdstat_evalsha:calls=10,usec=1354,usec_per_call=135.40\r\ncmdstat_get:calls=30,usec=1\r\ncmdstat_info:calls=1,usec=5\r\n# CPU\r\nused_cpu_sys:1.5\r\nused_cpu_user:2.25\r\n")
	after := parseRedisInfo("cmdstat_evalsha:calls=20,usec=1\r\ncmdstat_get:calls=60,usec=1\r\ncmdstat_info:calls=2,usec=5\r\ncmdstat_time:calls=10\r\nused_cpu_sys:2\r\nused_cpu_user:2.75\r\n")
	all, evalsha := commands(before, after)
	if all != 50 || evalsha != 10 {
		t.Errorf("commands: %d, evalsha %d", all, evalsha)
	}
	if d := after.cpu - before.cpu; d != 1 {
		t.Errorf("cpu delta %v", d)
	}
}

func TestParseBytesPerKey(t *testing.T) {
	out := "goos: linux\ngoarch: amd64\npkg: github.com/edgelimit/caddy-edgelimit/store\n" +
		"BenchmarkMemoryBytesPerKey\n" + // go test -v's line as a benchmark starts: no result
		"BenchmarkMemoryBytesPerKey/fixed_window-2         \t       1\t1234567890 ns/op\t       135.2 bytes/key\n" +
		"BenchmarkOther/fixed_window-2 \t 1\t 1 ns/op\t 99 bytes/key\n" +
		"BenchmarkMemoryBytesPerKey/token_bucket         \t       1\t1 ns/op\t       141.0 bytes/key\t 12 B/op\nPASS\n"
	got, err := parseBytesPerKey(out)
	if err != nil || len(got) != 2 || got[0] != (algoBytes{"fixed_window", 135.2}) || got[1] != (algoBytes{"token_bucket", 141}) {
		t.Errorf("%+v %v", got, err)
	}
}

func TestCaddyfiles(t *testing.T) {
	p := ports{site: 1001, admin: 1002, redis: 1003, upstream: 1004}
	for _, c := range append(configs, exactConfig(1000, "2s")) {
		cf := caddyfile(c, p)
		if strings.Count(cf, "{") != strings.Count(cf, "}") {
			t.Errorf("%s: unbalanced braces:\n%s", c.Name, cf)
		}
		if !strings.Contains(cf, "admin 127.0.0.1:1002") || !strings.Contains(cf, "http://:1001") || !strings.Contains(cf, "bind 127.0.0.1") {
			t.Errorf("%s: not on loopback:\n%s", c.Name, cf)
		}
		if c.Redis != strings.Contains(cf, "redis://127.0.0.1:1003/0") {
			t.Errorf("%s: Redis:\n%s", c.Name, cf)
		}
	}
}

func TestReportAndChart(t *testing.T) {
	mk := func(seq int, rps float64) sample {
		return sample{Round: 1 + seq/2, Seq: seq, Requests: int64(rps * 8), Seconds: 8, RPS: rps, P50ms: 2, P99ms: 9, perRequest: perRequest{AllocsPerReq: ptr(70)}}
	}
	plain := []sample{mk(0, 30000), mk(2, 31000), mk(4, 29000)}
	r := &results{Date: "2026-01-01 00:00 UTC", Settings: settings{Rounds: 3}, Machine: machine{CPU: "Test <CPU> & co", Cores: 2}}
	r.Configs = []*summary{
		summarize("plain", `respond "ok"`, plain, plain),
		summarize("memory-1", "one limit", []sample{mk(1, 28800), mk(3, 30000), mk(5, 27000)}, plain),
		summarize("cache-hit", "hit", []sample{mk(1, 29000), mk(3, 29500), mk(5, 28000)}, plain),
		summarize("proxy", "proxy", []sample{mk(1, 7000), mk(3, 7100), mk(5, 6900)}, plain),
	}
	r.BytesPerKey = []algoBytes{{"fixed_window", 135}, {"gcra", 210}}
	r.checkTargets()
	// Each measurement over the mean of plain's around it: 28800/30500,
	// 30000/30000, 27000/29000 (no plain after the last).
	if m := r.config("memory-1"); *m.Ratio != 28800.0/30500 || *m.RatioMin != 27000.0/29000 || *m.RatioMax != 1 ||
		*m.RatioOfMedians != 28800.0/30000 || *m.Samples[0].PlainAround != 30500 {
		t.Errorf("ratios %v %v %v %v", *m.Ratio, *m.RatioMin, *m.RatioMax, *m.RatioOfMedians)
	}
	if p := r.config("plain"); *p.Ratio != 1 {
		t.Errorf("plain's ratio %v", *p.Ratio)
	}
	pass := map[string]bool{}
	for _, tg := range r.Targets {
		pass[tg.Name] = tg.Pass
	}
	if pass["memory store, one limit"] || !pass["cache HIT vs reverse_proxy alone"] || !pass["cache HIT vs respond"] || pass["memory store at 1M keys"] {
		t.Errorf("targets: %+v", r.Targets)
	}
	dec := xml.NewDecoder(strings.NewReader(string(r.chart())))
	for {
		_, err := dec.Token()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("chart.svg is not well-formed: %v", err)
		}
	}
	if !strings.Contains(r.table(), "28,800") || !strings.Contains(r.markdown("chart.svg"), "| `memory-1` |") {
		t.Errorf("table:\n%s\nmarkdown:\n%s", r.table(), r.markdown("chart.svg"))
	}

	// Per core: 1 s over the CPU per request, Redis's where it was measured.
	r.config("memory-1").CaddyCPUus = 40
	r.config("proxy").CaddyCPUus, r.config("proxy").RedisCPUus = 125, ptr(20)
	if got, want := r.perCore(), "\nPer core at these costs (1 s / CPU per request): `memory-1` 25,000 req/s per Caddy core; `proxy` 8,000 req/s per Caddy core and 50,000 decisions/s per Redis core.\n"; got != want {
		t.Errorf("perCore:\n%q\nwant\n%q", got, want)
	}

	doc := filepath.Join(t.TempDir(), "benchmarks.md")
	os.WriteFile(doc, []byte("# x\n\n"+resultsBegin+"\nold\n"+resultsEnd+"\nafter\n"), 0o644)
	if err := updateDoc(doc, "new\n"); err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(doc)
	if want := "# x\n\n" + resultsBegin + "\nnew\n" + resultsEnd + "\nafter\n"; string(b) != want {
		t.Errorf("docs/benchmarks.md:\n%s", b)
	}
}

// The default page of -doc has the block the bench rewrites, and links the
// chart from where it is.
func TestDocBlock(t *testing.T) {
	b, err := os.ReadFile(filepath.Join("..", "..", "docs", "benchmarks.md"))
	if err != nil {
		t.Fatal(err)
	}
	s := string(b)
	i, j := strings.Index(s, resultsBegin), strings.Index(s, resultsEnd)
	if i < 0 || j < i {
		t.Fatalf("docs/benchmarks.md has no %q ... %q block", resultsBegin, resultsEnd)
	}
	if !strings.Contains(s[i:j], "](../tools/bench/results/chart.svg)") {
		t.Errorf("docs/benchmarks.md does not link ../tools/bench/results/chart.svg")
	}
}

func TestChartLink(t *testing.T) {
	root := t.TempDir()
	chart := filepath.Join(root, "tools", "bench", "results", "chart.svg")
	for _, c := range []struct{ doc, chart, want string }{
		{filepath.Join(root, "docs", "benchmarks.md"), chart, "../tools/bench/results/chart.svg"},
		{filepath.Join(root, "README.md"), chart, "tools/bench/results/chart.svg"},
		{filepath.Join(root, "docs", "benchmarks.md"), "/elsewhere/chart.svg", "/elsewhere/chart.svg"},
	} {
		if got := chartLink(root, c.doc, c.chart); got != c.want {
			t.Errorf("chartLink(%s, %s) = %q, want %q", c.doc, c.chart, got, c.want)
		}
	}
}

func TestSchedule(t *testing.T) {
	byName := map[string]*config{}
	for _, c := range configs {
		byName[c.Name] = c
	}
	sel := []*config{byName["plain"], byName["memory-1"], byName["memory-3"], byName["deny"]}
	var got []string
	for _, st := range schedule(sel, 2) {
		got = append(got, fmt.Sprintf("%d:%s", st.round, st.c.Name))
	}
	want := "1:plain 1:memory-1 1:plain 1:memory-3 1:plain 1:deny 1:plain " +
		"2:memory-3 2:plain 2:deny 2:plain 2:memory-1 2:plain"
	if strings.Join(got, " ") != want {
		t.Errorf("schedule:\n%s\nwant\n%s", strings.Join(got, " "), want)
	}
	// plain alone, and no plain: each once per round.
	if n := len(schedule(sel[:1], 3)); n != 3 {
		t.Errorf("plain alone: %d steps", n)
	}
	if n := len(schedule(sel[1:], 3)); n != 9 {
		t.Errorf("without plain: %d steps", n)
	}
}
