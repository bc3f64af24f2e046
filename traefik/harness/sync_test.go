package harness

import (
	"net/http"
	"strings"
	"testing"
	"time"
)

// TestSyncUnderYaegi: under Yaegi, two middlewares (two instances) with an
// API-wide limit of 10 an hour on one key (const:api) and sync 20ms, on one
// Redis. Each counts in its memory, from the total it last merged: the
// first 5 at each are admitted, 2 of them asked of Redis (the first request
// each instance sees there). The merges bring Redis to the total: a third
// middleware, without sync, is denied once they landed, with 0 remaining,
// and so is each instance once it merged again. Then a new window admits.
func TestSyncUnderYaegi(t *testing.T) {
	p := loadPlugin(t)
	r := privateRedis(t)
	clk := newClock()
	conf := func(sync string) string {
		c := "limits:\n  api:\n    key: [const:api]\n    scope: global\n    limit: 10\n    window: 1h\n"
		if sync != "" {
			c += "    sync: " + sync + "\n"
		}
		return c + "storage:\n  redis:\n    address: " + r.Addr + "\n    clock: local\n    timeout: 1s\n    disableLocalDenials: true\n"
	}
	h1 := p.middleware(t, conf("20ms"), clk.Now, &upstream{})
	h2 := p.middleware(t, conf("20ms"), clk.Now, &upstream{})
	exact := p.middleware(t, conf(""), clk.Now, &upstream{})
	admitted := 0
	for i := 0; i < 5; i++ {
		for k, h := range []http.Handler{h1, h2} {
			if w := send(h, "GET", "/"); w.Code != 200 {
				t.Fatalf("instance %d, request %d: %d", k, i, w.Code)
			}
			admitted++
		}
	}
	// poll sends to h until it is denied (within 10s), and returns how many
	// it admitted meanwhile.
	poll := func(name string, h http.Handler) int {
		t.Helper()
		n := 0
		deadline := time.Now().Add(10 * time.Second)
		for {
			w := send(h, "GET", "/")
			if w.Code == 429 {
				if rem := w.Header().Get("X-Ratelimit-Remaining"); rem != "0" {
					t.Fatalf("%s denied with %s remaining", name, rem)
				}
				return n
			}
			n++
			if time.Now().After(deadline) {
				t.Fatalf("%s still admits after 10s (%d admitted)", name, n)
			}
			time.Sleep(2 * time.Millisecond) // pace the polls: one interval is 20ms
		}
	}
	extra := poll("the middleware without sync", exact)
	extra += poll("instance 1", h1)
	extra += poll("instance 2", h2)
	t.Logf("admitted %d, then %d while the merges landed", admitted, extra)
	clk.Add(time.Hour)
	for k, h := range []http.Handler{h1, h2, exact} {
		if w := send(h, "GET", "/"); w.Code != 200 {
			t.Fatalf("the next window, middleware %d: %d", k, w.Code)
		}
	}
}

// TestSyncConfigErrors: sync's errors name the option, under Yaegi.
func TestSyncConfigErrors(t *testing.T) {
	p := loadPlugin(t)
	for conf, want := range map[string]string{
		"limits:\n  l:\n    limit: 5\n    window: 1m\n    sync: often":                                                              `sync "often"`,
		"limits:\n  l:\n    limit: 5\n    window: 1m\n    sync: 2m":                                                                 "sync 2m0s: want an interval from 1ms to 1m0s",
		"limits:\n  l:\n    limit: 5\n    window: 1m\n    sync: 100ms\n    ban: 60s":                                                "sync does not go with ban",
		"limits:\n  l:\n    algorithm: token_bucket\n    limit: 5\n    refill: 1\n    window: 1s\n    wait: 100ms\n    sync: 100ms": "sync does not go with wait",
	} {
		var m map[string]interface{}
		if err := yamlUnmarshal(conf, &m); err != nil {
			t.Fatal(err)
		}
		cfg, err := p.decode(m)
		if err == nil {
			_, err = p.newHandler(cfg, &upstream{}, "bad")
		}
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%q: error %v, want one that says %q", conf, err, want)
		}
	}
}
