package storage

import (
	"math/rand/v2"
	"time"

	"github.com/edgelimit/caddy-edgelimit/limiter"
)

// KeySlot exposes the Cluster slot function to the tests of storage_test.
var KeySlot = keySlot

// RandomLimit is randomLimit for the tests of storage_test.
var RandomLimit = randomLimit

// randomLimit is a limit of any algorithm with small numbers, so that a few
// decisions reach its quota.
func randomLimit(rng *rand.Rand) limiter.Limit {
	q := int64(1 + rng.IntN(8))
	switch rng.IntN(6) {
	case 0:
		w := time.Duration(1+rng.IntN(20)) * time.Second
		// An offset shorter than the window, as Validate wants.
		return limiter.Limit{Algorithm: limiter.FixedWindow, Quota: q, Window: w, Offset: time.Duration(rng.IntN(2)) * time.Second % w}
	case 1:
		return limiter.Limit{Algorithm: limiter.AnchoredWindow, Quota: q, Window: time.Duration(1+rng.IntN(20)) * time.Second}
	case 2:
		return limiter.Limit{Algorithm: limiter.SlidingWindow, Quota: q, Window: time.Duration(1+rng.IntN(20)) * time.Second}
	case 3, 4:
		rate := int64(1 + rng.IntN(3))
		a := limiter.TokenBucket
		if rng.IntN(2) == 0 {
			a = limiter.GCRA
		}
		// A whole number of seconds per unit: see TestRedisMatchesMemory.
		return limiter.Limit{Algorithm: a, Quota: q, Rate: rate, Window: time.Duration(rate*int64(1+rng.IntN(5))) * time.Second}
	default:
		return limiter.Limit{Algorithm: limiter.FixedWindow, Quota: q,
			Calendar: limiter.CalendarWindow{Period: limiter.Day, At: time.Duration(rng.IntN(24)) * time.Hour}.Cached()}
	}
}

// RedisDown tells whether the store takes Redis for down (on_error decides
// without asking it).
func (s *Redis) RedisDown() bool { return s.policy.IsDown() }
