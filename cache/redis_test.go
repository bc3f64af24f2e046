package cache

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/edgelimit/caddy-edgelimit/internal/redistest"
)

// openRedis opens a store on the shared Redis with a prefix of its own.
func openRedis(t *testing.T) Store {
	c := redistest.Shared(t).Client(t)
	return NewRedis(c, RedisOptions{Prefix: "edge_cache_test:" + uniq(t) + ":"})
}

func TestRedisStore(t *testing.T) { runStoreCases(t, openRedis) }

// TestRedisClusterStore runs the table against a one-node Redis Cluster,
// where a purge cannot be one script.
func TestRedisClusterStore(t *testing.T) {
	srv := redistest.Start(t, "--cluster-enabled", "yes")
	ctx := context.Background()
	admin := srv.Client(t)
	if err := admin.Do(ctx, "CLUSTER", "ADDSLOTSRANGE", "0", "16383").Err(); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		info, err := admin.ClusterInfo(ctx).Result()
		if err == nil && strings.Contains(info, "cluster_state:ok") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("cluster not ready: %q %v", info, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	cc := redis.NewClusterClient(&redis.ClusterOptions{Addrs: []string{srv.Addr}})
	t.Cleanup(func() { cc.Close() })
	runStoreCases(t, func(t *testing.T) Store {
		s := NewRedis(cc, RedisOptions{Prefix: "edge_cache_test:" + uniq(t) + ":"})
		if s.scripted {
			t.Fatal("a cluster client would purge with a script")
		}
		return s
	})
}

func TestRedisKeysExpireAndIndexesStayBounded(t *testing.T) {
	ctx := context.Background()
	c := redistest.Shared(t).Client(t)
	prefix := "edge_cache_test:" + uniq(t) + ":"
	s := NewRedis(c, RedisOptions{Prefix: prefix})
	now := time.Now()
	r := req("GET", "http://api.example/ttl", "Authorization", "Bearer x")
	k := KeyOf(r, "z", nil)
	if err := s.Set(ctx, k, entryFor(r, "x", time.Minute, 4*time.Minute, now, "bk"), now); err != nil {
		t.Fatal(err)
	}
	ttl := c.PTTL(ctx, s.entryKey(k.ID)).Val()
	if ttl <= 4*time.Minute || ttl > 5*time.Minute {
		t.Fatalf("entry TTL %v, want about 5m (ttl + stale)", ttl)
	}
	for _, set := range []string{s.indexName('b', 0, bucketHash("bk")), s.indexName('a', 0, AuthHash("Bearer x"))} {
		if ttl := c.TTL(ctx, set).Val(); ttl < 5*time.Minute || ttl > 5*time.Minute+2*time.Second {
			t.Fatalf("index %s TTL %v", set, ttl)
		}
	}
	// A shorter-lived entry does not shorten the index; a longer one
	// lengthens it.
	r2 := req("GET", "http://api.example/ttl2")
	k2 := KeyOf(r2, "z", nil)
	if err := s.Set(ctx, k2, entryFor(r2, "y", time.Second, 0, now, "bk"), now); err != nil {
		t.Fatal(err)
	}
	set := s.indexName('b', 0, bucketHash("bk"))
	if ttl := c.TTL(ctx, set).Val(); ttl < 5*time.Minute {
		t.Fatalf("index TTL shortened to %v", ttl)
	}
	r3 := req("GET", "http://api.example/ttl3")
	if err := s.Set(ctx, KeyOf(r3, "z", nil), entryFor(r3, "z", time.Hour, 0, now, "bk"), now); err != nil {
		t.Fatal(err)
	}
	if ttl := c.TTL(ctx, set).Val(); ttl < time.Hour {
		t.Fatalf("index TTL not lengthened: %v", ttl)
	}
	// A write an hour later drops the members that expired meanwhile.
	later := now.Add(2 * time.Hour)
	r4 := req("GET", "http://api.example/ttl4")
	if err := s.Set(ctx, KeyOf(r4, "z", nil), entryFor(r4, "w", time.Minute, 0, later, "bk"), later); err != nil {
		t.Fatal(err)
	}
	if n := c.ZCard(ctx, set).Val(); n != 1 {
		t.Fatalf("index holds %d members, want only the live one", n)
	}
}

func TestRedisCorruptEntryIsAMiss(t *testing.T) {
	ctx := context.Background()
	c := redistest.Shared(t).Client(t)
	s := NewRedis(c, RedisOptions{Prefix: "edge_cache_test:" + uniq(t) + ":"})
	k := KeyOf(req("GET", "http://api.example/corrupt"), "z", nil)
	if err := c.Set(ctx, s.entryKey(k.ID), "not an entry", time.Minute).Err(); err != nil {
		t.Fatal(err)
	}
	if e, err := s.Get(ctx, k, t0); e != nil || err != nil {
		t.Fatalf("corrupt entry: %v %v", e, err)
	}
}

// TestRedisDown: every operation on a stopped server fails with an error
// (the handler then answers DIRECT), and works again once it is back.
func TestRedisDown(t *testing.T) {
	ctx := context.Background()
	srv := redistest.Start(t)
	c := redis.NewClient(&redis.Options{Addr: srv.Addr, DialTimeout: time.Second, ReadTimeout: time.Second, MaxRetries: -1})
	t.Cleanup(func() { c.Close() })
	s := NewRedis(c, RedisOptions{})
	r := req("GET", "http://api.example/down")
	k := KeyOf(r, "z", nil)
	if err := s.Set(ctx, k, entryFor(r, "x", time.Minute, 0, t0, "b"), t0); err != nil {
		t.Fatal(err)
	}
	srv.Stop()
	if _, err := s.Get(ctx, k, t0); err == nil {
		t.Fatal("Get on a stopped server: no error")
	}
	if err := s.Set(ctx, k, entryFor(r, "x", time.Minute, 0, t0, "b"), t0); err == nil {
		t.Fatal("Set on a stopped server: no error")
	}
	if _, err := s.Purge(ctx, Purge{Buckets: []string{"b"}}); err == nil {
		t.Fatal("Purge on a stopped server: no error")
	}
	srv.Restart(t)
	if e, err := s.Get(ctx, k, t0); e != nil || err != nil {
		t.Fatalf("after restart: %v %v", e, err)
	}
}
