package storage_test

import (
	"context"
	"testing"
	"time"

	"github.com/edgelimit/caddy-edgelimit/internal/redistest"
	"github.com/edgelimit/caddy-edgelimit/limiter"
	"github.com/edgelimit/caddy-edgelimit/storage"
	"github.com/edgelimit/caddy-edgelimit/store"
	"github.com/edgelimit/caddy-edgelimit/store/storetest"
	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"
)

// waitLocalDenials waits (10 s at most) until the store's local denials
// are on (its invalidation subscription confirmed) or off.
func waitLocalDenials(t testing.TB, s *storage.Redis, want bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for s.LocalDenialsActive() != want {
		if time.Now().After(deadline) {
			t.Fatalf("local denials active=%v, want %v after 10s", !want, want)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestAdmin: on the memory and the Redis store, for every algorithm: a
// client over its limit peeks as denied with its retry-after, peeking
// counts nothing, a credit of n lets exactly n more requests through, and
// a reset makes the client whole.
func TestAdmin(t *testing.T) {
	srv := redistest.Shared(t)
	stores := map[string]func(t *testing.T) store.Store{
		"memory": func(t *testing.T) store.Store {
			m := store.NewMemory(store.MemoryOptions{})
			t.Cleanup(func() { m.Close() })
			return m
		},
		"redis": func(t *testing.T) store.Store {
			return openRedis(t, srv, storage.RedisOptions{LocalClock: true, Prefix: storetest.Prefix(t)})
		},
	}
	limits := map[string]limiter.Limit{
		"fixed":    {Algorithm: limiter.FixedWindow, Quota: 4, Window: time.Minute},
		"calendar": {Algorithm: limiter.FixedWindow, Quota: 4, Calendar: limiter.CalendarWindow{Period: limiter.Day, Location: time.UTC}.Cached()},
		"anchored": {Algorithm: limiter.AnchoredWindow, Quota: 4, Window: time.Minute},
		"sliding":  {Algorithm: limiter.SlidingWindow, Quota: 4, Window: time.Minute},
		"bucket":   {Algorithm: limiter.TokenBucket, Quota: 4, Rate: 1, Window: time.Minute},
		"gcra":     {Algorithm: limiter.GCRA, Quota: 4, Rate: 4, Window: time.Minute},
	}
	ctx := context.Background()
	for sname, open := range stores {
		for lname, l := range limits {
			t.Run(sname+"/"+lname, func(t *testing.T) {
				s := open(t)
				a := s.(store.Admin)
				now := storetest.Base.Add(10 * time.Second)
				req := []store.Request{{Counter: "c/" + lname, Key: "client", Limit: l, Cost: 1}}
				res := make([]limiter.Result, 1)
				take := func() limiter.Result {
					t.Helper()
					if err := s.Take(ctx, now, req, res); err != nil {
						t.Fatal(err)
					}
					return res[0]
				}
				peek := func() limiter.Result {
					t.Helper()
					if err := a.Peek(ctx, now, req, res); err != nil {
						t.Fatal(err)
					}
					return res[0]
				}
				if p := peek(); !p.Allowed || p.Remaining != 4 {
					t.Fatalf("fresh: %+v", p)
				}
				for range 4 {
					if r := take(); !r.Allowed {
						t.Fatalf("denied early: %+v", r)
					}
				}
				denial := take()
				if denial.Allowed {
					t.Fatal("allowed past the limit")
				}
				for range 3 {
					p := peek()
					if p.Allowed || p.Remaining != 0 || p.RetryAfter != denial.RetryAfter || p.FirstDenial {
						t.Fatalf("peek %+v, the denial said %+v", p, denial)
					}
				}
				given := make([]int64, 1)
				if err := a.Credit(ctx, now, req, 2, given); err != nil {
					t.Fatal(err)
				}
				if given[0] != 2 {
					t.Fatalf("credit gave %d, want 2", given[0])
				}
				if p := peek(); !p.Allowed || p.Remaining != 2 {
					t.Fatalf("after credit: %+v", p)
				}
				for i := range 2 {
					if r := take(); !r.Allowed {
						t.Fatalf("credited request %d denied: %+v", i+1, r)
					}
				}
				if r := take(); r.Allowed {
					t.Fatal("a credit of 2 let 3 through")
				}
				if err := a.Reset(ctx, now, req); err != nil {
					t.Fatal(err)
				}
				if r := take(); !r.Allowed || r.Remaining != 3 {
					t.Fatalf("after reset: %+v", r)
				}
				// A credit larger than what was counted fills the window
				// or bucket, no more.
				if err := a.Credit(ctx, now, req, 100, given); err != nil {
					t.Fatal(err)
				}
				if p := peek(); given[0] != 1 || p.Remaining != 4 {
					t.Fatalf("credit 100 after one request: gave %d, remaining %d", given[0], p.Remaining)
				}
			})
		}
	}
}

// TestRedisInvalidation: two stores on one Redis, local denials on. B
// denies a client from its memory; a reset through A makes B ask Redis
// again, and B allows at once. A credit does the same.
func TestRedisInvalidation(t *testing.T) {
	srv := redistest.Start(t)
	c := srv.Client(t)
	prefix := storetest.Prefix(t)
	a := openRedis(t, srv, storage.RedisOptions{LocalClock: true, Prefix: prefix})
	b := openRedis(t, srv, storage.RedisOptions{LocalClock: true, Prefix: prefix})
	waitLocalDenials(t, a, true)
	waitLocalDenials(t, b, true)
	ctx := context.Background()
	l := limiter.Limit{Algorithm: limiter.FixedWindow, Quota: 2, Window: time.Hour}
	req := []store.Request{{Counter: "hour", Key: "k", Limit: l, Cost: 1}}
	res := make([]limiter.Result, 1)
	now := storetest.Base.Add(time.Second)
	evals := func() int64 { s := commandStats(t, c); return s["evalsha"] + s["eval"] }
	for _, op := range []string{"reset", "credit"} {
		for range 3 {
			if err := b.Take(ctx, now, req, res); err != nil {
				t.Fatal(err)
			}
		}
		if res[0].Allowed {
			t.Fatal("not denied")
		}
		before := evals()
		if err := b.Take(ctx, now, req, res); err != nil || res[0].Allowed || evals() != before {
			t.Fatalf("%s: B does not deny from memory: %v %+v, %d round trips", op, err, res[0], evals()-before)
		}
		switch op {
		case "reset":
			if err := a.Reset(ctx, now, req); err != nil {
				t.Fatal(err)
			}
		default:
			if err := a.Credit(ctx, now, req, 1, make([]int64, 1)); err != nil {
				t.Fatal(err)
			}
		}
		// B hears of it through pub/sub: it allows as soon as the message
		// is in (waited for, not slept for).
		start := time.Now()
		deadline := start.Add(5 * time.Second)
		for {
			if err := b.Take(ctx, now, req, res); err != nil {
				t.Fatal(err)
			}
			if res[0].Allowed {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s through A: B still denies after 5s", op)
			}
			time.Sleep(time.Millisecond)
		}
		t.Logf("%s through A: B allowed after %s", op, time.Since(start))
		now = now.Add(time.Hour)
	}
}

// TestRedisLocalDenialsNeedSubscription: while the invalidation
// subscription is down (Redis restarting), the store does not use local
// denials; once it is back, it does again.
func TestRedisLocalDenialsNeedSubscription(t *testing.T) {
	srv := redistest.Start(t)
	s := openRedis(t, srv, storage.RedisOptions{LocalClock: true, Prefix: storetest.Prefix(t), RetryInterval: 50 * time.Millisecond})
	waitLocalDenials(t, s, true)
	srv.Stop()
	waitLocalDenials(t, s, false)
	srv.Restart(t)
	waitLocalDenials(t, s, true)
}

// The invalidation subscription warns when it is refused (a Redis user
// without the channel's permission: local denials are off), and says
// nothing when the store closes it.
func TestRedisSubscriptionWarnings(t *testing.T) {
	srv := redistest.Start(t)
	core, logs := observer.New(zap.WarnLevel)

	s := openRedis(t, srv, storage.RedisOptions{LocalClock: true, Prefix: storetest.Prefix(t)})
	s.SetLogger(zap.New(core))
	waitLocalDenials(t, s, true)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if n := logs.Len(); n != 0 {
		t.Fatalf("closing the store logged %d warnings: %v", n, logs.All())
	}

	if err := srv.Client(t).Do(context.Background(), "ACL", "SETUSER", "nochan", "on", ">pw", "~*", "+@all", "resetchannels").Err(); err != nil {
		t.Skipf("this Redis has no ACL channels: %v", err)
	}
	opt, _ := redis.ParseURL(srv.URL)
	client := storage.NewRedisClient(&redis.UniversalOptions{Addrs: []string{opt.Addr}, Username: "nochan", Password: "pw"}, testTimeout)
	refused, err := storage.NewRedis(client, storage.RedisOptions{LocalClock: true, Timeout: testTimeout, Prefix: storetest.Prefix(t)})
	if err != nil {
		t.Fatal(err)
	}
	refused.SetLogger(zap.New(core))
	defer refused.Close()
	deadline := time.Now().Add(10 * time.Second)
	for logs.FilterMessageSnippet("no subscription to the invalidations").Len() == 0 {
		if time.Now().After(deadline) {
			t.Fatalf("no warning after 10s: %v", logs.All())
		}
		time.Sleep(5 * time.Millisecond)
	}
	if refused.LocalDenialsActive() {
		t.Fatal("local denials on without a subscription")
	}
}
