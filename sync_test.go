package edgelimit

import (
	"context"
	"fmt"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/edgelimit/caddy-edgelimit/internal/redistest"
	"github.com/edgelimit/caddy-edgelimit/limiter"
	"github.com/edgelimit/caddy-edgelimit/storage"
	"github.com/edgelimit/caddy-edgelimit/store"
)

// syncGoroutines is the number of goroutines that merge a limit with sync.
func syncGoroutines() int {
	buf := make([]byte, 1<<20)
	n := runtime.Stack(buf, true)
	return strings.Count(string(buf[:n]), "store.(*Synced).run(")
}

// TestSyncThroughCaddy: a limit with sync on Redis, through Caddy on a
// fake clock. The first request is decided by Redis, the next from the
// handler's view (the same headers as an exact count: 4, 3, 2, 1, 0, then
// 429); the fake clock's 100ms runs a merge; a reload stops the merges
// (Cleanup), after a last one, and Redis holds the 5 admitted.
func TestSyncThroughCaddy(t *testing.T) {
	srv := redistest.Shared(t)
	clk := fakeClock(t)
	prefix := fmt.Sprintf("caddysync%d:", time.Now().UnixNano())
	before := syncGoroutines()
	s := startSite(t, `{
	edge_limit {
		storage redis `+srv.URL+` {
			clock local
			key_prefix `+prefix+`
			timeout 5s
		}
	}
}
%ADDR% {
	edge_limit {
		limit api_wide {
			key api
			rate 5/1h
			sync 100ms
			scope global
		}
	}
	respond "ok"
}`)
	for i := 4; i >= 0; i-- {
		expect(t, s.get("/"), 200, "X-RateLimit-Remaining", fmt.Sprint(i))
	}
	expect(t, s.get("/"), 429, "X-RateLimit-Remaining", "0")
	if n := syncGoroutines() - before; n != 1 {
		t.Fatalf("%d merge goroutines, want 1", n)
	}
	clk.Add(100 * time.Millisecond)
	// A reload: the old handler's merges end, after a last one.
	startSite(t, "%ADDR% {\n\trespond \"ok\"\n}")
	deadline := time.Now().Add(10 * time.Second)
	for syncGoroutines() > before {
		if time.Now().After(deadline) {
			t.Fatal("the merges of the old configuration still run 10s after it was replaced")
		}
		time.Sleep(time.Millisecond)
	}
	// Redis holds the 5: an exact store is denied.
	opt, err := redis.ParseURL(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	rs, err := storage.NewRedis(storage.NewRedisClient(&redis.UniversalOptions{Addrs: []string{opt.Addr}, DB: opt.DB}, 5*time.Second),
		storage.RedisOptions{Prefix: prefix, LocalClock: true, NoLocalDenials: true})
	if err != nil {
		t.Fatal(err)
	}
	defer rs.Close()
	res := make([]limiter.Result, 1)
	req := []store.Request{{Counter: "g/api_wide/fixed_window#0", Key: "api", Limit: limiter.Limit{Algorithm: limiter.FixedWindow, Quota: 5, Window: time.Hour}, Cost: 1}}
	if err := rs.Take(context.Background(), clk.Now(), req, res); err != nil || res[0].Allowed {
		t.Fatalf("Redis after the merges: %v %+v, want a denial (5 of 5 merged)", err, res[0])
	}
}
