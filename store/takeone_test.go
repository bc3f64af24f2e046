package store_test

import (
	"testing"
	"time"

	"github.com/edgelimit/caddy-edgelimit/limiter"
	"github.com/edgelimit/caddy-edgelimit/store"
)

// TakeOne decides as limiter.Decide on the state the store keeps, for
// every algorithm: its written-out fixed window too, before and after the
// epoch, with an offset, across windows and costs, passing and denying.
func TestTakeOneAsDecide(t *testing.T) {
	limits := []limiter.Limit{
		{Algorithm: limiter.FixedWindow, Quota: 3, Window: time.Second},
		{Algorithm: limiter.FixedWindow, Quota: 5, Window: time.Minute, Offset: 7 * time.Second},
		{Algorithm: limiter.AnchoredWindow, Quota: 3, Window: time.Second},
		{Algorithm: limiter.SlidingWindow, Quota: 3, Window: time.Second},
		{Algorithm: limiter.TokenBucket, Quota: 3, Rate: 3, Window: time.Second},
		{Algorithm: limiter.GCRA, Quota: 3, Rate: 3, Window: time.Second},
	}
	for _, start := range []int64{1_700_000_000_123_456, -5_000_000} {
		for i := range limits {
			m := store.NewMemory(store.MemoryOptions{})
			var st limiter.State
			now := start
			for n := 0; n < 40; n++ {
				cost := int64(1 + n%2)
				r := store.Request{Counter: "c", Key: "k", Limit: limits[i], Cost: cost}
				var got, want limiter.Result
				store.TakeOne(m, &r, &got, now)
				if st.Expires <= now {
					st = limiter.State{}
				}
				limiter.Decide(&limits[i], &st, &want, now, cost)
				if got != want {
					t.Fatalf("%v from %d, request %d at %d: TakeOne %+v, Decide %+v", limits[i].Algorithm, start, n, now, got, want)
				}
				now += int64(n%5) * 130_000
			}
		}
	}
}
