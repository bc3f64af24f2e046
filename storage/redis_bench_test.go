package storage_test

import (
	"context"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/edgelimit/caddy-edgelimit/internal/redistest"
	"github.com/edgelimit/caddy-edgelimit/limiter"
	"github.com/edgelimit/caddy-edgelimit/storage"
	"github.com/edgelimit/caddy-edgelimit/store"
)

// benchRedis runs reqs (their Key set per request, 10,000 distinct
// clients) against a private Redis with the server's clock, serially and in
// parallel, and reports the Redis commands per request from INFO
// commandstats: evalsha/op must be 1, whatever the number of limits.
func benchRedis(b *testing.B, mk func() []store.Request) {
	srv := redistest.Start(b)
	s := openRedis(b, srv, storage.RedisOptions{Timeout: time.Second})
	c := srv.Client(b)
	keys := benchKeys(10000)
	ctx := context.Background()
	// Load the script outside the measurements.
	warm := mk()
	if err := s.Take(ctx, time.Now(), warm, make([]limiter.Result, len(warm))); err != nil {
		b.Fatal(err)
	}
	run := func(b *testing.B, loop func(b *testing.B, failed *atomic.Int64)) {
		var failed atomic.Int64
		before := commandStats(b, c)
		b.ReportAllocs()
		loop(b, &failed)
		b.StopTimer()
		after := commandStats(b, c)
		if failed.Load() > 0 {
			b.Fatalf("%d decisions failed", failed.Load())
		}
		n := float64(b.N)
		for _, cmd := range []string{"evalsha", "eval", "mget", "set", "time"} {
			b.ReportMetric(float64(after[cmd]-before[cmd])/n, cmd+"/op")
		}
		// The server's time in the script: what each decision costs the
		// shared Redis, which runs scripts one at a time.
		b.ReportMetric(float64(after["evalsha.usec"]-before["evalsha.usec"])/n, "redis-µs/op")
	}
	b.Run("serial", func(b *testing.B) {
		run(b, func(b *testing.B, failed *atomic.Int64) {
			reqs := mk()
			res := make([]limiter.Result, len(reqs))
			i := 0
			for b.Loop() {
				for j := range reqs {
					reqs[j].Key = keys[i%len(keys)]
				}
				i++
				if s.Take(ctx, time.Now(), reqs, res) != nil {
					failed.Add(1)
				}
			}
		})
	})
	b.Run("parallel", func(b *testing.B) {
		run(b, func(b *testing.B, failed *atomic.Int64) {
			var seq atomic.Int64
			b.RunParallel(func(pb *testing.PB) {
				reqs := mk()
				res := make([]limiter.Result, len(reqs))
				i := int(seq.Add(7919))
				for pb.Next() {
					for j := range reqs {
						reqs[j].Key = keys[i%len(keys)]
					}
					i++
					if s.Take(ctx, time.Now(), reqs, res) != nil {
						failed.Add(1)
					}
				}
			})
		})
	})
}

// BenchmarkRedisTake is one limit per request.
func BenchmarkRedisTake(b *testing.B) {
	benchRedis(b, func() []store.Request {
		return []store.Request{{Counter: "route:api", Limit: benchLimit, Cost: 1}}
	})
}

// BenchmarkRedisTakeThree is three limits per request (global, route,
// daily quota), all or nothing, in one script.
func BenchmarkRedisTakeThree(b *testing.B) {
	benchRedis(b, func() []store.Request {
		return []store.Request{
			{Counter: "global:api", Limit: benchLimit, Cost: 1},
			{Counter: "route:r1:per_user", Limit: limiter.Limit{Algorithm: limiter.TokenBucket, Quota: 1 << 30, Rate: 1000, Window: time.Second}, Cost: 1},
			{Counter: "global:quota", Limit: limiter.Limit{Algorithm: limiter.FixedWindow, Quota: 1 << 40, Calendar: limiter.CalendarWindow{Period: limiter.Day}.Cached()}, Cost: 1},
		}
	})
}

// BenchmarkRedisDown is the cost of a decision while Redis is known to be
// down (on_error deny): no network, no wait.
func BenchmarkRedisDown(b *testing.B) {
	client := storage.NewRedisClient(&redis.UniversalOptions{Addrs: []string{"127.0.0.1:1"}}, 50*time.Millisecond)
	s, err := storage.NewRedis(client, storage.RedisOptions{OnError: store.Deny, RetryInterval: time.Hour})
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	_ = s.Ping(context.Background())
	reqs := []store.Request{{Counter: "route:api", Key: "k", Limit: benchLimit, Cost: 1}}
	res := make([]limiter.Result, 1)
	b.ReportAllocs()
	for b.Loop() {
		_ = s.Take(context.Background(), time.Now(), reqs, res)
	}
}

var benchLimit = limiter.Limit{Algorithm: limiter.FixedWindow, Quota: 1 << 40, Window: time.Hour}

func benchKeys(n int) []string {
	keys := make([]string, n)
	for i := range keys {
		keys[i] = "203.0.113." + strconv.Itoa(i%256) + "/" + strconv.Itoa(i)
	}
	return keys
}
