package limiter

import (
	"fmt"
	"strings"
	"testing"
	"time"
)

// base is a Monday, 2026-11-23 00:00:00 UTC, on every aligned boundary up
// to a day. The limiter is pure (it never reads the real clock), so fixed
// instants here and in the calendar tests hold on any date.
var base = time.Date(2026, 11, 23, 0, 0, 0, 0, time.UTC).UnixMicro()

const (
	ms     = int64(1000)
	sec    = 1000 * ms
	minute = 60 * sec
)

// key keeps a State between decisions, as a store would.
type key struct {
	l *Limit
	s State
}

func (k *key) take(t *testing.T, now, cost int64) Result {
	t.Helper()
	var r Result
	k.l.Take(&k.s, &r, now, cost)
	return r
}

func mustAllow(t *testing.T, r Result, remaining int64) {
	t.Helper()
	if !r.Allowed {
		t.Fatalf("denied, want allowed with %d remaining: %+v", remaining, r)
	}
	if r.Remaining != remaining {
		t.Fatalf("remaining %d, want %d: %+v", r.Remaining, remaining, r)
	}
}

func mustDeny(t *testing.T, r Result, retry time.Duration) {
	t.Helper()
	if r.Allowed {
		t.Fatalf("allowed, want denied: %+v", r)
	}
	if r.RetryAfter != retry {
		t.Fatalf("retry after %s, want %s: %+v", r.RetryAfter, retry, r)
	}
}

func TestFixedWindowEdges(t *testing.T) {
	k := &key{l: &Limit{Algorithm: FixedWindow, Quota: 5, Window: time.Minute}}
	now := base + 10*sec
	for i := int64(1); i <= 5; i++ {
		r := k.take(t, now, 1)
		mustAllow(t, r, 5-i)
		if r.Reset != 50*time.Second || r.Window != time.Minute || r.Limit != 5 {
			t.Fatalf("reset %s window %s limit %d", r.Reset, r.Window, r.Limit)
		}
	}
	r := k.take(t, now, 1)
	mustDeny(t, r, 50*time.Second)
	if !r.FirstDenial || r.Remaining != 0 {
		t.Fatalf("first denial %v remaining %d", r.FirstDenial, r.Remaining)
	}
	r = k.take(t, base+minute-1, 1)
	mustDeny(t, r, time.Microsecond)
	if r.FirstDenial {
		t.Fatal("second denial in the window reported as first")
	}
	// The boundary resets the count, exactly at the minute.
	mustAllow(t, k.take(t, base+minute, 1), 4)
	mustAllow(t, k.take(t, base+minute, 4), 0)
	r = k.take(t, base+minute+sec, 1)
	if !r.FirstDenial {
		t.Fatal("first denial of a new window not reported")
	}
}

func TestFixedWindowOffsetAndCost(t *testing.T) {
	k := &key{l: &Limit{Algorithm: FixedWindow, Quota: 10, Window: 24 * time.Hour, Offset: 6 * time.Hour}}
	now := base + 5*60*minute // 05:00, window began yesterday 06:00
	r := k.take(t, now, 7)
	mustAllow(t, r, 3)
	if r.Reset != time.Hour {
		t.Fatalf("reset %s, want 1h", r.Reset)
	}
	mustDeny(t, k.take(t, now, 4), time.Hour)
	mustAllow(t, k.take(t, now, 3), 0)
	mustAllow(t, k.take(t, base+6*60*minute, 10), 0)
	// A cost above the quota can never pass; it is denied without counting.
	k2 := &key{l: &Limit{Algorithm: FixedWindow, Quota: 2, Window: time.Second}}
	mustDeny(t, k2.take(t, base, 3), time.Second)
	mustAllow(t, k2.take(t, base, 2), 0)
}

func TestAnchoredWindowStartsAtFirstCountedRequest(t *testing.T) {
	k := &key{l: &Limit{Algorithm: AnchoredWindow, Quota: 3, Window: time.Minute}}
	first := base + 17*sec + 250*ms // nowhere near a clock boundary
	r := k.take(t, first, 1)
	mustAllow(t, r, 2)
	if r.Reset != time.Minute {
		t.Fatalf("reset %s, want a whole minute from the first request", r.Reset)
	}
	mustAllow(t, k.take(t, first+10*sec, 1), 1)
	mustAllow(t, k.take(t, first+20*sec, 1), 0)
	// Crossing the wall clock minute changes nothing.
	mustDeny(t, k.take(t, base+minute+sec, 1), us(first+minute-(base+minute+sec)))
	mustDeny(t, k.take(t, first+minute-1, 1), time.Microsecond)
	// At first+1m the window is over; the next window starts at the next
	// counted request, not at first+1m.
	later := first + minute + 42*sec
	r = k.take(t, later, 1)
	mustAllow(t, r, 2)
	if r.Reset != time.Minute {
		t.Fatalf("new window reset %s, want 1m from %d", r.Reset, later)
	}
}

func TestAnchoredDenialStartsNoTimer(t *testing.T) {
	k := &key{l: &Limit{Algorithm: AnchoredWindow, Quota: 3, Window: time.Minute}}
	r := k.take(t, base, 5) // too big: denied, must not start a window
	if r.Allowed {
		t.Fatal("cost above quota allowed")
	}
	r = k.take(t, base+50*sec, 1)
	mustAllow(t, r, 2)
	if r.Reset != time.Minute {
		t.Fatalf("window started by a denied request: reset %s", r.Reset)
	}
}

func TestSlidingWindowHasNoBoundaryBurst(t *testing.T) {
	k := &key{l: &Limit{Algorithm: SlidingWindow, Quota: 10, Window: time.Minute}}
	// Ten requests at the end of one window...
	for i := int64(0); i < 10; i++ {
		mustAllow(t, k.take(t, base+59*sec, 1), 9-i)
	}
	mustDeny(t, k.take(t, base+59*sec, 1), 1*time.Second+6*time.Second)
	// ...and right after the boundary the previous window still weighs
	// 59/60 of 10: a fixed window would allow 10 more here.
	r := k.take(t, base+minute+sec, 1)
	mustDeny(t, r, 5*time.Second)
	// At 6s into the window the weight is 9: one request fits.
	mustAllow(t, k.take(t, base+minute+6*sec, 1), 0)
	mustDeny(t, k.take(t, base+minute+6*sec, 1), 6*time.Second)
	// Two windows later everything has slid out.
	mustAllow(t, k.take(t, base+3*minute, 10), 0)
}

func TestSlidingWindowExactWithinOneWindow(t *testing.T) {
	k := &key{l: &Limit{Algorithm: SlidingWindow, Quota: 4, Window: time.Second}}
	for i := int64(0); i < 4; i++ {
		mustAllow(t, k.take(t, base+100*ms, 1), 3-i)
	}
	r := k.take(t, base+100*ms, 1)
	if r.Allowed || r.RetryAfter <= 0 {
		t.Fatalf("5th request in the window: %+v", r)
	}
	// Waiting the announced time lets the request through, not earlier.
	at := base + 100*ms + r.RetryAfter.Microseconds()
	if k.take(t, at-1, 1).Allowed {
		t.Fatal("allowed before retry-after")
	}
	mustAllow(t, k.take(t, at, 1), 0)
}

func TestTokenBucketBurstAndRefill(t *testing.T) {
	k := &key{l: &Limit{Algorithm: TokenBucket, Quota: 3, Rate: 1, Window: time.Second}}
	mustAllow(t, k.take(t, base, 1), 2)
	mustAllow(t, k.take(t, base, 1), 1)
	r := k.take(t, base, 1)
	mustAllow(t, r, 0)
	if r.Reset != 3*time.Second {
		t.Fatalf("reset %s, want 3s to refill from empty", r.Reset)
	}
	mustDeny(t, k.take(t, base, 1), time.Second)
	// Fractional refill: half a token is not enough...
	mustDeny(t, k.take(t, base+500*ms, 1), 500*time.Millisecond)
	// ...a whole one is.
	mustAllow(t, k.take(t, base+sec, 1), 0)
	// After a long idle the bucket is full, not fuller.
	mustAllow(t, k.take(t, base+100*sec, 1), 2)
	mustAllow(t, k.take(t, base+100*sec, 2), 0)
	mustDeny(t, k.take(t, base+100*sec, 1), time.Second)
}

func TestTokenBucketFractionalRates(t *testing.T) {
	// 45 tokens per second: 22222.2µs apart, summed in floats.
	k := &key{l: &Limit{Algorithm: TokenBucket, Quota: 450, Rate: 45, Window: time.Second}}
	n := 0
	for ; n < 1000; n++ {
		if !k.take(t, base, 1).Allowed {
			break
		}
	}
	if n != 450 {
		t.Fatalf("burst of %d, want exactly the capacity 450", n)
	}
	// Over ten seconds, exactly 450 more.
	got := 0
	for i := int64(1); i <= 10*1000; i++ {
		if k.take(t, base+i*ms, 1).Allowed {
			got++
		}
	}
	if got != 450 {
		t.Fatalf("refilled %d in 10s, want 450", got)
	}
}

func TestGCRASpacing(t *testing.T) {
	// 10 per second with bursts of 2.
	k := &key{l: &Limit{Algorithm: GCRA, Quota: 2, Rate: 10, Window: time.Second}}
	mustAllow(t, k.take(t, base, 1), 1)
	mustAllow(t, k.take(t, base, 1), 0)
	mustDeny(t, k.take(t, base, 1), 100*time.Millisecond)
	mustDeny(t, k.take(t, base+99*ms, 1), time.Millisecond)
	mustAllow(t, k.take(t, base+100*ms, 1), 0)
	if got := (Limit{Algorithm: GCRA, Quota: 2, Rate: 10, Window: time.Second}).PolicyWindow(); got != 200*time.Millisecond {
		t.Fatalf("policy window %s", got)
	}
}

func TestCalendarDaysMonthsAndDST(t *testing.T) {
	paris, err := time.LoadLocation("Europe/Paris")
	if err != nil {
		t.Skip("no tz database:", err)
	}
	cases := []struct {
		name       string
		cal        CalendarWindow
		now        time.Time
		start, end time.Time
	}{
		{"utc midnight", CalendarWindow{Period: Day}, time.Date(2026, 11, 23, 13, 0, 0, 0, time.UTC),
			time.Date(2026, 11, 23, 0, 0, 0, 0, time.UTC), time.Date(2026, 11, 24, 0, 0, 0, 0, time.UTC)},
		{"before reset time", CalendarWindow{Period: Day, At: 6 * time.Hour}, time.Date(2026, 11, 23, 5, 59, 59, 0, time.UTC),
			time.Date(2026, 11, 22, 6, 0, 0, 0, time.UTC), time.Date(2026, 11, 23, 6, 0, 0, 0, time.UTC)},
		{"dst day is 23h", CalendarWindow{Period: Day, Location: paris}, time.Date(2026, 3, 29, 12, 0, 0, 0, paris),
			time.Date(2026, 3, 29, 0, 0, 0, 0, paris), time.Date(2026, 3, 30, 0, 0, 0, 0, paris)},
		{"month", CalendarWindow{Period: Month}, time.Date(2026, 2, 28, 23, 0, 0, 0, time.UTC),
			time.Date(2026, 2, 1, 0, 0, 0, 0, time.UTC), time.Date(2026, 3, 1, 0, 0, 0, 0, time.UTC)},
		{"week from monday", CalendarWindow{Period: Week}, time.Date(2026, 11, 29, 23, 0, 0, 0, time.UTC),
			time.Date(2026, 11, 23, 0, 0, 0, 0, time.UTC), time.Date(2026, 11, 30, 0, 0, 0, 0, time.UTC)},
	}
	for _, c := range cases {
		s, e := c.cal.Bounds(c.now.UnixMicro())
		if s != c.start.UnixMicro() || e != c.end.UnixMicro() {
			t.Errorf("%s: got [%s, %s), want [%s, %s)", c.name, time.UnixMicro(s).UTC(), time.UnixMicro(e).UTC(), c.start.UTC(), c.end.UTC())
		}
	}
	if d := time.Duration(time.Date(2026, 3, 30, 0, 0, 0, 0, paris).Sub(time.Date(2026, 3, 29, 0, 0, 0, 0, paris))); d != 23*time.Hour {
		t.Fatalf("test premise: DST day lasts %s", d)
	}
}

func TestCalendarQuotaResetsAtMidnight(t *testing.T) {
	k := &key{l: &Limit{Algorithm: FixedWindow, Quota: 2, Calendar: CalendarWindow{Period: Day}.Cached()}}
	eve := time.Date(2026, 11, 23, 23, 59, 59, 0, time.UTC).UnixMicro()
	mustAllow(t, k.take(t, eve, 2), 0)
	mustDeny(t, k.take(t, eve, 1), time.Second)
	mustAllow(t, k.take(t, eve+sec, 1), 1)
	// The cache follows the clock both ways.
	if s, e := k.l.Calendar.Bounds(eve); e != eve+sec || s != eve+sec-24*60*minute {
		t.Fatalf("cached bounds after going back: [%d, %d)", s, e)
	}
	if got := fmt.Sprint(k.l.Calendar); got != "1 day, reset at 00:00 UTC" {
		t.Fatalf("calendar prints as %q", got)
	}
}

func TestValidate(t *testing.T) {
	cases := []struct {
		l    Limit
		want string
	}{
		{Limit{}, "no algorithm"},
		{Limit{Algorithm: FixedWindow, Quota: 0, Window: time.Minute}, "quota must be at least 1"},
		{Limit{Algorithm: TokenBucket, Quota: -1, Rate: 1, Window: time.Second}, "capacity must be at least 1"},
		{Limit{Algorithm: TokenBucket, Quota: 3, Rate: 0, Window: time.Second}, "refill rate"},
		{Limit{Algorithm: FixedWindow, Quota: 1, Window: 0}, "shorter than the minimum"},
		{Limit{Algorithm: FixedWindow, Quota: 1, Window: 400 * 24 * time.Hour}, "longer than the maximum"},
		{Limit{Algorithm: FixedWindow, Quota: MaxQuota + 1, Window: time.Second}, "larger than the maximum"},
		{Limit{Algorithm: FixedWindow, Quota: 1, Window: time.Hour, Offset: time.Hour}, "offset"},
		{Limit{Algorithm: SlidingWindow, Quota: 1, Calendar: CalendarWindow{Period: Day}}, "calendar"},
	}
	for _, c := range cases {
		err := c.l.Validate()
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%+v: error %v, want %q", c.l, err, c.want)
		}
	}
	if err := (Limit{Algorithm: GCRA, Quota: 5, Rate: 5, Window: time.Second}).Validate(); err != nil {
		t.Fatal(err)
	}
}

func TestParseAlgorithm(t *testing.T) {
	for a := FixedWindow; a <= GCRA; a++ {
		got, err := ParseAlgorithm(a.String())
		if err != nil || got != a {
			t.Fatalf("%s: %v %v", a, got, err)
		}
	}
	if _, err := ParseAlgorithm("leaky"); err == nil {
		t.Fatal("unknown algorithm accepted")
	}
}

func TestExpiresIsWhenStateIsFresh(t *testing.T) {
	limits := []Limit{
		{Algorithm: FixedWindow, Quota: 3, Window: time.Minute},
		{Algorithm: AnchoredWindow, Quota: 3, Window: time.Minute},
		{Algorithm: SlidingWindow, Quota: 3, Window: time.Minute},
		{Algorithm: TokenBucket, Quota: 3, Rate: 1, Window: time.Second},
		{Algorithm: GCRA, Quota: 3, Rate: 1, Window: time.Second},
	}
	for _, l := range limits {
		var s State
		var r Result
		l.Take(&s, &r, base+7*sec, 2)
		exp := s.Expires
		// At expiry, the kept state and a fresh one decide alike.
		var kept, fresh Result
		s2, s3 := s, State{}
		l.Take(&s2, &kept, exp, 3)
		l.Take(&s3, &fresh, exp, 3)
		if kept.Allowed != fresh.Allowed || kept.Remaining != fresh.Remaining {
			t.Errorf("%s: at expiry kept %+v, fresh %+v", l.Algorithm, kept, fresh)
		}
		// Just before, the state still matters.
		var before Result
		l.Take(&s, &before, exp-2*sec, 3)
		if before.Allowed {
			t.Errorf("%s: expired early (%d µs after the request)", l.Algorithm, exp-(base+7*sec))
		}
	}
}

func TestRefundUndoesTake(t *testing.T) {
	limits := []Limit{
		{Algorithm: FixedWindow, Quota: 3, Window: time.Minute},
		{Algorithm: AnchoredWindow, Quota: 3, Window: time.Minute},
		{Algorithm: SlidingWindow, Quota: 3, Window: time.Minute},
		{Algorithm: TokenBucket, Quota: 3, Rate: 1, Window: time.Second},
		{Algorithm: GCRA, Quota: 3, Rate: 1, Window: time.Second},
	}
	for _, l := range limits {
		k := &key{l: &l}
		mustAllow(t, k.take(t, base, 2), 1)
		l.Refund(&k.s, base, 1)
		// One unit back: two fit again, three do not.
		before := k.s
		mustAllow(t, k.take(t, base, 2), 0)
		k.s = before
		if k.take(t, base, 3).Allowed {
			t.Fatalf("%s: refund gave back more than it took", l.Algorithm)
		}
		// Refunding more than was taken never makes credit.
		l.Refund(&k.s, base, 10)
		if r := k.take(t, base, 4); r.Allowed {
			t.Fatalf("%s: refund above the count allowed %+v", l.Algorithm, r)
		}
	}
	// A refund after the window ended touches nothing.
	l := Limit{Algorithm: FixedWindow, Quota: 3, Window: time.Minute}
	k := &key{l: &l}
	mustAllow(t, k.take(t, base+minute+sec, 3), 0)
	stale := State{Start: base, Count: 3}
	l.Refund(&stale, base+minute+sec, 1)
	if stale.Count != 3 {
		t.Fatalf("refund reached into a past window: %+v", stale)
	}
}

// A request that costs more than a bucket can ever hold is told to retry
// within MaxRefill, not at a time past any clock (int64 of a float beyond
// 2^63: a negative RetryAfter, a ban or denial mark that ends before it
// begins), and a ban it starts ends by then too.
func TestBucketRetryOfAnImpossibleCost(t *testing.T) {
	now := int64(1_800_000_000_000_000)
	for _, l := range []Limit{
		{Algorithm: GCRA, Quota: 1, Rate: 1, Window: MaxWindow},
		{Algorithm: TokenBucket, Quota: 1, Rate: 1, Window: MaxWindow, Wait: time.Second},
		{Algorithm: GCRA, Quota: 1, Rate: 1, Window: MaxWindow, Ban: time.Second},
	} {
		if err := l.Validate(); err != nil {
			t.Fatal(err)
		}
		var s State
		var r Result
		if l.Ban != 0 {
			DecideBan(&l, &s, &r, now, MaxQuota, 0)
		} else {
			Decide(&l, &s, &r, now, MaxQuota)
		}
		if r.Allowed || r.RetryAfter <= 0 || r.RetryAfter > MaxRefill || s.Expires <= now || s.Expires > now+int64(MaxRefill/time.Microsecond) {
			t.Fatalf("%+v: %+v, state %+v", l, r, s)
		}
	}
}

// Every decision leaves the state's Weight as weight computes it from the
// state, whichever function weighed it (count, takeTAT, Decide's fixed
// window, weight).
func TestDecideWeighs(t *testing.T) {
	limits := map[string]*Limit{
		"fixed":    {Algorithm: FixedWindow, Quota: 300, Window: time.Minute},
		"calendar": {Algorithm: FixedWindow, Quota: 300, Calendar: &CalendarWindow{Period: Day}},
		"anchored": {Algorithm: AnchoredWindow, Quota: 300, Window: time.Minute},
		"sliding":  {Algorithm: SlidingWindow, Quota: 300, Window: time.Minute},
		"bucket":   {Algorithm: TokenBucket, Quota: 300, Rate: 5, Window: time.Second},
		"gcra":     {Algorithm: GCRA, Quota: 300, Rate: 5, Window: time.Second},
		"shaped":   {Algorithm: TokenBucket, Quota: 300, Rate: 5, Window: time.Second, Wait: time.Second},
	}
	for name, l := range limits {
		var s State
		now := base
		for i := 0; i < 400; i++ {
			var r Result
			cost := int64(1 + i%3)
			Decide(l, &s, &r, now, cost)
			if want := weight(l, &s, now); s.Weight != want {
				t.Fatalf("%s, decision %d (%+v): weight %d, want %d", name, i, s, s.Weight, want)
			}
			now += int64(i%7) * 40 * ms
		}
	}
}
