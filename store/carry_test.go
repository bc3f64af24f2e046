package store

import (
	"strconv"
	"testing"
	"time"

	"github.com/edgelimit/caddy-edgelimit/internal/clock"
	"github.com/edgelimit/caddy-edgelimit/limiter"
)

// What is carried is what the local takes still weigh at the latest one:
// a window's count while it is current, a bucket's backlog not drained; a
// refund here takes its units out; a denied dry run and a check add
// nothing.
func TestCarryUnits(t *testing.T) {
	base := clock.TestBase()
	fixed := limiter.Limit{Algorithm: limiter.FixedWindow, Quota: 5, Window: time.Minute}
	anchored := limiter.Limit{Algorithm: limiter.AnchoredWindow, Quota: 5, Window: time.Minute}
	bucket := limiter.Limit{Algorithm: limiter.TokenBucket, Quota: 10, Rate: 1, Window: time.Second}
	c := NewCarry()
	req := func(counter string, l limiter.Limit, cost int64) []Request {
		return []Request{{Counter: counter, Key: "k", Limit: l, Cost: cost}}
	}
	for i := range 3 {
		c.Add(base.Add(time.Duration(i)*time.Second), req("fixed", fixed, 2), nil)
		c.Add(base.Add(time.Duration(i)*time.Second), req("anchored", anchored, 1), nil)
	}
	c.Add(base, req("old", fixed, 4), nil)
	c.Add(base, req("bucket", bucket, 8), nil)
	c.Add(base, []Request{{Counter: "check", Key: "k", Limit: fixed, Cost: 1, Mode: ModeCheck}}, nil)
	c.Add(base, req("dry", fixed, 1), []limiter.Result{{Allowed: false}})
	c.Remove(base.Add(2*time.Second), req("fixed", fixed, 1))
	// A minute on, "old"'s window is over; "fixed" moved to a new one.
	c.Add(base.Add(time.Minute+3*time.Second), req("late", fixed, 1), nil)
	reqs, at := c.take()
	if !at.Equal(base.Add(time.Minute + 3*time.Second)) {
		t.Fatalf("charged at %s", at)
	}
	got := map[string]int64{}
	for _, r := range reqs {
		if r.Mode != ModeCharge || r.Key != "k" {
			t.Fatalf("%+v", r)
		}
		got[r.Counter] = r.Cost
	}
	// fixed: 6 - 1 in the window of base, over at base+1m. anchored: 3 in
	// [base, base+1m), over. bucket: 8 s of backlog, drained in 63 s.
	want := map[string]int64{"late": 1}
	if len(got) != len(want) || got["late"] != 1 {
		t.Fatalf("carried %v, want %v", got, want)
	}
	if c.Len() != 0 {
		t.Fatal("not emptied")
	}
	// Within the window and the backlog.
	c.Add(base, req("fixed", fixed, 6), nil)
	c.Remove(base, req("fixed", fixed, 1))
	c.Add(base, req("anchored", anchored, 3), nil)
	c.Add(base, req("bucket", bucket, 8), nil)
	c.Add(base.Add(3*time.Second), req("other", fixed, 1), nil)
	reqs, _ = c.take()
	got = map[string]int64{}
	for _, r := range reqs {
		got[r.Counter] = r.Cost
	}
	if got["fixed"] != 5 || got["anchored"] != 3 || got["bucket"] != 5 || got["other"] != 1 || len(got) != 4 {
		t.Fatalf("carried %v", got)
	}
}

// A Carry holds at most MaxCarry entries: a flood of made-up keys, one
// take each, does not push out a client that used its limit.
func TestCarryBounded(t *testing.T) {
	base := clock.TestBase()
	l := limiter.Limit{Algorithm: limiter.FixedWindow, Quota: 100, Window: time.Hour}
	c := NewCarry()
	c.Add(base, []Request{{Counter: "c", Key: "hard", Limit: l, Cost: 100}}, nil)
	for i := range MaxCarry + 1000 {
		c.Add(base, []Request{{Counter: "c", Key: "made-up-" + strconv.Itoa(i), Limit: l, Cost: 1}}, nil)
	}
	if c.Len() != MaxCarry || c.Dropped() != 1001 {
		t.Fatalf("%d entries, %d dropped", c.Len(), c.Dropped())
	}
	reqs, _ := c.take()
	for _, r := range reqs {
		if r.Key == "hard" && r.Cost == 100 {
			return
		}
	}
	t.Fatal("the client that used its limit was dropped")
}
