package storage_test

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/edgelimit/caddy-edgelimit/internal/redistest"
	"github.com/edgelimit/caddy-edgelimit/limiter"
	"github.com/edgelimit/caddy-edgelimit/storage"
	"github.com/edgelimit/caddy-edgelimit/store"
	"github.com/edgelimit/caddy-edgelimit/store/storetest"
)

// floodLimit is the limit of the key-flood tests: 3 an hour.
var floodLimit = limiter.Limit{Algorithm: limiter.FixedWindow, Quota: 3, Window: time.Hour}

func floodReq(key string) []store.Request {
	return []store.Request{{Counter: "api", Key: key, Limit: floodLimit, Cost: 1}}
}

// clientKey is the Redis key of a client's hash.
func clientKey(prefix, key string) string {
	sum := sha256.Sum256([]byte(key))
	return string(store.AppendClientKey(nil, prefix, &sum))
}

// exhaust takes the victim's 3 and is denied the fourth.
func exhaust(t *testing.T, s store.Store, now time.Time, key string) {
	t.Helper()
	res := make([]limiter.Result, 1)
	for i := range 4 {
		if err := s.Take(context.Background(), now, floodReq(key), res); err != nil {
			t.Fatal(err)
		}
		if res[0].Allowed != (i < 3) {
			t.Fatalf("take %d of the victim: %+v", i+1, res[0])
		}
	}
}

// flood takes one unit for made-up keys from 8 goroutines until done says
// so (asked every 256 keys) or max keys were sent; it returns the keys sent.
func flood(t *testing.T, s store.Store, now time.Time, max int64, done func() bool) int64 {
	t.Helper()
	var sent atomic.Int64
	var stop atomic.Bool
	deadline := time.Now().Add(2 * time.Minute)
	var wg sync.WaitGroup
	for w := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			res := make([]limiter.Result, 1)
			for i := 0; !stop.Load(); i++ {
				n := sent.Add(1)
				if n > max || time.Now().After(deadline) {
					stop.Store(true)
					return
				}
				_ = s.Take(context.Background(), now, floodReq(fmt.Sprintf("made-up-%d-%d", w, i)), res)
				if w == 0 && i%256 == 255 && done() {
					stop.Store(true)
				}
			}
		}()
	}
	wg.Wait()
	return min(sent.Load(), max)
}

// TestRedisKeyFloodNoEviction: a Redis at its maxmemory with noeviction
// refuses the take script's writes (OOM). Before, the store took that for
// Redis failing: on_error decided every request, and with the default
// allow, an exhausted client was let through again (issue 21: 96% of the
// requests of a wrk flood failed, nobody was limited). Now the script's
// decision, made from what Redis holds, stands when it denies: the
// exhausted client is denied exactly, at every instance, whatever
// on_error says; a client Redis has no room for is decided by on_error
// (allow: through uncounted; deny: 503; local: counted here, and charged
// to Redis once it has room). The error is of kind "oom", Redis is not
// taken for down, and counts again as soon as it has room.
func TestRedisKeyFloodNoEviction(t *testing.T) {
	srv := redistest.Start(t, "--maxmemory", "2mb", "--maxmemory-policy", "noeviction")
	c := srv.Client(t)
	ctx := context.Background()
	prefix := storetest.Prefix(t)
	now := storetest.Base.Add(time.Minute)
	open := func(onError store.OnError) *storage.Redis {
		return openRedis(t, srv, storage.RedisOptions{LocalClock: true, Prefix: prefix, OnError: onError, NoLocalDenials: true, RetryInterval: time.Hour})
	}
	flooder := open(store.Allow)
	exhaust(t, flooder, now, "victim")
	// Another client used its 3 and has not been denied yet: its first
	// denial would write (the denial's mark), which a full Redis refuses.
	res := make([]limiter.Result, 1)
	for range 3 {
		if err := flooder.Take(ctx, now, floodReq("spent"), res); err != nil || !res[0].Allowed {
			t.Fatal(err, res[0])
		}
	}
	sent := flood(t, flooder, now, 200_000, func() bool { return flooder.Stats().Errors[storage.RedisOOM] > 0 })
	oom := flooder.Stats().Errors[storage.RedisOOM]
	if oom == 0 {
		t.Fatalf("%d made-up keys and Redis never refused a write", sent)
	}
	dbsize, _ := c.DBSize(ctx).Result()
	t.Logf("Redis full after %d made-up keys (%d keys held)", sent, dbsize)

	var local *storage.Redis
	for _, onError := range []store.OnError{store.Allow, store.Deny, store.Local} {
		s := open(onError)
		if onError == store.Local {
			local = s
		}
		// The exhausted clients, again and again: denied from Redis's
		// counts, with their retry-after, not by on_error (a denial that
		// changes nothing writes nothing; one that would, the first of
		// "spent", is decided all the same, and counted nowhere).
		for _, key := range []string{"victim", "spent"} {
			for i := range 3 {
				err := s.Take(ctx, now, floodReq(key), res)
				if err != nil || res[0].Allowed || res[0].RetryAfter != 59*time.Minute || res[0].FirstDenial {
					t.Fatalf("on_error %s, the exhausted client %s, take %d: %v %+v", onError, key, i, err, res[0])
				}
			}
		}
		// A client Redis has no room for.
		err := s.Take(ctx, now, floodReq("fresh"), res)
		switch onError {
		case store.Allow:
			if err == nil || errors.Is(err, store.ErrUnavailable) || !store.IsOOM(err) {
				t.Fatalf("on_error allow, a fresh client: %v", err)
			}
		case store.Deny:
			if !errors.Is(err, store.ErrUnavailable) || !store.IsOOM(err) {
				t.Fatalf("on_error deny, a fresh client: %v", err)
			}
		case store.Local:
			// Counted here: 3, then denied.
			for i := 1; err == nil && i < 4; i++ {
				if !res[0].Allowed {
					t.Fatalf("on_error local, take %d: %+v", i, res[0])
				}
				err = s.Take(ctx, now, floodReq("fresh"), res)
			}
			if err != nil || res[0].Allowed {
				t.Fatalf("on_error local, the fourth take: %v %+v", err, res[0])
			}
		}
		st := s.Stats()
		if st.Errors[storage.RedisOOM] == 0 || st.Errors[storage.RedisScript]+st.Errors[storage.RedisConnection]+st.Errors[storage.RedisOther] != 0 {
			t.Fatalf("on_error %s: errors by kind %v", onError, st.Errors)
		}
		if st.OnError[onError] == 0 || s.RedisDown() {
			t.Fatalf("on_error %s: %+v, down %v", onError, st, s.RedisDown())
		}
	}
	// Nothing the full Redis was asked counted: the fresh client has no
	// state there.
	if n, _ := c.Exists(ctx, clientKey(prefix, "fresh")).Result(); n != 0 {
		t.Fatal("a fresh client was written to a full Redis")
	}
	// Room again: Redis counts; and once it has counted a decision of the
	// on_error local store, that store charges it the 3 it counted for
	// "fresh" while Redis was full.
	if err := c.ConfigSet(ctx, "maxmemory", "0").Err(); err != nil {
		t.Fatal(err)
	}
	s := open(store.Deny)
	for i := range 4 {
		if err := s.Take(ctx, now, floodReq("later"), res); err != nil || res[0].Allowed != (i < 3) {
			t.Fatalf("with room, take %d: %v %+v", i+1, err, res[0])
		}
	}
	if err := local.Take(ctx, now, floodReq("another"), res); err != nil || !res[0].Allowed {
		t.Fatalf("with room, the local store: %v %+v", err, res[0])
	}
	deadline := time.Now().Add(20 * time.Second)
	for local.Stats().Carried != 3 {
		if time.Now().After(deadline) {
			t.Fatalf("carried %d, want 3", local.Stats().Carried)
		}
		time.Sleep(5 * time.Millisecond)
	}
	if err := s.Take(ctx, now, floodReq("fresh"), res); err != nil || res[0].Allowed {
		t.Fatalf("the client counted locally while Redis was full: %v %+v", err, res[0])
	}
}

// TestRedisKeyFloodEviction: a Redis at its maxmemory with an allkeys
// policy makes room by evicting keys, exhausted clients' counters among
// them. The instance that denied the client remembers the denial (local
// denials) and denies it still; an instance that did not, with local
// denials off, asks Redis, which gives an evicted client its limit whole
// again (the reason docs/storage.md asks for noeviction). Fresh clients
// are counted as usual.
func TestRedisKeyFloodEviction(t *testing.T) {
	for _, policy := range []string{"allkeys-lru", "allkeys-lfu"} {
		t.Run(policy, func(t *testing.T) {
			srv := redistest.Start(t, "--maxmemory", "2mb", "--maxmemory-policy", policy)
			c := srv.Client(t)
			ctx := context.Background()
			prefix := storetest.Prefix(t)
			now := storetest.Base.Add(time.Minute)
			logs, observed := observer.New(zap.WarnLevel)
			a := openRedis(t, srv, storage.RedisOptions{LocalClock: true, Prefix: prefix, Logger: zap.New(logs)})
			if err := a.Ping(ctx); err != nil {
				t.Fatal(err)
			}
			if observed.FilterMessageSnippet("maxmemory-policy "+policy).Len() != 1 {
				t.Fatalf("no eviction warning: %v", observed.All())
			}
			b := openRedis(t, srv, storage.RedisOptions{LocalClock: true, Prefix: prefix, NoLocalDenials: true})
			flooder := openRedis(t, srv, storage.RedisOptions{LocalClock: true, Prefix: prefix, NoLocalDenials: true})
			waitLocalDenials(t, a, true)
			exhaust(t, a, now, "victim")
			victim := clientKey(prefix, "victim")
			evictedKeys := func() int64 {
				info, _ := c.Info(ctx, "stats").Result()
				n, _ := strconv.ParseInt(store.InfoField(info, "evicted_keys"), 10, 64)
				return n
			}
			gone := func() bool { n, err := c.Exists(ctx, victim).Result(); return err == nil && n == 0 }
			// Until the victim's counter is evicted, or Redis has evicted
			// 60,000 keys (about six times what it holds) without it.
			sent := flood(t, flooder, now, 300_000, func() bool { return gone() || evictedKeys() > 60_000 })
			evicted := gone()
			t.Logf("%s: %d made-up keys, %d evicted, the victim's counter evicted: %v", policy, sent, evictedKeys(), evicted)
			if evictedKeys() == 0 {
				t.Fatalf("%d made-up keys, nothing evicted", sent)
			}
			if st := flooder.Stats(); st.Errors != [storage.NumRedisErrorKinds]uint64{} {
				t.Fatalf("errors while evicting: %v", st.Errors)
			}
			res := make([]limiter.Result, 1)
			// The instance that denied it denies it still.
			if err := a.Take(ctx, now, floodReq("victim"), res); err != nil || res[0].Allowed {
				t.Fatalf("the instance that denied the victim: %v %+v", err, res[0])
			}
			// The other asks Redis: whole again if its counter was evicted.
			if err := b.Take(ctx, now, floodReq("victim"), res); err != nil || res[0].Allowed != evicted {
				t.Fatalf("another instance, the counter evicted=%v: %v %+v", evicted, err, res[0])
			}
			// A fresh client is counted: 3, then denied.
			for i := range 4 {
				if err := b.Take(ctx, now, floodReq("fresh"), res); err != nil || res[0].Allowed != (i < 3) {
					t.Fatalf("a fresh client, take %d: %v %+v", i+1, err, res[0])
				}
			}
		})
	}
}

// TestRedisKeyMemory measures what one client costs Redis (MEMORY USAGE,
// as docs/storage.md reports it): a hash of its counters and "~".
func TestRedisKeyMemory(t *testing.T) {
	srv := redistest.Start(t)
	c := srv.Client(t)
	ctx := context.Background()
	s := openRedis(t, srv, storage.RedisOptions{LocalClock: true})
	res := make([]limiter.Result, 3)
	for _, n := range []int{1, 3} {
		key := "client-" + strconv.Itoa(n)
		var reqs []store.Request
		for i := range n {
			// A counter's name as a route's limit has it (36 characters).
			reqs = append(reqs, store.Request{Counter: "r/3f2a9c1e/per_client" + strconv.Itoa(i) + "/fixed_window#0", Key: key, Limit: floodLimit, Cost: 1})
		}
		if err := s.Take(ctx, storetest.Base, reqs, res); err != nil {
			t.Fatal(err)
		}
		bytes, err := c.MemoryUsage(ctx, clientKey(storage.DefaultRedisPrefix, key)).Result()
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("a client with %d counter(s): %d bytes", n, bytes)
		// docs/storage.md: 200 bytes for one limit, 408 for three, on
		// Redis 7.0: within 5% of it.
		if bound := int64(100 + 110*n); bytes > bound {
			t.Errorf("a client with %d counters takes %d bytes, more than the %d docs/storage.md allows", n, bytes, bound)
		}
	}
}
