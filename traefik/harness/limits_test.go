package harness

import (
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"
)

// stores are the storage settings every behaviour test runs with: memory,
// and a real redis-server on the test's fake clock (clock: local), under
// a key prefix of the test's own.
func stores(t *testing.T) map[string]func(t *testing.T) string {
	return map[string]func(t *testing.T) string{
		"memory": func(t *testing.T) string { return "" },
		"redis": func(t *testing.T) string {
			r := startRedis(t)
			return fmt.Sprintf(`
storage:
  redis:
    address: %s
    clock: local
    timeout: 2s
    keyPrefix: "%s:"
`, r.Addr, strings.ReplaceAll(t.Name(), "/", "-"))
		},
	}
}

// step is one request of a scenario: the clock moves by advance first.
type step struct {
	advance   time.Duration
	status    int
	remaining int64 // -1: not checked
	retry     int64 // Retry-After on a denial; 0: not checked
}

// TestAlgorithms runs every algorithm through the plugin under Yaegi, in
// memory and on Redis: a client gets exactly its limit, is told when to
// retry, and gets through when that time has passed.
func TestAlgorithms(t *testing.T) {
	p := loadPlugin(t)
	cases := []struct {
		name   string
		limit  string
		offset time.Duration // from the start of the hour
		steps  []step
	}{
		{"fixed_window", "algorithm: fixed_window\n    limit: 3\n    window: 1m", 0, []step{
			{0, 200, 2, 0}, {0, 200, 1, 0}, {0, 200, 0, 0}, {0, 429, 0, 60},
			{59 * time.Second, 429, 0, 1}, {time.Second, 200, 2, 0},
		}},
		{"anchored_window", "algorithm: anchored_window\n    limit: 3\n    window: 1m", 10 * time.Second, []step{
			{0, 200, 2, 0}, {0, 200, 1, 0}, {0, 200, 0, 0}, {0, 429, 0, 60},
			{30 * time.Second, 429, 0, 30}, {30 * time.Second, 200, 2, 0},
		}},
		{"sliding_window", "algorithm: sliding_window\n    limit: 3\n    window: 1m", 0, []step{
			{0, 200, 2, 0}, {0, 200, 1, 0}, {0, 200, 0, 0}, {0, 429, 0, 80},
			{time.Minute, 429, 0, 20}, {20 * time.Second, 200, -1, 0},
		}},
		{"token_bucket", "algorithm: token_bucket\n    limit: 3\n    refill: 1\n    window: 1s", 0, []step{
			{0, 200, 2, 0}, {0, 200, 1, 0}, {0, 200, 0, 0}, {0, 429, 0, 1},
			{time.Second, 200, 0, 0}, {0, 429, 0, 1}, {3 * time.Second, 200, 2, 0},
		}},
		{"gcra", "algorithm: gcra\n    limit: 3\n    refill: 3\n    window: 3s", 0, []step{
			{0, 200, 2, 0}, {0, 200, 1, 0}, {0, 200, 0, 0}, {0, 429, 0, 1},
			{time.Second, 200, 0, 0}, {0, 429, 0, 1},
		}},
	}
	for storeName, storage := range stores(t) {
		for _, c := range cases {
			t.Run(storeName+"/"+c.name, func(t *testing.T) {
				clk := newClock()
				clk.Add(c.offset)
				up := &upstream{}
				h := p.middleware(t, "limits:\n  "+c.name+":\n    key: [header:X-Api-Key, ip]\n    "+c.limit+"\n"+storage(t), clk.Now, up)
				allowed := 0
				for i, s := range c.steps {
					clk.Add(s.advance)
					w := send(h, "GET", "/", "X-Api-Key", "client-1")
					checkStep(t, i, w.Code, w.Header(), s)
					if w.Code == 200 {
						allowed++
					}
					if reset := w.Header().Get("X-Ratelimit-Reset"); reset == "" {
						t.Errorf("step %d: no X-RateLimit-Reset", i)
					}
				}
				if up.count() != allowed {
					t.Errorf("upstream saw %d requests, %d were allowed", up.count(), allowed)
				}
				// Another client has its own counter.
				if w := send(h, "GET", "/", "X-Api-Key", "client-2"); w.Code != 200 {
					t.Errorf("another client: status %d", w.Code)
				}
			})
		}
	}
}

func checkStep(t *testing.T, i, code int, hdr http.Header, s step) {
	t.Helper()
	if code != s.status {
		t.Errorf("step %d: status %d, want %d", i, code, s.status)
		return
	}
	if s.remaining >= 0 {
		if got := hdr.Get("X-Ratelimit-Remaining"); got != strconv.FormatInt(s.remaining, 10) {
			t.Errorf("step %d: X-RateLimit-Remaining %q, want %d", i, got, s.remaining)
		}
	}
	if s.retry > 0 {
		if got := hdr.Get("Retry-After"); got != strconv.FormatInt(s.retry, 10) {
			t.Errorf("step %d: Retry-After %q, want %d", i, got, s.retry)
		}
	}
	if code == 200 && hdr.Get("Retry-After") != "" {
		t.Errorf("step %d: Retry-After on an allowed request", i)
	}
}

// TestStoresAgree replays one sequence of requests on memory and on Redis
// (asked on every request) and expects the same responses, headers
// included, to the byte.
func TestStoresAgree(t *testing.T) {
	p := loadPlugin(t)
	conf := `
limits:
  minute:
    key: [header:X-Api-Key, ip]
    limit: 5
    window: 1m
  burst:
    key: [ip]
    algorithm: token_bucket
    limit: 4
    refill: 1
    window: 2s
  daily:
    key: [header:X-Api-Key]
    limit: 7
    calendar:
      period: day
      at: "06:00"
      timeZone: Europe/Paris
headers: both
timeHeader: true
`
	run := func(t *testing.T, storage string) []string {
		clk := newClock()
		h := p.middleware(t, conf+storage, clk.Now, &upstream{})
		var out []string
		for i := 0; i < 14; i++ {
			w := send(h, "GET", "/", "X-Api-Key", "agree")
			out = append(out, fmt.Sprintf("%d %v %s", w.Code, w.Header(), w.Body.String()))
			clk.Add(700 * time.Millisecond)
		}
		return out
	}
	var mem, red []string
	t.Run("memory", func(t *testing.T) { mem = run(t, "") })
	// Without local denials: a client denied here is reported with its
	// other limits as Redis last said (TestLocalDenials), where memory
	// reports them as they are now.
	t.Run("redis", func(t *testing.T) { red = run(t, stores(t)["redis"](t)+"    disableLocalDenials: true\n") })
	if red == nil {
		return
	}
	for i := range mem {
		if mem[i] != red[i] {
			t.Errorf("request %d:\nmemory %s\nredis  %s", i, mem[i], red[i])
		}
	}
}
