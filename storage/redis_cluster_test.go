package storage_test

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"math/rand/v2"
	"os/exec"
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

// cluster is a three-master Redis Cluster on loopback ports.
type cluster struct {
	addrs []string
}

// startCluster forms the cluster. Its servers belong to the test (redistest
// stops them when it ends), so every cluster test runs inside
// TestRedisCluster, on one cluster.
func startCluster(t *testing.T) *cluster {
	t.Helper()
	cli, err := exec.LookPath("redis-cli")
	if err != nil {
		t.Skip("redis-cli is not installed: cannot form a Redis Cluster")
	}
	// "help" exits 1 even where it is supported: look at what it prints.
	if out, _ := exec.Command(cli, "--cluster", "help").CombinedOutput(); !strings.Contains(string(out), "create") {
		t.Skipf("this redis-cli has no --cluster support (it says %q): cannot form a Redis Cluster", strings.TrimSpace(string(out)))
	}
	c := &cluster{}
	for range 3 {
		// redistest gives each server a directory of its own and starts it
		// there, so each node writes its own nodes.conf.
		srv := redistest.Start(t, "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
			"--cluster-node-timeout", "5000")
		c.addrs = append(c.addrs, srv.Addr)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	args := append([]string{"--cluster", "create"}, c.addrs...)
	args = append(args, "--cluster-replicas", "0", "--cluster-yes")
	if out, err := exec.CommandContext(ctx, cli, args...).CombinedOutput(); err != nil {
		t.Fatalf("redis-cli --cluster create: %v\n%s", err, out)
	}
	deadline := time.Now().Add(30 * time.Second)
	for _, addr := range c.addrs {
		node := redis.NewClient(&redis.Options{Addr: addr})
		for {
			info, err := node.ClusterInfo(ctx).Result()
			if err == nil && strings.Contains(info, "cluster_state:ok") && strings.Contains(info, "cluster_known_nodes:3") {
				break
			}
			if time.Now().After(deadline) {
				node.Close()
				t.Fatalf("cluster node %s not ready after 30s: %v\n%s", addr, err, info)
			}
			time.Sleep(50 * time.Millisecond)
		}
		node.Close()
	}
	return c
}

func (c *cluster) open(t testing.TB, o storage.RedisOptions) *storage.Redis {
	t.Helper()
	if o.Timeout == 0 {
		o.Timeout = testTimeout
	}
	client := storage.NewRedisClient(&redis.UniversalOptions{Addrs: c.addrs}, o.Timeout)
	if _, ok := client.(*redis.ClusterClient); !ok {
		t.Fatalf("three addresses gave a %T", client)
	}
	s, err := storage.NewRedis(client, o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func (c *cluster) client(t testing.TB) *redis.ClusterClient {
	cc := redis.NewClusterClient(&redis.ClusterOptions{Addrs: c.addrs})
	t.Cleanup(func() { cc.Close() })
	return cc
}

// redisKey is the key the store uses, as documented.
// redisKey is the hash that holds a client's counters.
func redisKey(prefix, key string) string {
	sum := sha256.Sum256([]byte(key))
	return prefix + "{" + hex.EncodeToString(sum[:16]) + "}"
}

// clientsOnDistinctMasters returns n client keys whose counters live on n
// different masters.
func clientsOnDistinctMasters(t *testing.T, cc *redis.ClusterClient, n int) []string {
	t.Helper()
	ctx := context.Background()
	seen := map[string]bool{}
	var out []string
	for i := 0; len(out) < n && i < 1000; i++ {
		k := fmt.Sprint("client-", i)
		m, err := cc.MasterForKey(ctx, redisKey("x:", k))
		if err != nil {
			t.Fatal(err)
		}
		if addr := m.Options().Addr; !seen[addr] {
			seen[addr] = true
			out = append(out, k)
		}
	}
	if len(out) < n {
		t.Fatalf("found clients on %d masters only", len(out))
	}
	return out
}

func TestRedisCluster(t *testing.T) {
	c := startCluster(t)
	cc := c.client(t)

	t.Run("slots", func(t *testing.T) {
		ctx := context.Background()
		for _, k := range []string{"123456789", "a", "client-7", strings.Repeat("z", 40)} {
			key := redisKey("p:", k)
			want, err := cc.ClusterKeySlot(ctx, key).Result()
			if err != nil {
				t.Fatal(err)
			}
			tag := key[strings.IndexByte(key, '{')+1 : strings.IndexByte(key, '}')]
			if got := storage.KeySlot([]byte(tag)); int64(got) != want {
				t.Fatalf("slot of %q: %d, Redis says %d", key, got, want)
			}
		}
		if got := storage.KeySlot([]byte("123456789")); got != 0x31C3 {
			t.Fatalf("CRC16 check value: %#x", got)
		}
	})

	t.Run("conformance", func(t *testing.T) {
		storetest.Run(t, func(t *testing.T, now func() time.Time) store.Store {
			return c.open(t, storage.RedisOptions{LocalClock: true, Prefix: storetest.Prefix(t)})
		})
	})

	t.Run("exact", func(t *testing.T) {
		prefix := storetest.Prefix(t)
		a := c.open(t, storage.RedisOptions{LocalClock: true, Prefix: prefix})
		b := c.open(t, storage.RedisOptions{LocalClock: true, Prefix: prefix})
		storetest.Exact(t, []store.Store{a, b}, 16, 40)
	})

	t.Run("admin and invalidation", func(t *testing.T) {
		// Peek, credit and reset on clients in several slots; a reset
		// through one store ends the local denial of another.
		ctx := context.Background()
		prefix := storetest.Prefix(t)
		a := c.open(t, storage.RedisOptions{LocalClock: true, Prefix: prefix})
		b := c.open(t, storage.RedisOptions{LocalClock: true, Prefix: prefix})
		waitLocalDenials(t, a, true)
		waitLocalDenials(t, b, true)
		l := limiter.Limit{Algorithm: limiter.FixedWindow, Quota: 1, Window: time.Hour}
		now := storetest.Base.Add(time.Second)
		for _, key := range []string{"a", "client-7", "zz"} {
			req := []store.Request{{Counter: "c", Key: key, Limit: l, Cost: 1}, {Counter: "d", Key: key + "/2", Limit: l, Cost: 1}}
			res := make([]limiter.Result, 2)
			for range 2 {
				if err := b.Take(ctx, now, req[:1], res); err != nil {
					t.Fatal(err)
				}
			}
			if res[0].Allowed {
				t.Fatal("not denied")
			}
			if err := a.Peek(ctx, now, req, res); err != nil || res[0].Allowed || !res[1].Allowed {
				t.Fatalf("peek: %v %+v", err, res)
			}
			given := make([]int64, 2)
			if err := a.Credit(ctx, now, req, 1, given); err != nil || given[0] != 1 || given[1] != 0 {
				t.Fatalf("credit: %v %v", err, given)
			}
			if err := a.Reset(ctx, now, req); err != nil {
				t.Fatal(err)
			}
			deadline := time.Now().Add(5 * time.Second)
			for {
				if err := b.Take(ctx, now, req[:1], res); err != nil {
					t.Fatal(err)
				}
				if res[0].Allowed {
					break
				}
				if time.Now().After(deadline) {
					t.Fatal("B still denies 5s after a reset through A")
				}
				time.Sleep(time.Millisecond)
			}
		}
	})

	t.Run("cross-slot all or nothing", func(t *testing.T) {
		testCrossSlot(t, c, cc)
	})

	t.Run("cross-slot matches memory", func(t *testing.T) {
		testCrossSlotMatchesMemory(t, c, cc)
	})

	t.Run("cross-slot exact under concurrency", func(t *testing.T) {
		testCrossSlotExact(t, c, cc)
	})

	t.Run("server clock", func(t *testing.T) {
		// An instance whose clock says 1970: Redis's clock decides, and
		// calendar windows are computed again for the masters' time (after
		// giving back what the slot without a calendar counted).
		s := c.open(t, storage.RedisOptions{Prefix: storetest.Prefix(t)})
		keys := clientsOnDistinctMasters(t, cc, 3)
		daily := limiter.Limit{Algorithm: limiter.FixedWindow, Quota: 4, Calendar: limiter.CalendarWindow{Period: limiter.Day}.Cached()}
		reqs := []store.Request{
			{Counter: "anchored", Key: keys[0], Limit: limiter.Limit{Algorithm: limiter.AnchoredWindow, Quota: 100, Window: time.Hour}, Cost: 1},
			{Counter: "daily", Key: keys[1], Limit: daily, Cost: 1},
			{Counter: "daily", Key: keys[2], Limit: daily, Cost: 1},
		}
		res := make([]limiter.Result, len(reqs))
		ctx := context.Background()
		if t0, err := cc.Time(ctx).Result(); err != nil {
			t.Fatal(err)
		} else if d := t0.Sub(t0.Truncate(24 * time.Hour)); d < time.Minute || d > 24*time.Hour-time.Minute {
			t.Skip("too close to midnight UTC: the takes could fall on two days")
		}
		admitted := 0
		for range 10 {
			if err := s.Take(ctx, time.Unix(0, 0), reqs, res); err != nil {
				t.Fatal(err)
			}
			if res[0].Allowed && res[1].Allowed && res[2].Allowed {
				admitted++
			}
		}
		if admitted != 4 || res[0].Remaining != 96 || res[1].Window != 24*time.Hour {
			t.Fatalf("admitted %d, want 4; last results %+v", admitted, res)
		}
	})
}

// A request whose limits live on three masters: a denial on one consumes
// nothing on the others, whichever algorithm denies, and the other keys are
// left exactly as they were (not just with the same count).
func testCrossSlot(t *testing.T, c *cluster, cc *redis.ClusterClient) {
	ctx := context.Background()
	keys := clientsOnDistinctMasters(t, cc, 3)
	algos := []limiter.Limit{
		{Algorithm: limiter.FixedWindow, Quota: 2, Window: time.Hour},
		{Algorithm: limiter.AnchoredWindow, Quota: 2, Window: time.Hour},
		{Algorithm: limiter.SlidingWindow, Quota: 2, Window: time.Hour},
		{Algorithm: limiter.TokenBucket, Quota: 2, Rate: 1, Window: time.Hour},
		{Algorithm: limiter.GCRA, Quota: 2, Rate: 1, Window: time.Hour},
		{Algorithm: limiter.FixedWindow, Quota: 2, Calendar: limiter.CalendarWindow{Period: limiter.Day}.Cached()},
	}
	loose := limiter.Limit{Algorithm: limiter.TokenBucket, Quota: 100, Rate: 1, Window: time.Hour}
	for _, tight := range algos {
		name := tight.Algorithm.String()
		if tight.Calendar != nil {
			name = "calendar_day"
		}
		t.Run(name, func(t *testing.T) {
			prefix := storetest.Prefix(t)
			s := c.open(t, storage.RedisOptions{LocalClock: true, Prefix: prefix})
			reqs := []store.Request{
				{Counter: "loose", Key: keys[0], Limit: loose, Cost: 1},
				{Counter: "tight", Key: keys[1], Limit: tight, Cost: 1},
				{Counter: "loose2", Key: keys[2], Limit: loose, Cost: 1},
			}
			res := make([]limiter.Result, 3)
			now := storetest.Base.Add(time.Minute)
			for want := int64(1); want >= 0; want-- {
				if err := s.Take(ctx, now, reqs, res); err != nil {
					t.Fatal(err)
				}
				if !res[0].Allowed || !res[1].Allowed || !res[2].Allowed || res[1].Remaining != want {
					t.Fatalf("allowed request: %+v", res)
				}
			}
			stored := func() []string {
				var v []string
				for _, r := range []store.Request{reqs[0], reqs[2]} {
					s, err := cc.HGet(ctx, redisKey(prefix, r.Key), r.Counter).Result()
					if err != nil {
						t.Fatal(err)
					}
					v = append(v, s)
				}
				return v
			}
			before := stored()
			for i, first := range []bool{true, false} {
				if err := s.Take(ctx, now, reqs, res); err != nil {
					t.Fatal(err)
				}
				if res[1].Allowed || res[1].FirstDenial != first {
					t.Fatalf("denial %d: %+v", i, res[1])
				}
				// Allowed by their own limits, not counted: they report what
				// was left before.
				if !res[0].Allowed || res[0].Remaining != 98 || !res[2].Allowed || res[2].Remaining != 98 {
					t.Fatalf("denial %d: the other limits report %+v and %+v", i, res[0], res[2])
				}
				if after := stored(); after[0] != before[0] || after[1] != before[1] {
					t.Fatalf("denial %d changed the other slots' states:\n%q\n%q", i, before, after)
				}
			}
			// A dry-run denial does not veto: the others count.
			reqs[1].DryRun = true
			if err := s.Take(ctx, now, reqs, res); err != nil {
				t.Fatal(err)
			}
			if res[1].Allowed || !res[0].Allowed || res[0].Remaining != 97 || res[2].Remaining != 97 {
				t.Fatalf("dry run: %+v", res)
			}
		})
	}
}

// Random requests over clients on different masters, checked decision by
// decision against the memory store: the slot-by-slot scripts and their
// undos have exactly the memory store's all-or-nothing semantics, and
// refunds across slots give back as the memory store does.
func testCrossSlotMatchesMemory(t *testing.T, c *cluster, cc *redis.ClusterClient) {
	keys := clientsOnDistinctMasters(t, cc, 3)
	rng := rand.New(rand.NewPCG(3, 5))
	for round := range 6 {
		mem := store.NewMemory(store.MemoryOptions{})
		red := c.open(t, storage.RedisOptions{LocalClock: true, NoLocalDenials: true, Prefix: storetest.Prefix(t)})
		var limits []limiter.Limit
		for range 4 {
			limits = append(limits, storage.RandomLimit(rng))
		}
		now := storetest.Base.Add(time.Duration(rng.IntN(100000)) * time.Second)
		for step := range 120 {
			now = now.Add(time.Duration(rng.IntN(4)) * time.Second * time.Duration(rng.IntN(3)))
			var reqs []store.Request
			used := map[string]bool{}
			for range 1 + rng.IntN(4) {
				li, k := rng.IntN(len(limits)), keys[rng.IntN(len(keys))]
				counter := fmt.Sprint("c", li)
				// The same counter and key twice in one request is the
				// memory store's corner, not this test's.
				if used[counter+k] {
					continue
				}
				used[counter+k] = true
				reqs = append(reqs, store.Request{Counter: counter, Key: k, Limit: limits[li],
					Cost: 1 + int64(rng.IntN(2)), DryRun: rng.IntN(6) == 0})
			}
			if rng.IntN(5) == 0 {
				if err := mem.Refund(context.Background(), now, reqs); err != nil {
					t.Fatal(err)
				}
				if err := red.Refund(context.Background(), now, reqs); err != nil {
					t.Fatal(err)
				}
				continue
			}
			want := make([]limiter.Result, len(reqs))
			got := make([]limiter.Result, len(reqs))
			if err := mem.Take(context.Background(), now, reqs, want); err != nil {
				t.Fatal(err)
			}
			if err := red.Take(context.Background(), now, reqs, got); err != nil {
				t.Fatal(err)
			}
			for j := range want {
				if got[j] != want[j] {
					t.Fatalf("round %d step %d take %d (%+v):\nredis  %+v\nmemory %+v", round, step, j, reqs[j].Limit, got[j], want[j])
				}
			}
		}
		mem.Close()
	}
}

// Many goroutines on two stores, every request with a loose limit on one
// master and a tight one on another: never more than the quotas, and once
// the refunds have landed, exactly the quotas.
func testCrossSlotExact(t *testing.T, c *cluster, cc *redis.ClusterClient) {
	keys := clientsOnDistinctMasters(t, cc, 2)
	prefix := storetest.Prefix(t)
	stores := []store.Store{
		c.open(t, storage.RedisOptions{LocalClock: true, Prefix: prefix}),
		c.open(t, storage.RedisOptions{LocalClock: true, Prefix: prefix}),
	}
	// What is left is read from Redis itself: a store's local denials may
	// deny a little longer than Redis after a refund made by the other
	// store (until the Retry-After Redis gave it), never shorter.
	counter := c.open(t, storage.RedisOptions{LocalClock: true, NoLocalDenials: true, Prefix: prefix})
	now := storetest.Base.Add(90 * time.Second)
	ctx := context.Background()
	for _, l := range []limiter.Limit{
		{Algorithm: limiter.FixedWindow, Quota: 60, Window: time.Hour},
		{Algorithm: limiter.SlidingWindow, Quota: 60, Window: time.Hour},
		{Algorithm: limiter.TokenBucket, Quota: 60, Rate: 1, Window: time.Hour},
	} {
		t.Run(l.Algorithm.String(), func(t *testing.T) {
			tight := l
			tight.Quota = 23
			reqs := []store.Request{
				{Counter: "loose:" + l.Algorithm.String(), Key: keys[0], Limit: l, Cost: 1},
				{Counter: "tight:" + l.Algorithm.String(), Key: keys[1], Limit: tight, Cost: 1},
			}
			var both, single atomic.Int64
			var wg sync.WaitGroup
			for w := range 12 {
				wg.Add(1)
				go func(s store.Store) {
					defer wg.Done()
					res := make([]limiter.Result, 2)
					for range 30 {
						if err := s.Take(ctx, now, reqs, res); err != nil {
							t.Error(err)
							return
						}
						if res[0].Allowed && res[1].Allowed {
							both.Add(1)
						}
						if err := s.Take(ctx, now, reqs[:1], res); err != nil {
							t.Error(err)
							return
						}
						if res[0].Allowed {
							single.Add(1)
						}
					}
				}(stores[w%2])
			}
			wg.Wait()
			left := func(r store.Request) int64 {
				res := make([]limiter.Result, 1)
				for n := int64(0); n <= r.Limit.Quota; n++ {
					if err := counter.Take(ctx, now, []store.Request{r}, res); err != nil {
						t.Fatal(err)
					}
					if !res[0].Allowed {
						return n
					}
				}
				t.Fatalf("%s admits more than its quota", r.Counter)
				return 0
			}
			if got := both.Load() + single.Load() + left(reqs[0]); got != l.Quota {
				t.Fatalf("loose: admitted %d+%d, %d left: %d, want %d", both.Load(), single.Load(), got-both.Load()-single.Load(), got, l.Quota)
			}
			if got := both.Load() + left(reqs[1]); got != tight.Quota {
				t.Fatalf("tight: admitted %d, %d left, want %d in all", both.Load(), got-both.Load(), tight.Quota)
			}
		})
	}
}
