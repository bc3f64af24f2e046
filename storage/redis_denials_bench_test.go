package storage_test

import (
	"context"
	"testing"
	"time"

	"github.com/edgelimit/caddy-edgelimit/internal/redistest"
	"github.com/edgelimit/caddy-edgelimit/limiter"
	"github.com/edgelimit/caddy-edgelimit/storage"
	"github.com/edgelimit/caddy-edgelimit/store"
)

// BenchmarkRedisLocalDenial is a client over its limit answered from the
// instance's local denials (no round trip).
func BenchmarkRedisLocalDenial(b *testing.B) {
	srv := redistest.Start(b)
	s := openRedis(b, srv, storage.RedisOptions{Timeout: time.Second})
	waitLocalDenials(b, s, true)
	l := limiter.Limit{Algorithm: limiter.FixedWindow, Quota: 1, Window: time.Hour}
	reqs := []store.Request{{Counter: "route:api", Key: "k", Limit: l, Cost: 1}}
	res := make([]limiter.Result, 1)
	ctx := context.Background()
	for range 2 {
		_ = s.Take(ctx, time.Now(), reqs, res)
	}
	b.ReportAllocs()
	for b.Loop() {
		_ = s.Take(ctx, time.Now(), reqs, res)
	}
	if res[0].Allowed {
		b.Fatal("allowed")
	}
}
