package storetest

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/edgelimit/caddy-edgelimit/limiter"
	"github.com/edgelimit/caddy-edgelimit/store"
)

// Exact hammers one key from many goroutines spread over several stores
// (several Caddy instances sharing a backend) and checks, for every
// algorithm, that exactly the quota is admitted, and that with two limits on
// a request the tighter one counted exactly the requests both admitted.
func Exact(t *testing.T, stores []store.Store, workers, perWorker int) {
	now := Base.Add(90 * time.Second)
	cases := []limiter.Limit{
		{Algorithm: limiter.FixedWindow, Quota: 100, Window: time.Hour},
		{Algorithm: limiter.AnchoredWindow, Quota: 100, Window: time.Hour},
		{Algorithm: limiter.SlidingWindow, Quota: 100, Window: time.Hour},
		{Algorithm: limiter.TokenBucket, Quota: 100, Rate: 1, Window: time.Hour},
		{Algorithm: limiter.GCRA, Quota: 100, Rate: 1, Window: time.Hour},
	}
	prefix := Prefix(t)
	ctx := context.Background()
	for _, l := range cases {
		t.Run(l.Algorithm.String(), func(t *testing.T) {
			tight := l
			tight.Quota = 37
			reqs := []store.Request{
				{Counter: prefix + "loose:" + l.Algorithm.String(), Key: "k", Limit: l, Cost: 1},
				{Counter: prefix + "tight:" + l.Algorithm.String(), Key: "k", Limit: tight, Cost: 1},
			}
			var both, single, failed atomic.Int64
			var wg sync.WaitGroup
			for w := range workers {
				wg.Add(1)
				go func(s store.Store) {
					defer wg.Done()
					res := make([]limiter.Result, 2)
					for range perWorker {
						if err := s.Take(ctx, now, reqs, res); err != nil {
							failed.Add(1)
						} else if res[0].Allowed && res[1].Allowed {
							both.Add(1)
						}
						if err := s.Take(ctx, now, reqs[:1], res); err != nil {
							failed.Add(1)
						} else if res[0].Allowed {
							single.Add(1)
						}
					}
				}(stores[w%len(stores)])
			}
			wg.Wait()
			if failed.Load() != 0 {
				t.Fatalf("%d takes failed", failed.Load())
			}
			if got := both.Load() + single.Load(); got != l.Quota {
				t.Fatalf("the loose limit admitted %d, want exactly %d", got, l.Quota)
			}
			// What the tight limit has left must be exactly what the
			// requests both limits admitted did not use.
			res := make([]limiter.Result, 1)
			left := int64(0)
			for ; left <= tight.Quota; left++ {
				if err := stores[0].Take(ctx, now, reqs[1:], res); err != nil {
					t.Fatal(err)
				}
				if !res[0].Allowed {
					break
				}
			}
			if both.Load()+left != tight.Quota {
				t.Fatalf("both admitted %d and the tight limit has %d left: a denied request was counted, or a counted one lost", both.Load(), left)
			}
		})
	}
}

// ExactCharges has many goroutines, spread over several stores (several
// instances on one backend), check and charge one key, each charge of its
// own size, for every algorithm: every charge counts in full, overdraws
// included (what remains is exactly the quota less every charge, or
// nothing), and once the charges overdraw it every check denies.
func ExactCharges(t *testing.T, stores []store.Store, workers, perWorker int) {
	now := Base.Add(90 * time.Second)
	cases := []limiter.Limit{
		{Algorithm: limiter.FixedWindow, Quota: 100000, Window: time.Hour},
		{Algorithm: limiter.AnchoredWindow, Quota: 100000, Window: time.Hour},
		{Algorithm: limiter.SlidingWindow, Quota: 100000, Window: time.Hour},
		{Algorithm: limiter.TokenBucket, Quota: 100000, Rate: 1, Window: time.Hour},
		{Algorithm: limiter.GCRA, Quota: 100000, Rate: 1, Window: time.Hour},
	}
	prefix := Prefix(t)
	ctx := context.Background()
	for _, l := range cases {
		t.Run(l.Algorithm.String(), func(t *testing.T) {
			req := store.Request{Counter: prefix + "charged:" + l.Algorithm.String(), Key: "k", Limit: l, Cost: 1}
			var charged, failed atomic.Int64
			var wg sync.WaitGroup
			for w := range workers {
				wg.Add(1)
				go func(s store.Store) {
					defer wg.Done()
					res := make([]limiter.Result, 1)
					for i := range perWorker {
						check := []store.Request{req}
						check[0].Mode = store.ModeCheck
						if err := s.Take(ctx, now, check, res); err != nil {
							failed.Add(1)
							continue
						}
						charge := []store.Request{req}
						charge[0].Mode = store.ModeCharge
						charge[0].Cost = int64(1 + (w*perWorker+i)%37)
						if err := s.Take(ctx, now, charge, res); err != nil || !res[0].Allowed {
							failed.Add(1)
							continue
						}
						charged.Add(charge[0].Cost)
					}
				}(stores[w%len(stores)])
			}
			wg.Wait()
			if failed.Load() != 0 {
				t.Fatalf("%d takes failed", failed.Load())
			}
			check := []store.Request{req}
			check[0].Mode = store.ModeCheck
			res := make([]limiter.Result, 1)
			if err := stores[0].Take(ctx, now, check, res); err != nil {
				t.Fatal(err)
			}
			left := l.Quota - charged.Load()
			if left < 1 {
				if res[0].Allowed || res[0].Remaining != 0 {
					t.Fatalf("charged %d of %d: a check %+v, want a denial", charged.Load(), l.Quota, res[0])
				}
				return
			}
			if !res[0].Allowed || res[0].Remaining != left {
				t.Fatalf("charged %d of %d: a check %+v, want %d left", charged.Load(), l.Quota, res[0], left)
			}
		})
	}
}
