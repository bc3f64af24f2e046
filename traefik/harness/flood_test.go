package harness

import (
	"strconv"
	"strings"
	"testing"
	"time"
)

// waitWarning waits until the plugin has logged (at error level, as
// Traefik shows its warnings) a line about the Redis at addr holding s,
// and returns how many it logged.
func waitWarning(t *testing.T, addr, s string) int {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		n := 0
		for _, line := range errorLog.lines(s) {
			if strings.Contains(line, "redis "+addr+":") {
				n++
			}
		}
		if n > 0 {
			return n
		}
		if time.Now().After(deadline) {
			t.Fatalf("no warning %q about %s", s, addr)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// privateRedis is a redis-server of the test's own, with its memory
// settings.
func privateRedis(t *testing.T, settings ...string) *redisServer {
	startRedis(t) // skips without redis-server
	r, err := launchRedis()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(r.stop)
	for i := 0; i+1 < len(settings); i += 2 {
		if out, err := r.command("CONFIG", "SET", settings[i], settings[i+1]); err != nil || out != "+OK" {
			t.Fatalf("CONFIG SET %s %s: %q %v", settings[i], settings[i+1], out, err)
		}
	}
	return r
}

// oomErrors is how many commands Redis refused at its maxmemory.
func oomErrors(t *testing.T, r *redisServer) int {
	t.Helper()
	out, err := r.command("INFO", "errorstats")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(out, "\r\n") {
		if rest, ok := strings.CutPrefix(line, "errorstat_OOM:count="); ok {
			n, _ := strconv.Atoi(rest)
			return n
		}
	}
	return 0
}

// TestKeyFloodNoEviction: under Yaegi, the plugin on a Redis at its
// maxmemory with noeviction, filled by a flood of made-up keys (a new
// X-Key per request). Before, the OOM refusal was a failure of Redis:
// onError decided every request, and with allow nobody was limited. Now a
// client Redis holds as exhausted gets its 429 (the first denial of one
// that had not been denied yet too, though Redis cannot write its mark);
// a client Redis has no room for is decided by onError (allow: through,
// uncounted; deny: 503); the plugin warns that Redis is full.
func TestKeyFloodNoEviction(t *testing.T) {
	p := loadPlugin(t)
	r := privateRedis(t, "maxmemory-policy", "noeviction", "maxmemory", "2mb")
	clk := newClock()
	conf := func(onError string) string {
		return "limits:\n  l:\n    key: [header:X-Key]\n    limit: 3\n    window: 1h\nstorage:\n  redis:\n    address: " + r.Addr +
			"\n    clock: local\n    keyPrefix: \"flood:\"\n    disableLocalDenials: true\n    onError: " + onError + "\n"
	}
	h := p.middleware(t, conf("allow"), clk.Now, &upstream{})
	deny := p.middleware(t, conf("deny"), clk.Now, &upstream{})
	for i, want := range []int{200, 200, 200, 429} {
		if w := send(h, "GET", "/", "X-Key", "victim"); w.Code != want {
			t.Fatalf("victim, request %d: %d", i, w.Code)
		}
	}
	for i := 0; i < 3; i++ {
		if w := send(h, "GET", "/", "X-Key", "spent"); w.Code != 200 {
			t.Fatalf("spent, request %d: %d", i, w.Code)
		}
	}
	sent := 0
	for ; sent < 50000 && (sent%200 != 0 || oomErrors(t, r) == 0); sent++ {
		send(h, "GET", "/", "X-Key", "made-up-"+itoa(sent))
	}
	if oomErrors(t, r) == 0 {
		t.Fatalf("%d made-up keys and Redis never refused a write", sent)
	}
	t.Logf("Redis full after %d made-up keys", sent)
	for _, c := range []struct {
		key   string
		codes []int
	}{
		{"victim", []int{429, 429, 429}},
		{"spent", []int{429, 429, 429}},
		{"fresh", []int{200, 200, 200, 200, 200}},
	} {
		for i, want := range c.codes {
			if w := send(h, "GET", "/", "X-Key", c.key); w.Code != want || want == 429 && w.Header().Get("Retry-After") != "3600" {
				t.Errorf("onError allow, %s, request %d: %d Retry-After %q, want %d", c.key, i, w.Code, w.Header().Get("Retry-After"), want)
			}
		}
	}
	if w := send(deny, "GET", "/", "X-Key", "victim"); w.Code != 429 {
		t.Errorf("onError deny, the victim: %d", w.Code)
	}
	if w := send(deny, "GET", "/", "X-Key", "fresh"); w.Code != 503 {
		t.Errorf("onError deny, a fresh client: %d", w.Code)
	}
	waitWarning(t, r.Addr, "is full (OOM at maxmemory)")
}

// TestEvictionWarning: under Yaegi, the plugin warns once, when its store
// is made, that a Redis with allkeys-lru can evict exhausted clients'
// counters.
func TestEvictionWarning(t *testing.T) {
	p := loadPlugin(t)
	r := privateRedis(t, "maxmemory-policy", "allkeys-lru", "maxmemory", "64mb")
	clk := newClock()
	h := p.middleware(t, "limits:\n  l:\n    limit: 3\n    window: 1h\nstorage:\n  redis:\n    address: "+r.Addr+"\n    clock: local\n", clk.Now, &upstream{})
	if w := send(h, "GET", "/"); w.Code != 200 {
		t.Fatal(w.Code)
	}
	waitWarning(t, r.Addr, "maxmemory-policy allkeys-lru")
	send(h, "GET", "/")
	if n := waitWarning(t, r.Addr, "maxmemory-policy allkeys-lru"); n != 1 {
		t.Errorf("%d warnings", n)
	}
}
