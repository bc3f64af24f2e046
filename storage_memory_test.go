package edgelimit

import (
	"fmt"
	"io"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/edgelimit/caddy-edgelimit/internal/clock"
	"github.com/edgelimit/caddy-edgelimit/store"
)

// TestOneClockDecidesAndSweeps: the memory store's sweeper reads the clock
// the handler decides with. On a clock a year behind the real one, a sweep
// keeps the counters that clock calls live (a sweeper on the real clock
// dropped them all, and an exhausted client passed again); once that
// clock passes their window, a sweep drops them.
func TestOneClockDecidesAndSweeps(t *testing.T) {
	clk := clock.NewFake(clock.TestBase().AddDate(-1, 0, 0))
	t.Cleanup(clock.Install(clk))
	s := startSite(t, `
%ADDR% {
	edge_limit {
		limit hourly {
			rate 2/1h
		}
	}
	respond "ok"
}`)
	expect(t, s.get("/"), 200)
	expect(t, s.get("/"), 200)
	expect(t, s.get("/"), 429)

	app, err := caddy.ActiveContext().App("edge_limit")
	if err != nil {
		t.Fatal(err)
	}
	mem, ok := app.(*App).store.(*store.Memory)
	if !ok {
		t.Fatalf("store %T", app.(*App).store)
	}
	if n := mem.Sweep(clk.Now()); n != 0 {
		t.Fatalf("a sweep dropped %d live counters", n)
	}
	expect(t, s.get("/"), 429)

	clk.Add(time.Hour)
	if n := mem.Sweep(clk.Now()); n != 1 {
		t.Fatalf("a sweep past the window dropped %d counters, want 1", n)
	}
	expect(t, s.get("/"), 200)
}

// TestKeyFloodKeepsExhaustedClientsDenied: through Caddy, a memory store
// bounded to 5,120 keys, 20 clients that exhausted their limit, then
// 15,000 requests with made-up keys: every exhausted client is still
// denied (it passed again once its counter was evicted).
func TestKeyFloodKeepsExhaustedClientsDenied(t *testing.T) {
	fakeClock(t)
	s := startSite(t, `
%ADDR% {
	edge_limit {
		limit api {
			key {header.X-Key}
			rate 10/1h
		}
		storage memory {
			max_keys 5120
		}
	}
	respond "ok"
}`)
	const clients, flood = 20, 15_000
	for c := range clients {
		key := fmt.Sprint("client-", c)
		for range 10 {
			expect(t, s.get("/", "X-Key", key), 200)
		}
		expect(t, s.get("/", "X-Key", key), 429)
	}
	client := &http.Client{Timeout: 30 * time.Second}
	var wg sync.WaitGroup
	var failed atomic.Int64
	for w := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := w; i < flood; i += 8 {
				req, _ := http.NewRequest(http.MethodGet, s.base+"/", nil)
				req.Header.Set("X-Key", fmt.Sprint("made-up-", i))
				resp, err := client.Do(req)
				if err != nil {
					failed.Add(1)
					continue
				}
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
			}
		}()
	}
	wg.Wait()
	if failed.Load() != 0 {
		t.Fatalf("%d flood requests failed", failed.Load())
	}
	for c := range clients {
		expect(t, s.get("/", "X-Key", fmt.Sprint("client-", c)), 429)
	}
}
