package harness

import (
	"strings"
	"testing"
	"time"

	"github.com/edgelimit/caddy-edgelimit/store"
)

// TestOutageChargedBack: under Yaegi, onError local through an outage of
// Redis. A client had used 3 of its 5 a minute in Redis; while Redis is
// down, the plugin counts alone and lets it have its own 5. Before, that
// never reached Redis: once it answered, the client had 2 more there (and a
// token bucket was full again). Now what the plugin counted is charged to
// Redis before Redis decides again: 3 + 5 of 5, denied until the window
// ends. Redis keeps its data over the outage (a snapshot it loads again),
// as a paused or partitioned Redis would.
func TestOutageChargedBack(t *testing.T) {
	p := loadPlugin(t)
	r := privateRedis(t)
	clk := newClock()
	h := p.middleware(t, "limits:\n  l:\n    key: [header:X-Key]\n    limit: 5\n    window: 1m\nstorage:\n  redis:\n    address: "+r.Addr+
		"\n    clock: local\n    timeout: 1s\n    disableLocalDenials: true\n    onError: local\n", clk.Now, &upstream{})
	for i := 0; i < 3; i++ {
		if w := send(h, "GET", "/", "X-Key", "hard"); w.Code != 200 {
			t.Fatalf("before the outage, request %d: %d", i, w.Code)
		}
	}
	if out, err := r.command("SAVE"); err != nil || out != "+OK" {
		t.Fatalf("SAVE: %q %v", out, err)
	}
	_ = r.cmd.Process.Kill()
	_, _ = r.cmd.Process.Wait()
	r.cmd = nil
	for i, want := range []int{200, 200, 200, 200, 200, 429} {
		if w := send(h, "GET", "/", "X-Key", "hard"); w.Code != want {
			t.Fatalf("during the outage, request %d: %d, want %d", i, w.Code, want)
		}
	}
	if err := r.start(); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(20 * time.Second)
	for !answersAgain(r.Addr) {
		if time.Now().After(deadline) {
			t.Fatal("Redis answers, and the plugin did not say it noticed within 20s")
		}
		time.Sleep(10 * time.Millisecond)
	}
	w := send(h, "GET", "/", "X-Key", "hard")
	if w.Code != 429 || w.Header().Get("X-Ratelimit-Remaining") != "0" {
		t.Fatalf("after the outage: %d remaining %s, want 429 and 0 (Redis holds 3 + the 5 counted here)", w.Code, w.Header().Get("X-Ratelimit-Remaining"))
	}
	clk.Add(time.Minute)
	if w := send(h, "GET", "/", "X-Key", "hard"); w.Code != 200 || w.Header().Get("X-Ratelimit-Remaining") != "4" {
		t.Fatalf("the next window: %d remaining %s", w.Code, w.Header().Get("X-Ratelimit-Remaining"))
	}
}

// answersAgain tells whether the plugin noted that the Redis at addr
// answers again.
func answersAgain(addr string) bool {
	for _, line := range debugLog.lines("redis rate-limit storage answers again") {
		if strings.Contains(line, "redis "+addr+":") {
			return true
		}
	}
	return false
}

// TestOutageWarned: Redis dies under a running middleware with local
// denials (the default) and onError local. Its subscription to the
// invalidations notices first and warns; the plugin's store log then
// swallowed the failure's own warning ("unavailable; on_error applies",
// with onError and the cause), which the core writes once per outage, so
// that a real Traefik's log said only that local denials were off, every
// five seconds, for as long as Redis stayed down. The failure's warning is
// throttled by the core, not again by the plugin.
func TestOutageWarned(t *testing.T) {
	p := loadPlugin(t)
	r := privateRedis(t)
	h := p.middleware(t, "limits:\n  l:\n    key: [header:X-Key]\n    limit: 10000\n    window: 1m\nstorage:\n  redis:\n    address: "+r.Addr+
		"\n    timeout: 200ms\n    onError: local\n", newClock().Now, &upstream{})
	if w := send(h, "GET", "/", "X-Key", "k"); w.Code != 200 {
		t.Fatalf("before the outage: %d", w.Code)
	}
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		if out, err := r.command("PUBSUB", "NUMSUB", "edgelimit:invalidate"); err == nil && strings.HasSuffix(out, ":1") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the plugin did not subscribe to the invalidations within 20s")
		}
	}
	_ = r.cmd.Process.Kill()
	_, _ = r.cmd.Process.Wait()
	r.cmd = nil
	name := "redis " + r.Addr + ":"
	for deadline := time.Now().Add(20 * time.Second); len(errorLog.lines(name+" "+store.NoSubscriptionWarning)) == 0; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("no warning of the lost subscription within 20s")
		}
	}
	// Requests for up to two warning intervals and a half: the failure's
	// warning comes with the first of them.
	for deadline := time.Now().Add(store.WarnInterval * 5 / 2); len(errorLog.lines(name+" "+store.UnavailableWarning+" (onError local)")) == 0; time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("Redis down for %s, and no warning of its failure; the log about it:\n%s", store.WarnInterval*5/2, strings.Join(errorLog.lines(r.Addr), "\n"))
		}
		if w := send(h, "GET", "/", "X-Key", "k"); w.Code != 200 {
			t.Fatalf("during the outage (onError local, 10000 a minute): %d", w.Code)
		}
	}
}
