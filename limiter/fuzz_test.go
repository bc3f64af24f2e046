package limiter

import (
	"testing"
	"time"
)

// FuzzTake drives each algorithm with arbitrary time steps and costs and
// checks what must always hold: remaining within [0, quota], a retry delay
// exactly on denials, a window never counting past its quota, and a denied
// request allowed once its retry delay has passed.
func FuzzTake(f *testing.F) {
	f.Add([]byte{1, 2, 3, 200, 7, 0, 255, 9}, uint8(3), uint16(100))
	f.Add([]byte{0, 0, 0, 0, 0, 0}, uint8(1), uint16(1))
	f.Add([]byte{255, 255, 1, 1, 128}, uint8(200), uint16(60000))
	f.Fuzz(func(t *testing.T, steps []byte, quota uint8, windowMs uint16) {
		if quota == 0 || windowMs == 0 || len(steps) > 512 {
			return
		}
		limits := []Limit{
			{Algorithm: FixedWindow, Quota: int64(quota), Window: time.Duration(windowMs) * time.Millisecond},
			{Algorithm: AnchoredWindow, Quota: int64(quota), Window: time.Duration(windowMs) * time.Millisecond},
			{Algorithm: SlidingWindow, Quota: int64(quota), Window: time.Duration(windowMs) * time.Millisecond},
			{Algorithm: TokenBucket, Quota: int64(quota), Rate: int64(quota)/2 + 1, Window: time.Duration(windowMs) * time.Millisecond},
			{Algorithm: GCRA, Quota: int64(quota), Rate: int64(quota)/3 + 1, Window: time.Duration(windowMs) * time.Millisecond},
		}
		for _, l := range limits {
			if l.Validate() != nil {
				continue
			}
			var s State
			now := base
			for _, b := range steps {
				now += int64(b) * int64(windowMs) * 37 // up to ~10 windows per step
				cost := int64(b%4) + 1
				before := s
				var r Result
				l.Take(&s, &r, now, cost)
				if r.Remaining < 0 || r.Remaining > l.Quota {
					t.Fatalf("%s: remaining %d outside [0, %d]", l.Algorithm, r.Remaining, l.Quota)
				}
				if r.Allowed != (r.RetryAfter == 0) {
					t.Fatalf("%s: allowed %v with retry %s", l.Algorithm, r.Allowed, r.RetryAfter)
				}
				if s.Count > l.Quota {
					t.Fatalf("%s: counted %d past the quota %d", l.Algorithm, s.Count, l.Quota)
				}
				if !r.Allowed && cost <= l.Quota {
					// Waiting the announced delay is enough.
					retry := before
					var again Result
					l.Take(&retry, &again, now+r.RetryAfter.Microseconds(), cost)
					if !again.Allowed {
						t.Fatalf("%s: denied again %s after a retry-after of %s (cost %d, state %+v)", l.Algorithm, again.RetryAfter, r.RetryAfter, cost, before)
					}
				}
			}
		}
	})
}

// FuzzExtremeNumbers drives limits with numbers up to the bounds: whatever
// Validate accepts gives times that are never negative and never in the
// past (a bucket that takes centuries to refill once answered a reset
// before now, the float backlog overflowing int64).
func FuzzExtremeNumbers(f *testing.F) {
	f.Add(uint8(3), int64(1_000_000_000_000), int64(366*24*3600*1_000_000), int64(1), int64(1), uint16(3))
	f.Add(uint8(4), int64(MaxQuota), int64(1000), int64(1), int64(MaxQuota), uint16(1))
	f.Add(uint8(0), int64(MaxQuota), int64(MaxWindow/time.Microsecond), int64(MaxQuota), int64(MaxQuota), uint16(500))
	f.Add(uint8(2), int64(1), int64(MaxWindow/time.Microsecond), int64(1), int64(1), uint16(60000))
	f.Fuzz(func(t *testing.T, alg uint8, quota, windowUS, rate, cost int64, steps uint16) {
		l := Limit{Algorithm: Algorithm(alg%5 + 1), Quota: quota, Window: time.Duration(windowUS) * time.Microsecond, Rate: rate}
		if windowUS <= 0 || windowUS > int64(MaxWindow/time.Microsecond) || l.Validate() != nil || cost < 1 || cost > quota {
			return
		}
		var s State
		now := base
		for i := range int(steps%64) + 1 {
			var r Result
			l.Take(&s, &r, now, cost)
			if r.Reset < 0 || r.RetryAfter < 0 || r.Window < 0 || r.ResetAt < now || r.Remaining < 0 || s.Expires < 0 {
				t.Fatalf("%s quota %d window %s rate %d cost %d, step %d: %+v, state %+v", l.Algorithm, quota, l.Window, rate, cost, i, r, s)
			}
			now += int64(i) * windowUS / 7
		}
	})
}
