package storage_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/edgelimit/caddy-edgelimit/internal/redistest"
	"github.com/edgelimit/caddy-edgelimit/limiter"
	"github.com/edgelimit/caddy-edgelimit/storage"
	"github.com/edgelimit/caddy-edgelimit/store"
	"github.com/edgelimit/caddy-edgelimit/store/storetest"
)

// Limits with bans and waits decide alike in Redis (the Lua of
// store/lua.go) and in memory (limiter.DecideBan, takeShaped): random
// limits, bans, waits, takes, checks, charges, dry runs and refunds.
func TestRedisBansAndWaitsMatchMemory(t *testing.T) {
	srv := redistest.Shared(t)
	rng := rand.New(rand.NewPCG(5, 13))
	for round := range 12 {
		mem := store.NewMemory(store.MemoryOptions{})
		red := openRedis(t, srv, storage.RedisOptions{LocalClock: true, NoLocalDenials: true, Prefix: storetest.Prefix(t)})
		var limits []limiter.Limit
		for i := range 4 {
			l := storage.RandomLimit(rng)
			if i < 3 {
				l.Ban = time.Duration(1+rng.IntN(40)) * time.Second
			}
			if (l.Algorithm == limiter.TokenBucket || l.Algorithm == limiter.GCRA) && rng.IntN(3) > 0 {
				l.Wait = time.Duration(1+rng.IntN(8000)) * time.Millisecond
			}
			limits = append(limits, l)
		}
		now := storetest.Base.Add(time.Duration(rng.IntN(100000)) * time.Second)
		banned, waited := 0, 0
		for step := range 200 {
			now = now.Add(time.Duration(rng.IntN(4)) * time.Second * time.Duration(rng.IntN(3)))
			n := 1 + rng.IntN(3)
			reqs := make([]store.Request, n)
			for j := range reqs {
				li := rng.IntN(len(limits))
				reqs[j] = store.Request{
					Counter: fmt.Sprintf("c%d", li),
					Key:     []string{"a", "b"}[rng.IntN(2)],
					Limit:   limits[li],
					Cost:    1 + int64(rng.IntN(3))*int64(rng.IntN(2)),
					DryRun:  rng.IntN(8) == 0,
				}
				switch rng.IntN(6) {
				case 0:
					reqs[j].Mode = store.ModeCheck
				case 1:
					reqs[j].Mode = store.ModeCharge
					reqs[j].Cost = []int64{1, 2, 7, 40}[rng.IntN(4)]
				}
			}
			if rng.IntN(6) == 0 {
				if err := mem.Refund(context.Background(), now, reqs); err != nil {
					t.Fatal(err)
				}
				if err := red.Refund(context.Background(), now, reqs); err != nil {
					t.Fatal(err)
				}
				continue
			}
			want := make([]limiter.Result, n)
			got := make([]limiter.Result, n)
			if err := mem.Take(context.Background(), now, reqs, want); err != nil {
				t.Fatal(err)
			}
			if err := red.Take(context.Background(), now, reqs, got); err != nil {
				t.Fatal(err)
			}
			for j := range want {
				if got[j] != want[j] {
					t.Fatalf("round %d step %d take %d (%+v at %s):\nredis  %+v\nmemory %+v",
						round, step, j, reqs[j].Limit, now.Sub(storetest.Base), got[j], want[j])
				}
				if want[j].Banned {
					banned++
				}
				if want[j].Allowed && want[j].RetryAfter > 0 {
					waited++
				}
			}
		}
		if banned == 0 {
			t.Fatalf("round %d: no ban met", round)
		}
		if waited == 0 {
			t.Logf("round %d: no wait", round)
		}
		mem.Close()
	}
}

// A ban is kept with the counter: another instance on the same Redis
// denies the client too, local denials answer it without a round trip
// until the ban ends, inspect shows it, and reset lifts it everywhere.
func TestRedisBanAcrossInstances(t *testing.T) {
	srv := redistest.Start(t)
	c := srv.Client(t)
	ctx := context.Background()
	l := limiter.Limit{Algorithm: limiter.FixedWindow, Quota: 2, Window: time.Minute, Ban: 10 * time.Minute}
	reqs := []store.Request{{Counter: "login", Key: "mallory", Limit: l, Cost: 1}}
	prefix := storetest.Prefix(t)
	one := openRedis(t, srv, storage.RedisOptions{LocalClock: true, Prefix: prefix})
	two := openRedis(t, srv, storage.RedisOptions{LocalClock: true, Prefix: prefix})
	waitLocalDenials(t, one, true)
	waitLocalDenials(t, two, true)
	evals := func() int64 { s := commandStats(t, c); return s["evalsha"] + s["eval"] }
	now := storetest.Base.Add(5 * time.Second)
	res := make([]limiter.Result, 1)
	take := func(s store.Store) limiter.Result {
		t.Helper()
		if err := s.Take(ctx, now, reqs, res); err != nil {
			t.Fatal(err)
		}
		return res[0]
	}
	take(one)
	take(one)
	if r := take(one); r.Allowed || !r.Banned || !r.FirstDenial || r.RetryAfter != 10*time.Minute {
		t.Fatalf("the denial that bans: %+v", r)
	}
	// The next window, on the other instance: banned.
	now = storetest.Base.Add(3 * time.Minute)
	if r := take(two); r.Allowed || !r.Banned || r.FirstDenial || r.RetryAfter != 7*time.Minute+5*time.Second ||
		r.ResetAt != storetest.Base.Add(10*time.Minute+5*time.Second).UnixMicro() {
		t.Fatalf("the other instance: %+v", r)
	}
	// Both remember it: no round trip while the ban lasts.
	before := evals()
	for _, s := range []store.Store{one, two} {
		for range 20 {
			now = now.Add(time.Second)
			if r := take(s); r.Allowed || !r.Banned {
				t.Fatalf("a local denial: %+v", r)
			}
		}
	}
	if n := evals() - before; n > 1 {
		t.Fatalf("%d round trips for 40 requests of a banned client", n)
	}
	// Inspect shows the ban and its end.
	peek := make([]limiter.Result, 1)
	if err := one.Peek(ctx, now, reqs, peek); err != nil {
		t.Fatal(err)
	}
	if p := peek[0]; p.Allowed || !p.Banned || p.ResetAt != storetest.Base.Add(10*time.Minute+5*time.Second).UnixMicro() {
		t.Fatalf("inspect: %+v", p)
	}
	// Reset lifts it on both instances.
	if err := one.Reset(ctx, now, reqs); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the reset to reach the other instance", func() bool {
		return take(two).Allowed
	})
	if r := take(one); !r.Allowed || r.Banned {
		t.Fatalf("after the reset: %+v", r)
	}
}

// waitFor polls cond until it holds, for a generous while.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}
