package store

import (
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/edgelimit/caddy-edgelimit/limiter"
)

// A local denial forgotten (a refund, an invalidation) while a request is
// checked against it: the request is denied from what was read, or asks
// Redis; it is never answered "allowed" without Redis counting it. Found
// in a Cluster test: a client admitted once over its quota.
func TestDenialsCheckNeverAllows(t *testing.T) {
	d := NewDenials(0)
	now := time.Unix(1_800_000_000, 0)
	l := limiter.Limit{Algorithm: limiter.FixedWindow, Quota: 1, Window: time.Hour}
	reqs := []Request{{Counter: "c", Key: "k", Limit: l, Cost: 1}}
	denied := []limiter.Result{{Allowed: false, Limit: 1, RetryAfter: time.Minute}}
	var stop atomic.Bool
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for !stop.Load() {
			d.Record(d.Generation(), now, reqs, denied)
			d.Forget(reqs)
		}
	}()
	res := make([]limiter.Result, 1)
	deadline := time.Now().Add(2 * time.Second)
	for n := 0; n < 2_000_000 && time.Now().Before(deadline); n++ {
		res[0] = limiter.Result{}
		if d.Check(now, reqs, res) && res[0].Allowed {
			stop.Store(true)
			wg.Wait()
			t.Fatalf("check %d answered a request allowed from local denials: %+v", n, res[0])
		}
	}
	stop.Store(true)
	wg.Wait()
}
