package store_test

import (
	"context"
	"runtime"
	"strconv"
	"testing"
	"time"

	"github.com/edgelimit/caddy-edgelimit/limiter"
	"github.com/edgelimit/caddy-edgelimit/store"
	"github.com/edgelimit/caddy-edgelimit/store/storetest"
)

// BenchmarkMemoryBytesPerKey inserts 1,000,000 keys into a memory store,
// for each algorithm, and reports the heap the store holds per key.
func BenchmarkMemoryBytesPerKey(b *testing.B) {
	const keys = 1_000_000
	limits := []limiter.Limit{
		{Algorithm: limiter.FixedWindow, Quota: 100, Window: time.Hour},
		{Algorithm: limiter.AnchoredWindow, Quota: 100, Window: time.Hour},
		{Algorithm: limiter.SlidingWindow, Quota: 100, Window: time.Hour},
		{Algorithm: limiter.TokenBucket, Quota: 100, Rate: 1, Window: time.Second},
		{Algorithm: limiter.GCRA, Quota: 100, Rate: 1, Window: time.Second},
	}
	names := make([]string, keys)
	for i := range names {
		names[i] = "client-" + strconv.Itoa(i)
	}
	for _, l := range limits {
		b.Run(l.Algorithm.String(), func(b *testing.B) {
			for b.Loop() {
				before := heapInUse()
				m := store.NewMemory(store.MemoryOptions{MaxKeys: 2 * keys, SweepInterval: time.Hour})
				req := []store.Request{{Counter: "c", Limit: l, Cost: 1}}
				res := make([]limiter.Result, 1)
				for _, k := range names {
					req[0].Key = k
					_ = m.Take(context.Background(), storetest.Base, req, res)
				}
				after := heapInUse()
				if m.Len() != keys {
					b.Fatalf("%d keys held", m.Len())
				}
				b.ReportMetric(float64(after-before)/keys, "bytes/key")
				runtime.KeepAlive(m)
			}
		})
	}
}

func heapInUse() uint64 {
	runtime.GC()
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.HeapInuse
}
