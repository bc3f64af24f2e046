package edgelimit

import (
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/edgelimit/caddy-edgelimit/internal/clock"
	"github.com/edgelimit/caddy-edgelimit/storage"
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
	mem, ok := app.(*App).store.(*storage.Memory)
	if !ok {
		t.Fatalf("store %T", app.(*App).store)
	}
	if n := mem.Sweep(); n != 0 {
		t.Fatalf("a sweep dropped %d live counters", n)
	}
	expect(t, s.get("/"), 429)

	clk.Add(time.Hour)
	if n := mem.Sweep(); n != 1 {
		t.Fatalf("a sweep past the window dropped %d counters, want 1", n)
	}
	expect(t, s.get("/"), 200)
}
