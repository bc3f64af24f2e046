package store_test

import (
	"context"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/edgelimit/caddy-edgelimit/limiter"
	"github.com/edgelimit/caddy-edgelimit/store"
	"github.com/edgelimit/caddy-edgelimit/store/storetest"
)

var benchLimit = limiter.Limit{Algorithm: limiter.FixedWindow, Quota: 1 << 40, Window: time.Hour}

func benchKeys(n int) []string {
	keys := make([]string, n)
	for i := range keys {
		keys[i] = "203.0.113." + strconv.Itoa(i%256) + "/" + strconv.Itoa(i)
	}
	return keys
}

// BenchmarkMemoryTake is one limit per request, 10,000 distinct clients.
func BenchmarkMemoryTake(b *testing.B) {
	m := store.NewMemory(store.MemoryOptions{})
	keys := benchKeys(10000)
	now := storetest.Base
	ctx := context.Background()
	b.Run("serial", func(b *testing.B) {
		req := []store.Request{{Counter: "route:api", Limit: benchLimit, Cost: 1}}
		res := make([]limiter.Result, 1)
		b.ReportAllocs()
		i := 0
		for b.Loop() {
			req[0].Key = keys[i%len(keys)]
			i++
			_ = m.Take(ctx, now, req, res)
		}
	})
	b.Run("parallel", func(b *testing.B) {
		var seq atomic.Int64
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			req := []store.Request{{Counter: "route:api", Limit: benchLimit, Cost: 1}}
			res := make([]limiter.Result, 1)
			i := int(seq.Add(7919))
			for pb.Next() {
				req[0].Key = keys[i%len(keys)]
				i++
				_ = m.Take(ctx, now, req, res)
			}
		})
	})
}

// BenchmarkMemoryTakeThree is three limits per request (global, route,
// daily quota), all-or-nothing, 10,000 distinct clients.
func BenchmarkMemoryTakeThree(b *testing.B) {
	m := store.NewMemory(store.MemoryOptions{})
	keys := benchKeys(10000)
	now := storetest.Base
	ctx := context.Background()
	mk := func() []store.Request {
		return []store.Request{
			{Counter: "global:api", Limit: benchLimit, Cost: 1},
			{Counter: "route:r1:per_user", Limit: limiter.Limit{Algorithm: limiter.TokenBucket, Quota: 1 << 30, Rate: 1000, Window: time.Second}, Cost: 1},
			{Counter: "global:quota", Limit: limiter.Limit{Algorithm: limiter.FixedWindow, Quota: 1 << 40, Calendar: limiter.CalendarWindow{Period: limiter.Day}.Cached()}, Cost: 1},
		}
	}
	b.Run("serial", func(b *testing.B) {
		req := mk()
		res := make([]limiter.Result, 3)
		b.ReportAllocs()
		i := 0
		for b.Loop() {
			k := keys[i%len(keys)]
			req[0].Key, req[1].Key, req[2].Key = k, k, k
			i++
			_ = m.Take(ctx, now, req, res)
		}
	})
	b.Run("parallel", func(b *testing.B) {
		var seq atomic.Int64
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			req := mk()
			res := make([]limiter.Result, 3)
			i := int(seq.Add(7919))
			for pb.Next() {
				k := keys[i%len(keys)]
				req[0].Key, req[1].Key, req[2].Key = k, k, k
				i++
				_ = m.Take(ctx, now, req, res)
			}
		})
	})
}
