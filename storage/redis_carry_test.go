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
)

// waitUp waits until every store uses Redis again.
func waitUp(t *testing.T, stores ...*storage.Redis) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for _, s := range stores {
		for s.RedisDown() {
			if time.Now().After(deadline) {
				t.Fatal("Redis answers, and a store did not use it again within 20s")
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
}

// TestRedisOutageChargedBack: two instances on one Redis with on_error
// local, a token bucket of 10 (1 a second) and a window of 5 a minute, and
// a client that drives both hard through a 20-second outage. Each instance
// counts alone meanwhile (its own bucket and window: the instances' split).
// Before, that was all: what they admitted never reached Redis, whose
// bucket was full again after the outage (10 more at once, and issue 21's
// soak measured 134 to 162 times what one shared bucket admits), and whose
// window still had 2 left. Now what each instance counted is charged to
// Redis when it answers, before Redis decides again: the bucket owes 20
// tokens (10 from each instance's backlog), so the client waits 11 seconds
// for its next one; the window holds 3 + 5 + 5 and denies until its end.
// Redis keeps its data over the outage (append-only file), as a paused or
// partitioned Redis would.
func TestRedisOutageChargedBack(t *testing.T) {
	srv := redistest.Start(t, "--appendonly", "yes", "--appendfsync", "always")
	prefix := storetest.Prefix(t)
	open := func() *storage.Redis {
		return openRedis(t, srv, storage.RedisOptions{LocalClock: true, Prefix: prefix, OnError: store.Local,
			NoLocalDenials: true, Timeout: 2 * time.Second, RetryInterval: 20 * time.Millisecond})
	}
	a, b := open(), open()
	ctx := context.Background()
	bucket := []store.Request{{Counter: "bucket", Key: "hard", Limit: limiter.Limit{Algorithm: limiter.TokenBucket, Quota: 10, Rate: 1, Window: time.Second}, Cost: 1}}
	window := []store.Request{{Counter: "window", Key: "hard", Limit: limiter.Limit{Algorithm: limiter.FixedWindow, Quota: 5, Window: time.Minute}, Cost: 1}}
	res := make([]limiter.Result, 1)
	// drive takes until denied (at most 100), and returns how many passed.
	drive := func(s *storage.Redis, now time.Time, reqs []store.Request) int {
		t.Helper()
		for n := 0; n < 100; n++ {
			if err := s.Take(ctx, now, reqs, res); err != nil {
				t.Fatal(err)
			}
			if !res[0].Allowed {
				return n
			}
		}
		t.Fatal("100 takes and no denial")
		return 0
	}
	now := storetest.Base
	if n := drive(a, now, bucket); n != 10 {
		t.Fatalf("before the outage, the bucket admitted %d", n)
	}
	for range 3 {
		if err := a.Take(ctx, now, window, res); err != nil || !res[0].Allowed {
			t.Fatal(err, res[0])
		}
	}

	srv.Stop()
	admitted := [2]int{}
	for sec := 0; sec <= 20; sec++ {
		for i, s := range []*storage.Redis{a, b} {
			admitted[i] += drive(s, now, bucket)
			if sec == 0 {
				if n := drive(s, now, window); n != 5 {
					t.Fatalf("instance %d's own window admitted %d", i, n)
				}
			}
		}
		if sec < 20 {
			now = now.Add(time.Second)
		}
	}
	// Each instance's own bucket: 10, then 1 a second. One shared bucket,
	// empty when the outage began, would have admitted 20.
	if admitted != [2]int{30, 30} {
		t.Fatalf("admitted during the outage: %v", admitted)
	}
	if !a.RedisDown() || !b.RedisDown() {
		t.Fatal("the stores did not notice the outage")
	}

	srv.Restart(t)
	waitUp(t, a, b)
	for i, s := range []*storage.Redis{a, b} {
		// 10 tokens of backlog and 5 in the window, from each.
		if st := s.Stats(); st.Carried != 15 || st.CarryDropped != 0 {
			t.Fatalf("instance %d carried %d (dropped %d), want 15", i, st.Carried, st.CarryDropped)
		}
	}
	for i, s := range []*storage.Redis{a, b} {
		if err := s.Take(ctx, now, bucket, res); err != nil || res[0].Allowed || res[0].RetryAfter != 11*time.Second {
			t.Fatalf("instance %d, the bucket after the outage: %v %+v", i, err, res[0])
		}
		if err := s.Take(ctx, now, window, res); err != nil || res[0].Allowed {
			t.Fatalf("instance %d, the window after the outage: %v %+v", i, err, res[0])
		}
	}
	now = now.Add(11 * time.Second)
	if n := drive(a, now, bucket); n != 1 {
		t.Fatalf("11 seconds later, the bucket admitted %d, want 1", n)
	}
}
