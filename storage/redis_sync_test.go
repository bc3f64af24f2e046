package storage_test

import (
	"context"
	"testing"
	"time"

	"github.com/edgelimit/caddy-edgelimit/internal/clock"
	"github.com/edgelimit/caddy-edgelimit/internal/redistest"
	"github.com/edgelimit/caddy-edgelimit/limiter"
	"github.com/edgelimit/caddy-edgelimit/storage"
	"github.com/edgelimit/caddy-edgelimit/store"
	"github.com/edgelimit/caddy-edgelimit/store/storetest"
)

// fakeSyncClock is a fake clock as store.Synced waits on it.
type fakeSyncClock struct{ f *clock.Fake }

func (c fakeSyncClock) Now() time.Time { return c.f.Now() }
func (c fakeSyncClock) Sleep(ctx context.Context, d time.Duration) error {
	return clock.Sleep(ctx, c.f, d)
}

// waitMerged waits until every merge goroutine of the stores sleeps again
// on f: the merges that f's last move woke are done.
func waitMerged(t *testing.T, f *clock.Fake, stores ...*store.Synced) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		n := 0
		for _, s := range stores {
			n += s.Running()
		}
		if f.Sleepers() == n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d merge goroutines, %d asleep after 20s", n, f.Sleepers())
		}
		time.Sleep(200 * time.Microsecond)
	}
}

// TestRedisSyncTwoInstances: two instances on one Redis, one API-wide key
// (key api) with sync 100ms, on a fake clock; every 10ms, 9 requests reach
// the first and 1 the second (a 90/10 balancer), 60 seconds long. Each
// counts in memory and merges every 100ms, admitting from the shared total.
// Over the minute they admit at least what one exact counter would (the
// busy instance is not held to a share) and at most that plus what the
// instances admit in one interval: instances x (900 requests a second at
// the busiest) x 100ms = 180.
func TestRedisSyncTwoInstances(t *testing.T) {
	srv := redistest.Start(t)
	const (
		step     = 10 * time.Millisecond
		every    = 100 * time.Millisecond
		steps    = 6000 // one minute
		perStepA = 9
		perStepB = 1
		slack    = 2 * perStepA * int(every/step) // instances x busiest rate x interval
	)
	cases := []struct {
		name  string
		limit limiter.Limit
		exact int // what one exact counter admits over the minute
	}{
		{"fixed_window", limiter.Limit{Algorithm: limiter.FixedWindow, Quota: 1000, Window: time.Minute}, 1000},
		{"sliding_window", limiter.Limit{Algorithm: limiter.SlidingWindow, Quota: 1000, Window: time.Minute}, 1000},
		{"anchored_window", limiter.Limit{Algorithm: limiter.AnchoredWindow, Quota: 1000, Window: time.Minute}, 1000},
		// 100 at once, then 100 a second: 100 + 59.99 x 100.
		{"token_bucket", limiter.Limit{Algorithm: limiter.TokenBucket, Quota: 100, Rate: 100, Window: time.Second}, 100 + 5999},
		{"gcra", limiter.Limit{Algorithm: limiter.GCRA, Quota: 100, Rate: 100, Window: time.Second}, 100 + 5999},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			f := clock.NewFake(storetest.Base)
			prefix := storetest.Prefix(t)
			synced := syncedInstances(t, srv, f, prefix, 2)
			ctx := context.Background()
			reqs := []store.Request{{Counter: "g/api/" + tc.name + "#0", Key: "api", Limit: tc.limit, Cost: 1, Sync: every}}
			res := make([]limiter.Result, 1)
			admitted := [2]int{}
			for i := 0; i < steps; i++ {
				if i > 0 {
					f.Add(step)
				}
				waitMerged(t, f, synced...)
				now := f.Now()
				for k, n := range []int{perStepA, perStepB} {
					for range n {
						if err := synced[k].Take(ctx, now, reqs, res); err != nil {
							t.Fatal(err)
						}
						if res[0].Allowed {
							admitted[k]++
						}
					}
				}
			}
			// One exact counter, the same requests.
			mem := store.NewMemory(store.MemoryOptions{})
			exact := 0
			for i := 0; i < steps; i++ {
				for range perStepA + perStepB {
					if err := mem.Take(ctx, storetest.Base.Add(time.Duration(i)*step), reqs, res); err != nil {
						t.Fatal(err)
					}
					if res[0].Allowed {
						exact++
					}
				}
			}
			if exact != tc.exact {
				t.Fatalf("one exact counter admitted %d, want %d", exact, tc.exact)
			}
			total := admitted[0] + admitted[1]
			t.Logf("%s: admitted %d (%d + %d), exact %d, bound %d; merges %d + %d, charged %d + %d",
				tc.name, total, admitted[0], admitted[1], tc.exact, tc.exact+slack,
				synced[0].Merges(), synced[1].Merges(), synced[0].Charged(), synced[1].Charged())
			if total < tc.exact || total > tc.exact+slack {
				t.Fatalf("admitted %d over the minute, want %d to %d", total, tc.exact, tc.exact+slack)
			}
			if synced[0].Merges() == 0 || synced[1].Merges() == 0 {
				t.Fatal("no merges")
			}
		})
	}
}

// TestRedisSyncOutage: a merge that fails (Redis stopped) keeps its
// charges; the instance counts on from its view meanwhile, and the next
// merge that reaches Redis charges all of it. A store without sync then
// finds in Redis every request the two instances admitted; closing the
// stores ends their merges.
func TestRedisSyncOutage(t *testing.T) {
	srv := redistest.Start(t, "--appendonly", "yes", "--appendfsync", "always")
	f := clock.NewFake(storetest.Base)
	prefix := storetest.Prefix(t)
	const every = 100 * time.Millisecond
	open := func() *storage.Redis {
		return openRedis(t, srv, storage.RedisOptions{LocalClock: true, Prefix: prefix, NoLocalDenials: true,
			Timeout: 2 * time.Second, RetryInterval: 20 * time.Millisecond})
	}
	var synced []*store.Synced
	for range 2 {
		r := open()
		synced = append(synced, store.NewSynced(r, r, fakeSyncClock{f}))
	}
	ctx := context.Background()
	lim := limiter.Limit{Algorithm: limiter.FixedWindow, Quota: 100, Window: time.Hour}
	reqs := []store.Request{{Counter: "g/api/fixed_window#0", Key: "api", Limit: lim, Cost: 1, Sync: every}}
	res := make([]limiter.Result, 1)
	take := func(s *store.Synced, n int) {
		t.Helper()
		for range n {
			if err := s.Take(ctx, f.Now(), reqs, res); err != nil || !res[0].Allowed {
				t.Fatal(err, res[0])
			}
		}
	}
	// Seeded from Redis, then 4 from each view.
	take(synced[0], 5)
	take(synced[1], 5)
	f.Add(every)
	waitMerged(t, f, synced...)
	srv.Stop()
	take(synced[0], 10)
	take(synced[1], 10)
	f.Add(every)
	waitMerged(t, f, synced...)
	for i, s := range synced {
		if s.Failures() == 0 {
			t.Fatalf("instance %d: no merge failed with Redis stopped", i)
		}
	}
	// Still counting, from its view: the total of its last merge (6 or
	// 10, as the two merges landed in one order or the other) and its 11
	// since.
	take(synced[0], 1)
	if res[0].Remaining != 100-6-11 && res[0].Remaining != 100-10-11 {
		t.Fatalf("during the outage, instance 0 has %d remaining, want 83 or 79", res[0].Remaining)
	}
	srv.Restart(t)
	f.Add(every)
	waitMerged(t, f, synced...)
	exact := open()
	if err := exact.Take(ctx, f.Now(), reqs[:1:1], res); err != nil {
		t.Fatal(err)
	}
	// The exact store asks Redis (Sync is nothing to it): 31 merged + its own.
	if res[0].Remaining != 100-32 {
		t.Fatalf("after the outage, Redis holds %d, want 31 merged and 1 more", 100-res[0].Remaining)
	}
	var charged uint64
	for _, s := range synced {
		charged += s.Charged()
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
		if s.Running() != 0 {
			t.Fatal("a merge goroutine runs after Close")
		}
	}
	if charged != 29 { // 31 admitted, 2 of them by Redis (the seeds)
		t.Fatalf("charged %d, want 29", charged)
	}
}

// TestRedisSyncFourUnevenInstances: four instances on one Redis, one
// API-wide key with sync 100ms, traffic split unevenly (per 10ms: 12, 3,
// 1 and, every fifth step, a burst of 20 on the last), 30 seconds on a
// fake clock. Together they admit at least what one exact counter admits
// and at most that plus what each instance admits in one interval, once
// per window (a window's count starts afresh) or once for a bucket (the
// shared backlog holds every unit merged: an excess is paid back).
func TestRedisSyncFourUnevenInstances(t *testing.T) {
	srv := redistest.Start(t)
	const (
		step  = 10 * time.Millisecond
		every = 100 * time.Millisecond
		steps = 3000
	)
	per := func(k, i int) int {
		switch k {
		case 0:
			return 12
		case 1:
			return 3
		case 2:
			return 1
		}
		if i%5 == 0 {
			return 20
		}
		return 0
	}
	// What each instance may admit in one interval, all together.
	perInterval := (12 + 3 + 1 + 20/5) * int(every/step)
	cases := []struct {
		name    string
		limit   limiter.Limit
		windows int
	}{
		{"fixed_window", limiter.Limit{Algorithm: limiter.FixedWindow, Quota: 300, Window: 5 * time.Second}, 6},
		{"sliding_window", limiter.Limit{Algorithm: limiter.SlidingWindow, Quota: 300, Window: 5 * time.Second}, 6},
		{"anchored_window", limiter.Limit{Algorithm: limiter.AnchoredWindow, Quota: 300, Window: 5 * time.Second}, 7},
		{"token_bucket", limiter.Limit{Algorithm: limiter.TokenBucket, Quota: 50, Rate: 60, Window: time.Second}, 1},
		{"gcra", limiter.Limit{Algorithm: limiter.GCRA, Quota: 50, Rate: 60, Window: time.Second}, 1},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			f := clock.NewFake(storetest.Base)
			prefix := storetest.Prefix(t)
			synced := syncedInstances(t, srv, f, prefix, 4)
			ctx := context.Background()
			reqs := []store.Request{{Counter: "g/api/" + tc.name + "#0", Key: "api", Limit: tc.limit, Cost: 1, Sync: every}}
			res := make([]limiter.Result, 1)
			mem := store.NewMemory(store.MemoryOptions{})
			defer mem.Close()
			var admitted [4]int
			total, exact := 0, 0
			for i := 0; i < steps; i++ {
				if i > 0 {
					f.Add(step)
				}
				waitMerged(t, f, synced...)
				now := f.Now()
				for k := range synced {
					for range per(k, i) {
						if err := synced[k].Take(ctx, now, reqs, res); err != nil {
							t.Fatal(err)
						}
						if res[0].Allowed {
							admitted[k]++
							total++
						}
						if err := mem.Take(ctx, now, reqs, res); err != nil {
							t.Fatal(err)
						}
						if res[0].Allowed {
							exact++
						}
					}
				}
			}
			bound := exact + tc.windows*perInterval
			t.Logf("%s: admitted %d %v, exact %d, bound %d", tc.name, total, admitted, exact, bound)
			if total < exact || total > bound {
				t.Fatalf("admitted %d, want %d to %d", total, exact, bound)
			}
		})
	}
}

// TestRedisSyncRefundAfterMerge: a request taken from a view, charged to
// Redis by a merge and then given back, is given back in Redis by the
// next merge (store.Synced owes it).
func TestRedisSyncRefundAfterMerge(t *testing.T) {
	srv := redistest.Shared(t)
	const every = 100 * time.Millisecond
	for _, l := range []limiter.Limit{
		{Algorithm: limiter.FixedWindow, Quota: 10, Window: time.Hour},
		{Algorithm: limiter.GCRA, Quota: 10, Rate: 1, Window: time.Hour},
	} {
		t.Run(l.Algorithm.String(), func(t *testing.T) {
			f := clock.NewFake(storetest.Base.Add(time.Minute))
			r := openRedis(t, srv, storage.RedisOptions{LocalClock: true, Prefix: storetest.Prefix(t)})
			s := store.NewSynced(r, r, fakeSyncClock{f})
			t.Cleanup(func() { s.Close() })
			ctx := context.Background()
			req := []store.Request{{Counter: "api", Key: "k", Limit: l, Cost: 1, Sync: every}}
			res := make([]limiter.Result, 1)
			for range 3 {
				if err := s.Take(ctx, f.Now(), req, res); err != nil || !res[0].Allowed {
					t.Fatalf("%+v %v", res[0], err)
				}
			}
			waitMerged(t, f, s)
			f.Add(every)
			waitMerged(t, f, s)
			for range 2 {
				if err := s.Refund(ctx, f.Now(), req); err != nil {
					t.Fatal(err)
				}
			}
			f.Add(every)
			waitMerged(t, f, s)
			peek := make([]limiter.Result, 1)
			if err := r.Peek(ctx, f.Now(), req, peek); err != nil {
				t.Fatal(err)
			}
			if peek[0].Remaining != 9 {
				t.Fatalf("one unit kept of three taken: Redis has %+v, want 9 left", peek[0])
			}
		})
	}
}

// syncedInstances are n instances' Redis stores on srv under prefix, each
// wrapped in a store.Synced on the fake clock f, closed with the test.
func syncedInstances(t *testing.T, srv *redistest.Server, f *clock.Fake, prefix string, n int) []*store.Synced {
	t.Helper()
	var synced []*store.Synced
	for range n {
		r := openRedis(t, srv, storage.RedisOptions{LocalClock: true, Prefix: prefix})
		s := store.NewSynced(r, r, fakeSyncClock{f})
		t.Cleanup(func() { s.Close() })
		synced = append(synced, s)
	}
	return synced
}
