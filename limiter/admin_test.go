package limiter

import (
	"testing"
	"time"
)

// TestPeekCountsNothing: peeking at a key any number of times leaves it as
// it was, and says what the next Take says.
func TestPeekCountsNothing(t *testing.T) {
	for _, l := range adminLimits() {
		t.Run(l.Algorithm.String(), func(t *testing.T) {
			k := &key{l: &l}
			now := base + 10*sec
			for i := 0; i < 12; i++ {
				before := k.s
				p := l.Peek(k.s, now, 1)
				if k.s != before {
					t.Fatalf("peek changed the state")
				}
				r := k.take(t, now, 1)
				if p.Allowed != r.Allowed || p.RetryAfter != r.RetryAfter {
					t.Fatalf("step %d: peek said allowed=%v retry=%s, take said allowed=%v retry=%s", i, p.Allowed, p.RetryAfter, r.Allowed, r.RetryAfter)
				}
				if r.Allowed && p.Remaining != min64(r.Remaining+1, l.Quota) {
					t.Fatalf("step %d: peek remaining %d, take left %d", i, p.Remaining, r.Remaining)
				}
				if p.FirstDenial {
					t.Fatal("peek reports a first denial")
				}
				now += 10 * ms
			}
		})
	}
}

func adminLimits() []Limit {
	return []Limit{
		{Algorithm: FixedWindow, Quota: 5, Window: time.Minute},
		{Algorithm: FixedWindow, Quota: 5, Calendar: CalendarWindow{Period: Day, Location: time.UTC}.Cached()},
		{Algorithm: AnchoredWindow, Quota: 5, Window: time.Minute},
		{Algorithm: SlidingWindow, Quota: 5, Window: time.Minute},
		{Algorithm: TokenBucket, Quota: 5, Rate: 1, Window: time.Minute},
		{Algorithm: GCRA, Quota: 5, Rate: 5, Window: time.Minute},
	}
}

// TestCreditGivesExactly: a client that used its quota and is credited n
// units passes exactly n more requests at that moment, for every algorithm.
func TestCreditGivesExactly(t *testing.T) {
	for _, l := range adminLimits() {
		for _, n := range []int64{1, 2, 5, 50} {
			k := &key{l: &l}
			now := base + 10*sec
			for i := 0; i < 5; i++ {
				mustAllow(t, k.take(t, now, 1), int64(4-i))
			}
			if r := k.take(t, now, 1); r.Allowed {
				t.Fatalf("%s: allowed past the quota", l.Algorithm)
			}
			given := l.Credit(&k.s, now, n)
			want := min64(n, 5)
			if given != want {
				t.Fatalf("%s: credit %d gave %d, want %d", l.Algorithm, n, given, want)
			}
			if p := l.Peek(k.s, now, 1); p.Remaining != want {
				t.Fatalf("%s: after credit %d, peek says %d remaining, want %d", l.Algorithm, n, p.Remaining, want)
			}
			for i := int64(0); i < want; i++ {
				if r := k.take(t, now, 1); !r.Allowed {
					t.Fatalf("%s: credit %d: request %d denied: %+v", l.Algorithm, n, i+1, r)
				}
			}
			if r := k.take(t, now, 1); r.Allowed {
				t.Fatalf("%s: credit %d let %d+1 requests through", l.Algorithm, n, want)
			}
		}
	}
}

// TestCreditNothingCounted: a fresh key, or one from an earlier window,
// gets nothing (it is whole already).
func TestCreditNothingCounted(t *testing.T) {
	for _, l := range adminLimits() {
		var s State
		if g := l.Credit(&s, base, 3); g != 0 || s != (State{}) {
			t.Fatalf("%s: credit on a fresh key gave %d, state %+v", l.Algorithm, g, s)
		}
		k := &key{l: &l}
		k.take(t, base+sec, 1)
		later := base + 3*24*3600*sec
		if g := l.Credit(&k.s, later, 3); g != 0 {
			t.Fatalf("%s: credit on a state three days old gave %d", l.Algorithm, g)
		}
		if g := l.Credit(&k.s, later, 0); g != 0 {
			t.Fatalf("%s: credit of 0 gave %d", l.Algorithm, g)
		}
	}
}

// TestCreditSlidingPrevious: in the window after the quota was used, the
// previous count weighs in; credit takes from it, and remaining grows by
// no more than the units given.
func TestCreditSlidingPrevious(t *testing.T) {
	l := Limit{Algorithm: SlidingWindow, Quota: 10, Window: time.Minute}
	k := &key{l: &l}
	for i := 0; i < 10; i++ {
		k.take(t, base+sec, 1)
	}
	now := base + minute + 30*sec // half the previous window still weighs: 5 used
	before := l.Peek(k.s, now, 1)
	if before.Remaining != 5 {
		t.Fatalf("remaining %d, want 5", before.Remaining)
	}
	if g := l.Credit(&k.s, now, 4); g != 4 {
		t.Fatalf("gave %d, want 4", g)
	}
	after := l.Peek(k.s, now, 1)
	if after.Remaining != 7 {
		t.Fatalf("remaining %d after taking 4 from the previous window at half weight, want 7", after.Remaining)
	}
}

// TestPeekFresh: a fresh key reports the whole quota and allows.
func TestPeekFresh(t *testing.T) {
	for _, l := range adminLimits() {
		p := l.Peek(State{}, base+7*sec, 1)
		if !p.Allowed || p.Remaining != 5 || p.RetryAfter != 0 || p.ResetAt < base+7*sec {
			t.Fatalf("%s: fresh key peeks as %+v", l.Algorithm, p)
		}
	}
}

// FuzzPeekCredit drives each algorithm with takes, peeks and credits and
// checks: a peek changes nothing and agrees with the next take; a credit
// of n raises the remaining quota by at most n, never above the quota,
// never lowers it, and the limiter's invariants (FuzzTake's) still hold.
func FuzzPeekCredit(f *testing.F) {
	f.Add([]byte{1, 2, 3, 200, 7, 0, 255, 9, 66, 130}, uint8(3), uint16(100))
	f.Add([]byte{0, 0, 0, 0, 0, 0, 64, 64, 64}, uint8(1), uint16(1))
	f.Add([]byte{255, 255, 1, 1, 128, 192, 193}, uint8(200), uint16(60000))
	f.Fuzz(func(t *testing.T, steps []byte, quota uint8, windowMs uint16) {
		if quota == 0 || windowMs == 0 || len(steps) > 512 {
			return
		}
		w := time.Duration(windowMs) * time.Millisecond
		limits := []Limit{
			{Algorithm: FixedWindow, Quota: int64(quota), Window: w},
			{Algorithm: AnchoredWindow, Quota: int64(quota), Window: w},
			{Algorithm: SlidingWindow, Quota: int64(quota), Window: w},
			{Algorithm: TokenBucket, Quota: int64(quota), Rate: int64(quota)/2 + 1, Window: w},
			{Algorithm: GCRA, Quota: int64(quota), Rate: int64(quota)/3 + 1, Window: w},
		}
		for _, l := range limits {
			if l.Validate() != nil {
				continue
			}
			var s State
			now := base
			for _, b := range steps {
				now += int64(b%64) * int64(windowMs) * 37
				cost := int64(b%4) + 1
				before := s
				p := l.Peek(s, now, cost)
				if s != before {
					t.Fatalf("%s: peek changed the state", l.Algorithm)
				}
				if p.Remaining < 0 || p.Remaining > l.Quota || p.Allowed != (p.RetryAfter == 0) || p.ResetAt < now {
					t.Fatalf("%s: peek %+v", l.Algorithm, p)
				}
				if b >= 192 {
					n := int64(b%8) + 1
					given := l.Credit(&s, now, n)
					after := l.Peek(s, now, cost)
					if given < 0 || given > n {
						t.Fatalf("%s: credit %d gave %d", l.Algorithm, n, given)
					}
					if after.Remaining < p.Remaining || after.Remaining > p.Remaining+n || after.Remaining > l.Quota {
						t.Fatalf("%s: credit %d: remaining %d -> %d (state %+v -> %+v)", l.Algorithm, n, p.Remaining, after.Remaining, before, s)
					}
					if s.Count < 0 || s.Prev < 0 || s.Debt < 0 {
						t.Fatalf("%s: credit left state %+v", l.Algorithm, s)
					}
					continue
				}
				var r Result
				l.Take(&s, &r, now, cost)
				if r.Allowed != p.Allowed || r.RetryAfter != p.RetryAfter {
					t.Fatalf("%s: peek allowed=%v retry=%s, take allowed=%v retry=%s", l.Algorithm, p.Allowed, p.RetryAfter, r.Allowed, r.RetryAfter)
				}
				if r.Remaining < 0 || r.Remaining > l.Quota || s.Count > l.Quota {
					t.Fatalf("%s: after take %+v state %+v", l.Algorithm, r, s)
				}
			}
		}
	})
}
