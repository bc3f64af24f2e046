package edgelimit

import (
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/edgelimit/caddy-edgelimit/limiter"
)

func TestJSONConfigDefaults(t *testing.T) {
	l := &Limit{Name: "a", Numbers: Numbers{Limit: 5, Window: caddy.Duration(time.Minute)}}
	cl, err := compileLimit(l, "z")
	if err != nil {
		t.Fatal(err)
	}
	if cl.limit.Algorithm != limiter.FixedWindow || cl.cost != 1 || len(cl.keys) != 1 || cl.keys[0].kind != keyClientIP {
		t.Fatalf("defaults: %+v", cl)
	}
	if cl.counters[0] != "r/z/a/fixed_window#0" {
		t.Fatalf("counter %q", cl.counters[0])
	}
	g, _ := compileLimit(&Limit{Name: "a", Numbers: Numbers{Limit: 5, Window: caddy.Duration(time.Minute)}, Scope: "global"}, "z")
	if g.counters[0] != "g/a/fixed_window#0" {
		t.Fatalf("global counter %q", g.counters[0])
	}
}
