package policy

import (
	"strings"
	"testing"
	"time"

	"github.com/edgelimit/caddy-edgelimit/limiter"
)

// A limit's wait is cut to what max requests fill, in every tier; a limit
// holds at most MaxWaiting requests at once (a flood of clients cannot
// hold more goroutines), and gives back every place it took.
func TestWaitBounds(t *testing.T) {
	gcra := Numbers{Algorithm: "gcra", Limit: 5, Refill: 10, Window: time.Second}
	l, err := Compile(&Spec{Name: "hooks", Numbers: gcra, Wait: time.Second, WaitMax: 2,
		Tiered: true, Tiers: map[string]*Numbers{"slow": {Algorithm: "gcra", Limit: 5, Refill: 1, Window: time.Second}}}, "g")
	if err != nil {
		t.Fatal(err)
	}
	if l.Base.Wait != 200*time.Millisecond || l.Tiers["slow"].Limit.Wait != time.Second {
		t.Fatalf("waits %s %s, want 200ms (2 x 100ms) and 1s", l.Base.Wait, l.Tiers["slow"].Limit.Wait)
	}
	for _, s := range []*Spec{
		{Name: "a", Numbers: Numbers{Limit: 5, Window: time.Second}, Wait: time.Second},
		{Name: "a", Numbers: gcra, Wait: 10 * time.Second},
		{Name: "a", Numbers: gcra, WaitMax: 3},
		{Name: "a", Numbers: gcra, Wait: time.Second, Charged: true},
		{Name: "a", Numbers: gcra, Wait: time.Second, WaitMax: MaxWaiting + 1},
	} {
		if _, err := Compile(s, "g"); err == nil {
			t.Errorf("%+v compiles", s)
		}
	}
	p, err := New([]*Limit{l}, &Responses{})
	if err != nil || !p.Waits {
		t.Fatalf("%v %v", p, err)
	}
	decide := func(key string, allowed bool, wait time.Duration) *Decision {
		d := NewDecision(p)
		d.Keys[0], d.Parts[0] = key, 0
		Plan(p, d, nil)
		HoldWaits(d)
		d.Res[0] = limiter.Result{Allowed: allowed, Limit: 5, RetryAfter: wait}
		return d
	}
	var held []*Decision
	for i := 0; i < MaxWaiting; i++ {
		d := decide("k", true, 100*time.Millisecond)
		denied, _ := Judge(d)
		if WaitFor(d, denied) != 100*time.Millisecond {
			t.Fatalf("request %d not held", i)
		}
		held = append(held, d)
	}
	// The limit holds MaxWaiting: the next is decided without a wait.
	d := decide("k", true, 0)
	if d.Reqs[0].Limit.Wait != 0 || Waiting(l) != MaxWaiting {
		t.Fatalf("request past the bound: wait %s, %d held", d.Reqs[0].Limit.Wait, Waiting(l))
	}
	for _, d := range held {
		ReleaseWaits(d)
	}
	// A denial and a pass without a wait give their places back at once.
	for _, allowed := range []bool{false, true} {
		d := decide("k", allowed, 0)
		denied, _ := Judge(d)
		if w := WaitFor(d, denied); w != 0 || Waiting(l) != 0 {
			t.Fatalf("allowed=%v: wait %s, %d held", allowed, w, Waiting(l))
		}
	}
}

// TestCheckBanAndWait: the checks both edges make of a ban and a wait they
// were given, 0 included (written by mistake: no ban is no ban at all).
func TestCheckBanAndWait(t *testing.T) {
	for _, c := range []struct {
		err  error
		want string
	}{
		{CheckBan(0), "ban must be more than 0, got 0s"},
		{CheckBan(-time.Minute), "ban must be more than 0"},
		{CheckBan(1500 * time.Millisecond), "ban must be whole seconds"},
		{CheckWait(0), "wait must be more than 0, got 0s"},
		{CheckWait(1500 * time.Microsecond), "wait must be whole milliseconds from 1ms to 8s"},
		{CheckWait(9 * time.Second), "wait must be whole milliseconds"},
		{CheckWaitMax(0), "wait max must be from 1 to 1024, got 0"},
		{CheckWaitMax(MaxWaiting + 1), "wait max must be from 1 to 1024"},
	} {
		if c.err == nil || !strings.Contains(c.err.Error(), c.want) {
			t.Errorf("error %v, want one that says %q", c.err, c.want)
		}
	}
	if CheckBan(10*time.Minute) != nil || CheckWait(time.Second) != nil || CheckWaitMax(MaxWaiting) != nil {
		t.Error("a good ban or wait is refused")
	}
}
