package storage_test

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"net"
	"os"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/edgelimit/caddy-edgelimit/internal/redistest"
	"github.com/edgelimit/caddy-edgelimit/limiter"
	"github.com/edgelimit/caddy-edgelimit/storage"
	"github.com/edgelimit/caddy-edgelimit/store"
	"github.com/edgelimit/caddy-edgelimit/store/storetest"
)

func TestMain(m *testing.M) {
	code := m.Run()
	redistest.StopShared()
	os.Exit(code)
}

// testTimeout is the store timeout of tests that check decisions, not
// failures: generous, so that a loaded machine running the race detector
// never turns a slow answer into a failure.
const testTimeout = 5 * time.Second

// openRedis returns a store on srv, closed when the test ends.
func openRedis(t testing.TB, srv *redistest.Server, o storage.RedisOptions) *storage.Redis {
	t.Helper()
	opt, err := redis.ParseURL(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	if o.Timeout == 0 {
		o.Timeout = testTimeout
	}
	client := storage.NewRedisClient(&redis.UniversalOptions{
		Addrs: []string{opt.Addr}, DB: opt.DB, Username: opt.Username, Password: opt.Password,
	}, o.Timeout)
	s, err := storage.NewRedis(client, o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// localClock opens a store on the shared server that decides with the time
// given to Take, as the conformance table needs.
func localClock(t *testing.T, now func() time.Time) store.Store {
	return openRedis(t, redistest.Shared(t), storage.RedisOptions{LocalClock: true, Prefix: storetest.Prefix(t)})
}

func TestRedisConformance(t *testing.T) {
	storetest.Run(t, localClock)
}

// Two clients, as two Caddy instances would have, and many goroutines on
// one key: exactly the quota is admitted, for every algorithm.
func TestRedisExactUnderConcurrency(t *testing.T) {
	srv := redistest.Shared(t)
	prefix := storetest.Prefix(t)
	a := openRedis(t, srv, storage.RedisOptions{LocalClock: true, Prefix: prefix})
	b := openRedis(t, srv, storage.RedisOptions{LocalClock: true, Prefix: prefix})
	storetest.Exact(t, []store.Store{a, b}, 16, 40)
}

// Charges from two clients and many goroutines on one key: each counts in
// full, overdraws included.
func TestRedisChargesExact(t *testing.T) {
	srv := redistest.Shared(t)
	prefix := storetest.Prefix(t)
	a := openRedis(t, srv, storage.RedisOptions{LocalClock: true, Prefix: prefix})
	b := openRedis(t, srv, storage.RedisOptions{LocalClock: true, Prefix: prefix})
	storetest.ExactCharges(t, []store.Store{a, b}, 16, 40)
	storetest.ExactCharges(t, []store.Store{a, b}, 16, 400)
}

// The same, with Redis's clock: instances agree whatever their own clocks
// say, so one of them passing a time an hour off changes nothing.
func TestRedisExactWithServerClock(t *testing.T) {
	srv := redistest.Shared(t)
	prefix := storetest.Prefix(t)
	a := openRedis(t, srv, storage.RedisOptions{Prefix: prefix})
	b := openRedis(t, srv, storage.RedisOptions{Prefix: prefix})
	l := limiter.Limit{Algorithm: limiter.AnchoredWindow, Quota: 50, Window: time.Hour}
	var admitted atomic.Int64
	var wg sync.WaitGroup
	for w := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s, skew := a, time.Duration(0)
			if w%2 == 1 {
				s, skew = b, time.Hour
			}
			res := make([]limiter.Result, 1)
			for range 20 {
				req := []store.Request{{Counter: "c", Key: "k", Limit: l, Cost: 1}}
				if err := s.Take(context.Background(), time.Now().Add(skew), req, res); err != nil {
					t.Error(err)
					return
				}
				if res[0].Allowed {
					admitted.Add(1)
				}
			}
		}()
	}
	wg.Wait()
	if got := admitted.Load(); got != l.Quota {
		t.Fatalf("admitted %d, want exactly %d", got, l.Quota)
	}
}

// With TIME as the clock, a fixed window admits exactly N, and the window
// is the server's: the time passed to Take does not matter.
func TestRedisServerClock(t *testing.T) {
	srv := redistest.Shared(t)
	s := openRedis(t, srv, storage.RedisOptions{Prefix: storetest.Prefix(t)})
	serverNow, err := srv.Client(t).Time(context.Background()).Result()
	if err != nil {
		t.Fatal(err)
	}
	// Put the server's time in the middle of an hour-long window, so that
	// no boundary falls within the test.
	const w = time.Hour
	offset := time.Duration((serverNow.UnixMicro() - w.Microseconds()/2) % w.Microseconds() * int64(time.Microsecond))
	if offset < 0 {
		offset += w
	}
	l := limiter.Limit{Algorithm: limiter.FixedWindow, Quota: 7, Window: w, Offset: offset}
	res := make([]limiter.Result, 1)
	bogus := time.Date(2001, 2, 3, 4, 5, 6, 0, time.UTC)
	admitted := 0
	for range 20 {
		req := []store.Request{{Counter: "fixed", Key: "k", Limit: l, Cost: 1}}
		if err := s.Take(context.Background(), bogus, req, res); err != nil {
			t.Fatal(err)
		}
		if res[0].Allowed {
			admitted++
		}
		// The window ends about half an hour after the server's now, not
		// after 2001-02-03.
		if res[0].Reset < 20*time.Minute || res[0].Reset > 31*time.Minute {
			t.Fatalf("reset %s: not the server's window", res[0].Reset)
		}
		// And the reset is that window's end to the microsecond, on the
		// server's clock.
		if end := res[0].ResetAt; (end-offset.Microseconds())%w.Microseconds() != 0 {
			t.Fatalf("ResetAt %s is not the end of a window", time.UnixMicro(end).UTC().Format(time.RFC3339Nano))
		}
	}
	if admitted != 7 {
		t.Fatalf("admitted %d, want 7", admitted)
	}
}

// Calendar windows are computed in Go; with Redis's clock, an instance
// whose clock is a day off is told the server's time and asks again.
func TestRedisCalendarFollowsServerClock(t *testing.T) {
	srv := redistest.Start(t)
	s := openRedis(t, srv, storage.RedisOptions{})
	c := srv.Client(t)
	ctx := context.Background()
	l := limiter.Limit{Algorithm: limiter.FixedWindow, Quota: 2, Calendar: limiter.CalendarWindow{Period: limiter.Day}.Cached()}
	req := []store.Request{{Counter: "daily", Key: "k", Limit: l, Cost: 1}}
	res := make([]limiter.Result, 1)
	if t0, err := c.Time(ctx).Result(); err != nil {
		t.Fatal(err)
	} else if d := t0.Sub(t0.Truncate(24 * time.Hour)); d < time.Minute || d > 24*time.Hour-time.Minute {
		t.Skip("too close to midnight UTC: the takes could fall on two days")
	}
	for i, skew := range []time.Duration{-48 * time.Hour, 0, 72 * time.Hour} {
		before := commandStats(t, c)
		err := s.Take(ctx, time.Now().Add(skew), req, res)
		if err != nil {
			t.Fatal(err)
		}
		serverNow, err := c.Time(ctx).Result()
		if err != nil {
			t.Fatal(err)
		}
		_, end := l.Calendar.Bounds(serverNow.UnixMicro())
		untilEnd := time.Duration(end-serverNow.UnixMicro()) * time.Microsecond
		if res[0].Window != 24*time.Hour || res[0].Reset < untilEnd-time.Minute || res[0].Reset > untilEnd+time.Minute {
			t.Fatalf("skew %s: %+v, want the server's day (ends in %s)", skew, res[0], untilEnd)
		}
		if want := i < 2; res[0].Allowed != want {
			t.Fatalf("skew %s: allowed %v: the three takes are on one day", skew, res[0].Allowed)
		}
		after := commandStats(t, c)
		calls := after["evalsha"] + after["eval"] - before["evalsha"] - before["eval"]
		if skew != 0 && calls < 2 || skew == 0 && calls != 1 {
			t.Fatalf("skew %s: %d scripts", skew, calls)
		}
	}
}

// Keys: the prefix, a hash tag from the client's key (never the key
// itself), the counter; every key has a TTL no longer than its state needs.
func TestRedisKeysAndTTLs(t *testing.T) {
	srv := redistest.Start(t)
	s := openRedis(t, srv, storage.RedisOptions{Prefix: "el:"})
	c := srv.Client(t)
	ctx := context.Background()
	secret := "sk_live_" + strings.Repeat("S", 100)
	limits := []limiter.Limit{
		{Algorithm: limiter.FixedWindow, Quota: 5, Window: time.Minute},
		{Algorithm: limiter.AnchoredWindow, Quota: 5, Window: 2 * time.Minute},
		{Algorithm: limiter.SlidingWindow, Quota: 5, Window: 3 * time.Minute},
		{Algorithm: limiter.TokenBucket, Quota: 5, Rate: 1, Window: time.Minute},
		{Algorithm: limiter.GCRA, Quota: 5, Rate: 5, Window: time.Minute},
		{Algorithm: limiter.FixedWindow, Quota: 5, Calendar: limiter.CalendarWindow{Period: limiter.Day}.Cached()},
	}
	var reqs []store.Request
	for i, l := range limits {
		reqs = append(reqs, store.Request{Counter: fmt.Sprintf("g/l%d/%s#0", i, l.Algorithm), Key: secret, Limit: l, Cost: 1})
	}
	res := make([]limiter.Result, len(reqs))
	if err := s.Take(ctx, time.Now(), reqs, res); err != nil {
		t.Fatal(err)
	}
	keys, err := c.Keys(ctx, "*").Result()
	if err != nil {
		t.Fatal(err)
	}
	// One hash for the client: its fields are the counters, and "~".
	if len(keys) != 1 || !regexp.MustCompile(`^el:\{[0-9a-f]{32}\}$`).MatchString(keys[0]) || strings.Contains(keys[0], "sk_live") {
		t.Fatalf("keys %q, want one el:{32 hex digits}", keys)
	}
	fields, err := c.HKeys(ctx, keys[0]).Result()
	if err != nil {
		t.Fatal(err)
	}
	slices.Sort(fields)
	want := []string{"~"}
	for _, r := range reqs {
		want = append(want, r.Counter)
	}
	slices.Sort(want)
	if !slices.Equal(fields, want) {
		t.Fatalf("fields %q, want %q", fields, want)
	}
	// The TTL outlives every state (the longest, the daily quota), with at
	// most an hour to spare.
	ttl, err := c.PTTL(ctx, keys[0]).Result()
	if err != nil {
		t.Fatal(err)
	}
	longest := time.Duration(0)
	for _, r := range res {
		longest = max(longest, r.Reset)
	}
	if ttl < longest-time.Second || ttl > longest+time.Hour+time.Second {
		t.Fatalf("TTL %s for states that last up to %s", ttl, longest)
	}
}

// TestRedisChecksAndCharges: checks that pass write nothing to Redis; a
// charge past what any limit holds gives its client's hash a TTL that
// outlives the state and no more (a bucket overdrawn by the largest charge
// waits limiter.MaxRefill).
func TestRedisChecksAndCharges(t *testing.T) {
	srv := redistest.Start(t)
	s := openRedis(t, srv, storage.RedisOptions{Prefix: "el:"})
	c := srv.Client(t)
	ctx := context.Background()
	fixed := limiter.Limit{Algorithm: limiter.FixedWindow, Quota: 5, Window: time.Minute}
	bucket := limiter.Limit{Algorithm: limiter.TokenBucket, Quota: 5, Rate: 5, Window: time.Minute}
	res := make([]limiter.Result, 2)
	for i := range 50 {
		reqs := []store.Request{
			{Counter: "f", Key: fmt.Sprint(i), Limit: fixed, Cost: 1, Mode: store.ModeCheck},
			{Counter: "b", Key: fmt.Sprint(i), Limit: bucket, Cost: 1, Mode: store.ModeCheck},
		}
		if err := s.Take(ctx, time.Now(), reqs, res); err != nil || !res[0].Allowed || res[0].Remaining != 5 || res[1].Remaining != 5 {
			t.Fatal(err, res)
		}
	}
	if n, err := c.DBSize(ctx).Result(); err != nil || n != 0 {
		t.Fatalf("checks wrote %d keys (%v)", n, err)
	}
	charge := []store.Request{{Counter: "b", Key: "big", Limit: bucket, Cost: 1 << 50, Mode: store.ModeCharge}}
	if err := s.Take(ctx, time.Now(), charge, res); err != nil || !res[0].Allowed || res[0].Remaining != 0 {
		t.Fatal(err, res[0])
	}
	keys, err := c.Keys(ctx, "*").Result()
	if err != nil || len(keys) != 1 {
		t.Fatalf("keys %q (%v)", keys, err)
	}
	ttl, err := c.PTTL(ctx, keys[0]).Result()
	if err != nil || ttl < limiter.MaxRefill || ttl > limiter.MaxRefill+time.Hour+time.Second {
		t.Fatalf("TTL %s (%v) after the largest charge, want %s and at most an hour more", ttl, err, limiter.MaxRefill)
	}
	check := []store.Request{{Counter: "b", Key: "big", Limit: bucket, Cost: 1, Mode: store.ModeCheck}}
	if err := s.Take(ctx, time.Now(), check, res); err != nil || res[0].Allowed || res[0].RetryAfter < limiter.MaxRefill-time.Hour {
		t.Fatal(err, res[0])
	}
}

// One round trip: exactly one EVALSHA per decision, however many limits,
// and inside it one MGET for all the keys and at most one SET per key.
func TestRedisOneScriptPerRequest(t *testing.T) {
	srv := redistest.Start(t)
	s := openRedis(t, srv, storage.RedisOptions{LocalClock: true})
	c := srv.Client(t)
	ctx := context.Background()
	limits := []limiter.Limit{
		{Algorithm: limiter.FixedWindow, Quota: 1000, Window: time.Hour},
		{Algorithm: limiter.TokenBucket, Quota: 1000, Rate: 1000, Window: time.Second},
		{Algorithm: limiter.SlidingWindow, Quota: 1000, Window: time.Hour},
	}
	for _, c3 := range []struct {
		name    string
		clients []string
	}{
		{"one client", []string{"org", "org", "org"}},
		{"three clients", []string{"ip", "user", "org"}},
	} {
		t.Run(c3.name, func(t *testing.T) {
			var reqs []store.Request
			for i, l := range limits {
				reqs = append(reqs, store.Request{Counter: fmt.Sprint(c3.name, i), Key: c3.clients[i], Limit: l, Cost: 1})
			}
			res := make([]limiter.Result, len(reqs))
			// The first decision loads the script (NOSCRIPT, then EVAL).
			if err := s.Take(ctx, storetest.Base, reqs, res); err != nil {
				t.Fatal(err)
			}
			before := commandStats(t, c)
			const n = 50
			for i := range n {
				if err := s.Take(ctx, storetest.Base.Add(time.Duration(i)*time.Millisecond), reqs, res); err != nil {
					t.Fatal(err)
				}
			}
			after := commandStats(t, c)
			calls := func(cmd string) int64 { return after[cmd] - before[cmd] }
			clients := int64(len(slices.Compact(slices.Sorted(slices.Values(c3.clients)))))
			if got := calls("evalsha"); got != n {
				t.Fatalf("%d EVALSHA for %d decisions", got, n)
			}
			if got := calls("eval"); got != 0 {
				t.Fatalf("%d EVAL for %d decisions", got, n)
			}
			// One read and one write per client, whatever the number of
			// limits on it; the TTL is raised only when a state would
			// outlive it (here, within the first second, never).
			if got := calls("hmget"); got != clients*n {
				t.Fatalf("%d HMGET for %d decisions on %d clients", got, n, clients)
			}
			if got := calls("hset"); got > clients*n {
				t.Fatalf("%d HSET for %d decisions on %d clients", got, n, clients)
			}
			if got := calls("pexpire"); got != 0 {
				t.Fatalf("%d PEXPIRE for %d decisions within a second", got, n)
			}
			for cmd := range after {
				switch strings.TrimSuffix(cmd, ".usec") {
				// The local denials' subscription is made in the
				// background, maybe while this loop runs.
				case "evalsha", "hmget", "hset", "pexpire", "info", "subscribe":
				default:
					if calls(cmd) != 0 {
						t.Errorf("unexpected %s: %d calls", cmd, calls(cmd))
					}
				}
			}
		})
	}
}

// A Redis that lost its scripts (restart, SCRIPT FLUSH) gets it again with
// EVAL; nothing is counted twice.
func TestRedisScriptFlush(t *testing.T) {
	srv := redistest.Start(t)
	s := openRedis(t, srv, storage.RedisOptions{LocalClock: true})
	c := srv.Client(t)
	ctx := context.Background()
	l := limiter.Limit{Algorithm: limiter.FixedWindow, Quota: 3, Window: time.Hour}
	req := []store.Request{{Counter: "c", Key: "k", Limit: l, Cost: 1}}
	res := make([]limiter.Result, 1)
	for want := int64(2); want >= 0; want-- {
		if err := c.ScriptFlush(ctx).Err(); err != nil {
			t.Fatal(err)
		}
		if err := s.Take(ctx, storetest.Base, req, res); err != nil {
			t.Fatal(err)
		}
		if !res[0].Allowed || res[0].Remaining != want {
			t.Fatalf("after a flush: %+v, want remaining %d", res[0], want)
		}
	}
}

// Concurrent decisions share pipelines: each caller gets its own reply,
// even while Redis pauses (callers give up, their scripts may still run
// later) and loses its scripts (EVAL in the same batch machinery).
func TestRedisPipelinedDecisions(t *testing.T) {
	srv := redistest.Start(t)
	s := openRedis(t, srv, storage.RedisOptions{LocalClock: true, Timeout: 30 * time.Millisecond,
		RetryInterval: time.Millisecond, OnError: store.Deny})
	c := srv.Client(t)
	ctx := context.Background()
	const (
		workers = 48
		rounds  = 300
	)
	quota := func(g int) int64 { return 1_000_000 + int64(g)*10_000 }
	stop := make(chan struct{})
	var disrupt sync.WaitGroup
	disrupt.Add(1)
	go func() {
		defer disrupt.Done()
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			case <-time.After(40 * time.Millisecond):
			}
			if i%2 == 0 {
				c.Do(ctx, "CLIENT", "PAUSE", 60, "ALL")
			} else {
				c.ScriptFlush(ctx)
			}
		}
	}()
	deadline := time.Now().Add(time.Second)
	var wg sync.WaitGroup
	ok := make([]int64, workers)
	errs := make(chan error, workers)
	for g := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			l := limiter.Limit{Algorithm: limiter.FixedWindow, Quota: quota(g), Window: time.Hour}
			req := []store.Request{{Counter: "c", Key: fmt.Sprint("client-", g), Limit: l, Cost: 1}}
			res := make([]limiter.Result, 1)
			last := quota(g)
			for tries := 1; tries <= 10*rounds && ok[g] < rounds && time.Now().Before(deadline); tries++ {
				if err := s.Take(ctx, storetest.Base, req, res); err != nil {
					time.Sleep(time.Millisecond)
					continue
				}
				r := res[0].Remaining
				// Every decision counted at most once: what this client
				// sent and gave up on may have counted too, never another
				// client's decision.
				if !res[0].Allowed || r >= last || r < quota(g)-int64(tries) {
					errs <- fmt.Errorf("client %d: remaining %d after %d (a reply of another decision?)", g, r, last)
					return
				}
				last = r
				ok[g]++
			}
		}()
	}
	wg.Wait()
	close(stop)
	disrupt.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	var total int64
	for g := range workers {
		total += ok[g]
	}
	if total == 0 {
		t.Fatal("no decision succeeded")
	}
	t.Logf("%d decisions answered by Redis", total)
}

// Closing the store while decisions wait for their batch ends them at
// once, and stops the store's goroutines.
func TestRedisCloseWhileDeciding(t *testing.T) {
	srv := redistest.Start(t)
	before := runtime.NumGoroutine()
	client := storage.NewRedisClient(&redis.UniversalOptions{Addrs: []string{fmt.Sprint("127.0.0.1:", srv.Port())}}, time.Second)
	s, err := storage.NewRedis(client, storage.RedisOptions{LocalClock: true, Timeout: time.Second, OnError: store.Deny})
	if err != nil {
		t.Fatal(err)
	}
	c := srv.Client(t)
	// Hold every script in the queue for a while.
	c.Do(context.Background(), "CLIENT", "PAUSE", 2000, "ALL")
	l := limiter.Limit{Algorithm: limiter.FixedWindow, Quota: 1000, Window: time.Hour}
	done := make(chan error, 16)
	for g := range 16 {
		go func() {
			req := []store.Request{{Counter: "c", Key: fmt.Sprint("k", g), Limit: l, Cost: 1}}
			done <- s.Take(context.Background(), storetest.Base, req, make([]limiter.Result, 1))
		}()
	}
	time.Sleep(100 * time.Millisecond)
	start := time.Now()
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	for range 16 {
		select {
		case err := <-done:
			if err == nil {
				t.Error("a decision succeeded after Close while Redis was paused")
			}
		case <-time.After(5 * time.Second):
			t.Fatal("a decision still waits after Close")
		}
	}
	if d := time.Since(start); d > 1500*time.Millisecond {
		t.Errorf("decisions ended %v after Close", d)
	}
	c.Do(context.Background(), "CLIENT", "UNPAUSE")
	for i := 0; runtime.NumGoroutine() > before && i < 100; i++ {
		time.Sleep(20 * time.Millisecond)
	}
	if n := runtime.NumGoroutine(); n > before {
		t.Errorf("%d goroutines after Close, %d before the store", n, before)
	}
}

// A foreign value under the prefix is a fresh state, not an error.
func TestRedisForeignValues(t *testing.T) {
	srv := redistest.Start(t)
	s := openRedis(t, srv, storage.RedisOptions{LocalClock: true, Prefix: "p:"})
	c := srv.Client(t)
	ctx := context.Background()
	l := limiter.Limit{Algorithm: limiter.FixedWindow, Quota: 3, Window: time.Hour}
	req := []store.Request{{Counter: "c", Key: "k", Limit: l, Cost: 1}}
	res := make([]limiter.Result, 1)
	if err := s.Take(ctx, storetest.Base, req, res); err != nil {
		t.Fatal(err)
	}
	keys, _ := c.Keys(ctx, "p:*").Result()
	if len(keys) != 1 {
		t.Fatalf("keys %q", keys)
	}
	for _, spoil := range []func() error{
		func() error { return c.Set(ctx, keys[0], "garbage", 0).Err() },
		func() error { return c.Set(ctx, keys[0], packedState(1, 2, 3, math.NaN(), 4, 1), 0).Err() },
		func() error { return c.Set(ctx, keys[0], packedState(1, 2, 3, math.Inf(1), 1<<62, 1), 0).Err() },
		func() error { c.Del(ctx, keys[0]); return c.HSet(ctx, keys[0], "f", "v").Err() },
	} {
		if err := spoil(); err != nil {
			t.Fatal(err)
		}
		if err := s.Take(ctx, storetest.Base, req, res); err != nil {
			t.Fatal(err)
		}
		if !res[0].Allowed || res[0].Remaining != 2 {
			t.Fatalf("after a foreign value: %+v", res[0])
		}
	}
}

// packedState is a key's state as the scripts store it (struct
// '<i8i8i8di8B').
func packedState(start, count, prev int64, debt float64, expires int64, denied byte) string {
	b := binary.LittleEndian.AppendUint64(nil, uint64(start))
	b = binary.LittleEndian.AppendUint64(b, uint64(count))
	b = binary.LittleEndian.AppendUint64(b, uint64(prev))
	b = binary.LittleEndian.AppendUint64(b, math.Float64bits(debt))
	b = binary.LittleEndian.AppendUint64(b, uint64(expires))
	return string(append(b, denied))
}

// Requests the script could not compute are refused before Redis, without
// counting as a Redis failure.
func TestRedisRejectsBadLimits(t *testing.T) {
	s := openRedis(t, redistest.Shared(t), storage.RedisOptions{OnError: store.Deny})
	res := make([]limiter.Result, 1)
	for _, r := range []store.Request{
		{Counter: "c", Key: "k", Limit: limiter.Limit{Algorithm: limiter.FixedWindow, Quota: 3}, Cost: 1},
		{Counter: "c", Key: "k", Limit: limiter.Limit{Algorithm: limiter.TokenBucket, Quota: 3, Window: time.Second}, Cost: 1},
		{Counter: "c", Key: "k", Limit: limiter.Limit{Quota: 3, Window: time.Second}, Cost: 1},
		{Counter: "c", Key: "k", Limit: limiter.Limit{Algorithm: limiter.FixedWindow, Quota: 3, Window: time.Second}, Cost: 0},
	} {
		err := s.Take(context.Background(), storetest.Base, []store.Request{r}, res)
		if err == nil || errors.Is(err, store.ErrUnavailable) {
			t.Errorf("%+v: error %v", r, err)
		}
	}
	if err := s.Take(context.Background(), storetest.Base, make([]store.Request, 2), res); !errors.Is(err, store.ErrTooFewResults) {
		t.Fatalf("short results: %v", err)
	}
}

func TestRedisOptions(t *testing.T) {
	c := redis.NewClient(&redis.Options{Addr: "127.0.0.1:1"})
	defer c.Close()
	if _, err := storage.NewRedis(c, storage.RedisOptions{Prefix: "a{b}:"}); err == nil {
		t.Fatal("prefix with a hash tag accepted")
	}
	if _, err := storage.NewRedis(nil, storage.RedisOptions{}); err == nil {
		t.Fatal("nil client accepted")
	}
	for _, s := range []string{"allow", "deny", "local"} {
		p, err := store.ParseOnError(s)
		if err != nil || p.String() != s {
			t.Fatalf("%s: %v %v", s, p, err)
		}
	}
	if _, err := store.ParseOnError("panic"); err == nil {
		t.Fatal("on_error panic accepted")
	}
}

// The memory store and the Lua scripts decide alike: random sequences of
// requests, several limits each, dry runs, the same key twice, refunds,
// checks and charges, get
// the same answers, field by field. Times and windows are whole seconds, so that no
// key's TTL in Redis (counted in real time) is shorter than the gap between
// two steps (in fake time, far faster).
func TestRedisMatchesMemory(t *testing.T) {
	srv := redistest.Shared(t)
	rng := rand.New(rand.NewPCG(7, 11))
	for round := range 12 {
		mem := store.NewMemory(store.MemoryOptions{})
		red := openRedis(t, srv, storage.RedisOptions{LocalClock: true, NoLocalDenials: true, Prefix: storetest.Prefix(t)})
		var limits []limiter.Limit
		for range 4 {
			limits = append(limits, storage.RandomLimit(rng))
		}
		now := storetest.Base.Add(time.Duration(rng.IntN(100000)) * time.Second)
		for step := range 150 {
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
					DryRun:  rng.IntN(6) == 0,
				}
				// Limits that count responses: checks, and charges of any
				// size, overdrawing and past what a limit can hold.
				switch rng.IntN(6) {
				case 0:
					reqs[j].Mode = store.ModeCheck
				case 1:
					reqs[j].Mode = store.ModeCharge
					reqs[j].Cost = []int64{1, 2, 7, 40, 1 << 41}[rng.IntN(5)]
				}
			}
			if rng.IntN(5) == 0 {
				// A later handler denied the request: give it back.
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
			}
		}
		mem.Close()
	}
}

// commandStats returns the calls of each command from INFO commandstats,
// the commands scripts run included; "<command>.usec" is the server's time
// spent in it, in microseconds.
func commandStats(t testing.TB, c *redis.Client) map[string]int64 {
	t.Helper()
	info, err := c.Info(context.Background(), "commandstats").Result()
	if err != nil {
		t.Fatal(err)
	}
	stats := map[string]int64{}
	for _, line := range strings.Split(info, "\n") {
		name, rest, ok := strings.Cut(strings.TrimSpace(line), ":")
		name, ok2 := strings.CutPrefix(name, "cmdstat_")
		if !ok || !ok2 {
			continue
		}
		for _, field := range strings.Split(rest, ",") {
			k, v, _ := strings.Cut(field, "=")
			n, err := strconv.ParseInt(v, 10, 64)
			switch {
			case err != nil:
			case k == "calls":
				stats[name] = n
			case k == "usec":
				stats[name+".usec"] = n
			}
		}
	}
	return stats
}

// checkPolicy checks what a store with policy answers while Redis is down.
func checkPolicy(t *testing.T, policy store.OnError, err error, res []limiter.Result, local *int) {
	t.Helper()
	switch policy {
	case store.Allow:
		if err == nil || errors.Is(err, store.ErrUnavailable) {
			t.Fatalf("on_error allow: error %v, want one that lets the request through", err)
		}
	case store.Deny:
		if !errors.Is(err, store.ErrUnavailable) {
			t.Fatalf("on_error deny: error %v, want ErrUnavailable", err)
		}
	case store.Local:
		if err != nil {
			t.Fatalf("on_error local: %v", err)
		}
		// The local store counts on its own: quota 3.
		*local++
		if want := *local <= 3; res[0].Allowed != want {
			t.Fatalf("on_error local: decision %d allowed=%v", *local, res[0].Allowed)
		}
	}
}

// answerBound is what "answered within the timeout" is checked against: far
// above the store's timeout, far below a hang.
const answerBound = 2 * time.Second

// Stop Redis mid-run and start it again: each policy holds while it is
// down, every answer comes within the bound, the store recovers by itself,
// and nothing leaks.
func TestRedisFaults(t *testing.T) {
	for _, policy := range []store.OnError{store.Allow, store.Deny, store.Local} {
		t.Run(policy.String(), func(t *testing.T) {
			srv := redistest.Start(t)
			goroutines := runtime.NumGoroutine()
			s := openRedis(t, srv, storage.RedisOptions{
				LocalClock: true, OnError: policy, Timeout: 500 * time.Millisecond, RetryInterval: 50 * time.Millisecond,
			})
			ctx := context.Background()
			l := limiter.Limit{Algorithm: limiter.FixedWindow, Quota: 3, Window: time.Hour}
			req := []store.Request{{Counter: "c", Key: "k", Limit: l, Cost: 1}}
			res := make([]limiter.Result, 1)
			take := func() error {
				t.Helper()
				start := time.Now()
				err := s.Take(ctx, storetest.Base, req, res)
				if d := time.Since(start); d > answerBound {
					t.Fatalf("Take took %s", d)
				}
				return err
			}
			for range 2 {
				if err := take(); err != nil || !res[0].Allowed {
					t.Fatalf("before the fault: %v %+v", err, res[0])
				}
			}
			srv.Stop()
			local := 0
			for range 30 {
				checkPolicy(t, policy, take(), res, &local)
			}
			// Across several retry intervals: each probe fails and the
			// policy goes on.
			for range 5 {
				time.Sleep(60 * time.Millisecond)
				checkPolicy(t, policy, take(), res, &local)
			}
			// Giving back while Redis is down: to the memory store with
			// local (its next decision has the unit again), an error
			// otherwise; never a wait.
			start := time.Now()
			err := s.Refund(ctx, storetest.Base, req)
			if d := time.Since(start); d > answerBound {
				t.Fatalf("Refund took %s", d)
			}
			if policy == store.Local {
				if err != nil {
					t.Fatal(err)
				}
				if err := take(); err != nil || !res[0].Allowed {
					t.Fatalf("after a local refund: %v %+v", err, res[0])
				}
				if err := take(); err != nil || res[0].Allowed {
					t.Fatalf("a local refund gave back more than one unit: %v %+v", err, res[0])
				}
			} else if err == nil {
				t.Fatal("refund with Redis down: no error")
			}
			srv.Restart(t)
			deadline := time.Now().Add(10 * time.Second)
			for {
				err := take()
				if err == nil && srv.Client(t).DBSize(ctx).Val() > 0 {
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("the store did not recover within 10s: %v", err)
				}
				time.Sleep(20 * time.Millisecond)
			}
			// Redis restarted empty: it counts from scratch, exactly; with
			// on_error local, from the 3 this instance counted meanwhile,
			// charged to it when it answered (TestRedisOutageChargedBack).
			if policy == store.Local {
				if res[0].Allowed || res[0].Remaining != 0 || s.Stats().Carried != 3 {
					t.Fatalf("after recovery: %+v, %d carried", res[0], s.Stats().Carried)
				}
			} else if !res[0].Allowed || res[0].Remaining != 2 {
				t.Fatalf("after recovery: %+v", res[0])
			}
			s.Close()
			checkGoroutines(t, goroutines)
		})
	}
}

// checkGoroutines waits for the goroutine count to come back to about what
// it was (with a little tolerance for the runtime's own).
func checkGoroutines(t *testing.T, before int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		n := runtime.NumGoroutine()
		if n <= before+2 {
			return
		}
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<20)
			t.Fatalf("%d goroutines after Close, %d before:\n%s", n, before, buf[:runtime.Stack(buf, true)])
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// A Redis that accepts connections and never answers (a black hole, a
// stalled server): every answer still comes within the bound, and while
// the store knows Redis is down it does not keep knocking.
func TestRedisBlackHole(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var accepted atomic.Int64
	var conns sync.WaitGroup
	done := make(chan struct{})
	acceptEnded := make(chan struct{})
	go func() {
		defer close(acceptEnded)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			accepted.Add(1)
			conns.Add(1)
			go func() {
				defer conns.Done()
				<-done
				c.Close()
			}()
		}
	}()
	defer func() {
		// The accept loop ends before the wait: no conns.Add during it.
		ln.Close()
		<-acceptEnded
		close(done)
		conns.Wait()
	}()
	goroutines := runtime.NumGoroutine()
	client := storage.NewRedisClient(&redis.UniversalOptions{Addrs: []string{ln.Addr().String()}}, 100*time.Millisecond)
	// Without local denials: their invalidation subscription is a
	// connection of its own (TestRedisLocalDenialsNeedSubscription), and
	// this test counts the decisions' connections.
	s, err := storage.NewRedis(client, storage.RedisOptions{Timeout: 100 * time.Millisecond, OnError: store.Deny, RetryInterval: time.Hour, NoLocalDenials: true})
	if err != nil {
		t.Fatal(err)
	}
	l := limiter.Limit{Algorithm: limiter.FixedWindow, Quota: 3, Window: time.Hour}
	req := []store.Request{{Counter: "c", Key: "k", Limit: l, Cost: 1}}
	res := make([]limiter.Result, 1)
	for range 50 {
		start := time.Now()
		err := s.Take(context.Background(), time.Now(), req, res)
		if d := time.Since(start); d > answerBound {
			t.Fatalf("Take took %s", d)
		}
		if !errors.Is(err, store.ErrUnavailable) {
			t.Fatalf("error %v, want ErrUnavailable", err)
		}
	}
	// The first decision timed out; the 49 others did not try Redis.
	if n := accepted.Load(); n > 1 {
		t.Fatalf("%d connections for 50 decisions while Redis is known down", n)
	}
	s.Close()
	checkGoroutines(t, goroutines)
}

// A caller whose context ends before the store's timeout is answered by
// its own deadline: the batch it is sent in is bounded by the earliest
// deadline of its callers (redis_pipe.go's deadlineContext), not by the
// client's read timeout.
func TestRedisCallerDeadlineBoundsBatch(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	// A server that reads what it is sent, never answers, and says when
	// the client hangs up: go-redis closes a connection whose read timed
	// out.
	hungUp := make(chan struct{}, 16)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				_, _ = io.Copy(io.Discard, c)
				c.Close()
				hungUp <- struct{}{}
			}()
		}
	}()
	// The store would wait 30 s; the caller 100 ms.
	client := storage.NewRedisClient(&redis.UniversalOptions{Addrs: []string{ln.Addr().String()}}, 30*time.Second)
	s, err := storage.NewRedis(client, storage.RedisOptions{Timeout: 30 * time.Second, OnError: store.Deny, RetryInterval: time.Hour, NoLocalDenials: true})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	l := limiter.Limit{Algorithm: limiter.FixedWindow, Quota: 3, Window: time.Hour}
	req := []store.Request{{Counter: "c", Key: "k", Limit: l, Cost: 1}}
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	if err := s.Take(ctx, time.Now(), req, make([]limiter.Result, 1)); err == nil {
		t.Fatal("a decision without Redis")
	}
	// The caller gave up at its deadline; the batch's read ends then too
	// (and go-redis drops the connection), not 30 s later.
	select {
	case <-hungUp:
	case <-time.After(10 * time.Second):
		t.Fatal("the batch still waits for Redis 10 s after its caller's deadline")
	}
}

// Concurrent requests while Redis goes away and comes back: no panic, no
// race, every answer within the bound.
func TestRedisFlappingUnderLoad(t *testing.T) {
	srv := redistest.Start(t)
	s := openRedis(t, srv, storage.RedisOptions{
		LocalClock: true, OnError: store.Local, Timeout: 200 * time.Millisecond, RetryInterval: 20 * time.Millisecond,
	})
	l := limiter.Limit{Algorithm: limiter.TokenBucket, Quota: 1000, Rate: 1000, Window: time.Second}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var slow atomic.Int64
	for w := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			res := make([]limiter.Result, 2)
			reqs := []store.Request{
				{Counter: "a", Key: fmt.Sprint("k", w%3), Limit: l, Cost: 1},
				{Counter: "b", Key: "shared", Limit: l, Cost: 1},
			}
			for i := 0; i < 2000; i++ {
				select {
				case <-stop:
					return
				default:
				}
				start := time.Now()
				if err := s.Take(context.Background(), storetest.Base, reqs, res); err != nil {
					t.Error(err)
					return
				}
				if time.Since(start) > answerBound {
					slow.Add(1)
				}
			}
		}()
	}
	for range 2 {
		time.Sleep(100 * time.Millisecond)
		srv.Stop()
		time.Sleep(100 * time.Millisecond)
		srv.Restart(t)
	}
	close(stop)
	wg.Wait()
	if n := slow.Load(); n > 0 {
		t.Fatalf("%d answers slower than %s", n, answerBound)
	}
}

// TestRedisLocalDenials: once Redis denies a key until T, this instance
// denies it until T without a round trip, with the same answer; a cheaper
// request, other numbers, a refund here, or T passing ask Redis again; with
// the memory off, every decision asks Redis.
func TestRedisLocalDenials(t *testing.T) {
	srv := redistest.Start(t)
	c := srv.Client(t)
	ctx := context.Background()
	l := limiter.Limit{Algorithm: limiter.FixedWindow, Quota: 3, Window: time.Minute}
	other := limiter.Limit{Algorithm: limiter.FixedWindow, Quota: 100, Window: time.Hour}
	req := func(lim limiter.Limit, cost int64) []store.Request {
		return []store.Request{
			{Counter: "minute", Key: "k", Limit: lim, Cost: cost},
			{Counter: "hour", Key: "k", Limit: other, Cost: 1},
		}
	}
	evals := func() int64 { s := commandStats(t, c); return s["evalsha"] + s["eval"] }
	for _, off := range []bool{false, true} {
		s := openRedis(t, srv, storage.RedisOptions{LocalClock: true, NoLocalDenials: off, Prefix: storetest.Prefix(t)})
		if !off {
			waitLocalDenials(t, s, true)
		}
		now := storetest.Base.Add(10 * time.Second)
		res := make([]limiter.Result, 2)
		take := func(reqs []store.Request) {
			t.Helper()
			if err := s.Take(ctx, now, reqs, res); err != nil {
				t.Fatal(err)
			}
		}
		for range 3 {
			take(req(l, 1))
		}
		take(req(l, 1))
		if res[0].Allowed || !res[0].FirstDenial || res[0].RetryAfter != 50*time.Second {
			t.Fatalf("the denial: %+v", res[0])
		}
		before := evals()
		for i := range 100 {
			now = now.Add(100 * time.Millisecond)
			take(req(l, 1))
			if res[0].Allowed || res[0].FirstDenial || res[0].RetryAfter != 50*time.Second-time.Duration(i+1)*100*time.Millisecond ||
				res[0].Remaining != 0 || !res[1].Allowed || res[1].Remaining != 97 {
				t.Fatalf("denial %d: %+v %+v", i, res[0], res[1])
			}
		}
		asked := evals() - before
		if !off && asked != 0 || off && asked != 100 {
			t.Fatalf("local denials off=%v: %d round trips for 100 denials", off, asked)
		}
		if off {
			continue
		}
		// Other numbers (a tier raised): Redis decides, and lets it pass.
		before = evals()
		take(req(limiter.Limit{Algorithm: limiter.FixedWindow, Quota: 5, Window: time.Minute}, 1))
		if !res[0].Allowed || evals()-before != 1 {
			t.Fatalf("other numbers: %+v, %d round trips", res[0], evals()-before)
		}
		// A refund here forgets the key: it may pass sooner, Redis decides.
		take(req(l, 1))
		if res[0].Allowed {
			t.Fatal("not denied again")
		}
		if err := s.Refund(ctx, now, req(l, 2)[:1]); err != nil {
			t.Fatal(err)
		}
		before = evals()
		take(req(l, 1))
		if !res[0].Allowed || evals()-before != 1 {
			t.Fatalf("after a refund: %+v, %d round trips", res[0], evals()-before)
		}
		// At the window's end, Redis decides again.
		take(req(l, 1))
		now = storetest.Base.Add(time.Minute)
		before = evals()
		take(req(l, 1))
		if !res[0].Allowed || evals()-before != 1 {
			t.Fatalf("next window: %+v, %d round trips", res[0], evals()-before)
		}
	}
}

// TestRedisReadsTheTTLMarkWhenNeeded: a client's first decision looks up
// its hash's TTL mark ("~", apart from the HMGET of its counters), sets the
// TTL and writes the mark as an integer (microseconds, which an instance of
// an earlier release reads with tonumber); later decisions in the same
// window read only the counters: no HGET, no PEXPIRE.
func TestRedisReadsTheTTLMarkWhenNeeded(t *testing.T) {
	srv := redistest.Start(t)
	s := openRedis(t, srv, storage.RedisOptions{LocalClock: true, NoLocalDenials: true})
	c := srv.Client(t)
	ctx := context.Background()
	reqs := []store.Request{
		{Counter: "minute", Key: "k", Limit: limiter.Limit{Algorithm: limiter.FixedWindow, Quota: 100, Window: time.Hour}, Cost: 1},
		{Counter: "day", Key: "k", Limit: limiter.Limit{Algorithm: limiter.FixedWindow, Quota: 100,
			Calendar: limiter.CalendarWindow{Period: limiter.Day}.Cached()}, Cost: 1},
	}
	res := make([]limiter.Result, len(reqs))
	// The first decision loads the script (NOSCRIPT, then EVAL).
	before := commandStats(t, c)
	if err := s.Take(ctx, storetest.Base, reqs, res); err != nil {
		t.Fatal(err)
	}
	after := commandStats(t, c)
	if got := after["hget"] - before["hget"]; got != 1 {
		t.Errorf("%d HGET on a new client, want 1 (its mark)", got)
	}
	if got := after["pexpire"] - before["pexpire"]; got != 1 {
		t.Errorf("%d PEXPIRE on a new client, want 1", got)
	}
	keys, err := c.Keys(ctx, "*{*").Result()
	if err != nil || len(keys) != 1 {
		t.Fatalf("keys %q, %v", keys, err)
	}
	mark, err := c.HGet(ctx, keys[0], store.TTLField).Result()
	if err != nil {
		t.Fatal(err)
	}
	if n, err := strconv.ParseInt(mark, 10, 64); err != nil || n <= storetest.Base.UnixMicro() {
		t.Errorf("mark %q: want an integer time after the decision's", mark)
	}
	before = commandStats(t, c)
	for i := 1; i <= 20; i++ {
		if err := s.Take(ctx, storetest.Base.Add(time.Duration(i)*time.Second), reqs, res); err != nil {
			t.Fatal(err)
		}
	}
	after = commandStats(t, c)
	for _, cmd := range []string{"hget", "pexpire"} {
		if got := after[cmd] - before[cmd]; got != 0 {
			t.Errorf("%d %s in the same window, want none", got, cmd)
		}
	}
	if got := after["hmget"] - before["hmget"]; got != 20 {
		t.Errorf("%d HMGET for 20 decisions", got)
	}
}
