package limiter

import (
	"testing"
	"time"
)

// TestCheckCountsNothing: checking a key any number of times counts
// nothing, and says what Take would; a denial is marked as Take marks it.
func TestCheckCountsNothing(t *testing.T) {
	for _, l := range adminLimits() {
		t.Run(l.Algorithm.String(), func(t *testing.T) {
			k := &key{l: &l}
			now := base + 10*sec
			for i := 0; i < 12; i++ {
				before := k.s
				var c Result
				Check(&l, &k.s, &c, now, 1)
				if c.Allowed {
					before.Denied, before.Weight = false, k.s.Weight
					if k.s != before {
						t.Fatalf("step %d: a check that passes changed the state: %+v, was %+v", i, k.s, before)
					}
				}
				r := k.take(t, now, 1)
				if c.Allowed != r.Allowed || c.RetryAfter != r.RetryAfter {
					t.Fatalf("step %d: check said allowed=%v retry=%s, take said allowed=%v retry=%s", i, c.Allowed, c.RetryAfter, r.Allowed, r.RetryAfter)
				}
				if r.Allowed && c.Remaining != min64(r.Remaining+1, l.Quota) {
					t.Fatalf("step %d: check remaining %d, take left %d", i, c.Remaining, r.Remaining)
				}
				now += 10 * ms
			}
		})
	}
}

// TestCheckFirstDenial: a check that denies is a first denial once; a
// check that passes again clears the mark, so the next run of denials is
// reported again.
func TestCheckFirstDenial(t *testing.T) {
	l := Limit{Algorithm: TokenBucket, Quota: 1, Rate: 1, Window: time.Minute}
	var s State
	var r Result
	now := base
	Charge(&l, &s, &r, now, 1)
	Check(&l, &s, &r, now, 1)
	if r.Allowed || !r.FirstDenial {
		t.Fatalf("first check after the charge: %+v", r)
	}
	Check(&l, &s, &r, now+sec, 1)
	if r.Allowed || r.FirstDenial {
		t.Fatalf("second check: %+v", r)
	}
	Check(&l, &s, &r, now+minute, 1)
	if !r.Allowed || s.Denied {
		t.Fatalf("after a refill: %+v, state %+v", r, s)
	}
	Charge(&l, &s, &r, now+minute, 1)
	Check(&l, &s, &r, now+minute, 1)
	if r.Allowed || !r.FirstDenial {
		t.Fatalf("a new run of denials: %+v", r)
	}
}

// TestChargeOverdraws: a charge larger than what is left counts in full;
// the limit denies until enough is back, and says so.
func TestChargeOverdraws(t *testing.T) {
	cases := []struct {
		l Limit
		// the time after the charge of 3 quotas at which one unit passes
		// again
		back time.Duration
	}{
		{Limit{Algorithm: FixedWindow, Quota: 5, Window: time.Minute}, 50 * time.Second},
		{Limit{Algorithm: AnchoredWindow, Quota: 5, Window: time.Minute}, time.Minute},
		// The count of this window weighs on the next: 15*(60-e)/60+1 <= 5
		// from e = 44s of the next window.
		{Limit{Algorithm: SlidingWindow, Quota: 5, Window: time.Minute}, 50*time.Second + 44*time.Second},
		// 15 units of 12s each, the bucket holds 5: one unit fits after
		// 11 are drained.
		{Limit{Algorithm: TokenBucket, Quota: 5, Rate: 5, Window: time.Minute}, 11 * 12 * time.Second},
		{Limit{Algorithm: GCRA, Quota: 5, Rate: 5, Window: time.Minute}, 11 * 12 * time.Second},
	}
	for _, c := range cases {
		t.Run(c.l.Algorithm.String(), func(t *testing.T) {
			var s State
			var r Result
			now := base + 10*sec
			Charge(&c.l, &s, &r, now, 2)
			if !r.Allowed || r.Remaining != 3 {
				t.Fatalf("a charge within the limit: %+v", r)
			}
			Charge(&c.l, &s, &r, now, 13)
			if !r.Allowed || r.Remaining != 0 || r.RetryAfter != 0 {
				t.Fatalf("an overdrawing charge: %+v", r)
			}
			Check(&c.l, &s, &r, now, 1)
			if r.Allowed || r.RetryAfter != c.back {
				t.Fatalf("after overdrawing: %+v, want a denial for %s", r, c.back)
			}
			Check(&c.l, &s, &r, now+c.back.Microseconds()-1, 1)
			if r.Allowed {
				t.Fatalf("a microsecond early: %+v", r)
			}
			Check(&c.l, &s, &r, now+c.back.Microseconds(), 1)
			if !r.Allowed {
				t.Fatalf("at %s: %+v", c.back, r)
			}
		})
	}
}

// TestChargeHuge: the largest charges count as the most a limit can hold,
// and every time derived from them stays in range.
func TestChargeHuge(t *testing.T) {
	for _, l := range adminLimits() {
		for _, cost := range []int64{MaxQuota, MaxQuota + 1, 1 << 62} {
			var s State
			var r Result
			now := base + 10*sec
			Charge(&l, &s, &r, now, cost)
			Charge(&l, &s, &r, now, cost)
			if !r.Allowed || r.Remaining != 0 || r.Reset < 0 || s.Count > MaxQuota || s.Debt > MaxDebt || s.Expires <= now {
				t.Fatalf("%s: charged %d twice: %+v, state %+v", l.Algorithm, cost, r, s)
			}
			Check(&l, &s, &r, now, 1)
			if r.Allowed || r.RetryAfter <= 0 || r.RetryAfter > MaxRefill+time.Second || r.Reset < 0 {
				t.Fatalf("%s: after a charge of %d: %+v", l.Algorithm, cost, r)
			}
		}
	}
}

// TestChargeKeepsTheDenialMark: a charge that lands while the client is
// denied (its request was in flight) does not make the next denial a
// first one.
func TestChargeKeepsTheDenialMark(t *testing.T) {
	for _, l := range adminLimits() {
		var s State
		var r Result
		now := base + 10*sec
		Charge(&l, &s, &r, now, l.Quota)
		Check(&l, &s, &r, now, 1)
		if !r.FirstDenial {
			t.Fatalf("%s: %+v", l.Algorithm, r)
		}
		Charge(&l, &s, &r, now, 1)
		Check(&l, &s, &r, now, 1)
		if r.Allowed || r.FirstDenial {
			t.Fatalf("%s: a charge made the denial a first one: %+v", l.Algorithm, r)
		}
	}
}
