package policy

import (
	"context"
	"errors"
	"net/http"
	"testing"
	"time"

	"github.com/edgelimit/caddy-edgelimit/limiter"
	"github.com/edgelimit/caddy-edgelimit/store"
)

// flowPolicy is a policy of the limits of specs, in zone z.
func flowPolicy(t *testing.T, specs ...*Spec) *Policy {
	t.Helper()
	var limits []*Limit
	for _, s := range specs {
		l, err := Compile(s, "z")
		if err != nil {
			t.Fatal(err)
		}
		limits = append(limits, l)
	}
	p, err := New(limits, &Responses{})
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// flowClock is a held request's clock: Sleep notes the wait and returns
// err (a client that left).
type flowClock struct {
	now   time.Time
	slept time.Duration
	err   error
}

func (c *flowClock) Now() time.Time { return c.now }

func (c *flowClock) Sleep(_ context.Context, d time.Duration) error {
	c.slept += d
	return c.err
}

// failingStore fails every Take with err.
type failingStore struct{ err error }

func (s failingStore) Take(context.Context, time.Time, []store.Request, []limiter.Result) error {
	return s.err
}
func (failingStore) Refund(context.Context, time.Time, []store.Request) error { return nil }
func (failingStore) Close() error                                             { return nil }

// flowRun runs a request with key through p as an edge does (Decide, then
// Settle when decided), after the handlers whose ledger is earlier.
func flowRun(p *Policy, s store.Store, now time.Time, key string, f *Flow) (Outcome, http.Header) {
	d := NewDecision(p)
	for i := range p.Limits {
		d.Keys[i], d.Parts[i] = key, 0
	}
	hdr := http.Header{}
	o := Decide(p, s, context.Background(), now, d, f)
	if o == Decided {
		o = Settle(p, s, context.Background(), now, hdr, d, f)
	}
	return o, hdr
}

// The flow of a request through two handlers, as both edges run it: the
// first passes and starts the ledger, the second records in it, and a
// denial by the second gives back what the first counted (all or
// nothing across handlers); the headers report the tighter result.
func TestFlowLedgerAcrossHandlers(t *testing.T) {
	outer := flowPolicy(t, &Spec{Name: "outer", Numbers: Numbers{Limit: 3, Window: time.Minute}})
	inner := flowPolicy(t, &Spec{Name: "inner", Numbers: Numbers{Limit: 1, Window: time.Minute}})
	s := store.NewMemory(store.MemoryOptions{})
	now := time.Unix(1_700_000_000, 0)
	run := func(key string) (Outcome, Outcome, http.Header) {
		var l Ledger
		o1, h1 := flowRun(outer, s, now, key, &Flow{Ledger: &l})
		if o1 != Pass {
			return o1, Skip, h1
		}
		f := &Flow{Earlier: &l, Ledger: &l}
		o2, h2 := flowRun(inner, s, now, key, f)
		if o2 == Deny && (f.Denied != 0 || l.Denied != true || len(l.Entries) != 0) {
			t.Fatalf("denial: denied %d, ledger %+v", f.Denied, l)
		}
		if o2 == Pass && len(l.Entries) != 2 {
			t.Fatalf("passed: ledger %+v, want two entries", l)
		}
		return o1, o2, h2
	}
	o1, o2, h := run("a")
	if o1 != Pass || o2 != Pass || h.Get("X-Ratelimit-Remaining") != "0" {
		t.Fatalf("first: %v %v %v", o1, o2, h)
	}
	for i := 0; i < 3; i++ {
		if o1, o2, _ = run("a"); o1 != Pass || o2 != Deny {
			t.Fatalf("denied by the second handler, %d: %v %v", i, o1, o2)
		}
	}
	// The first handler counted one request of "a": its denials by the
	// second were given back.
	if o, h := flowRun(outer, s, now, "a", &Flow{}); o != Pass || h.Get("X-Ratelimit-Remaining") != "1" {
		t.Fatalf("outer after the denials: %v %v, want 1 remaining", o, h)
	}
}

// Exemptions granted by a handler's limits reach the handlers after it:
// a limit that exempts others plans without them, and a handler whose
// only limit is exempt skips the request.
func TestFlowExemptions(t *testing.T) {
	p := flowPolicy(t,
		&Spec{Name: "plugin", Numbers: Numbers{Limit: 5, Window: time.Minute}, Exempt: []string{"route"}},
		&Spec{Name: "route", Numbers: Numbers{Limit: 1, Window: time.Minute}})
	route := flowPolicy(t, &Spec{Name: "route", Numbers: Numbers{Limit: 1, Window: time.Minute}})
	s := store.NewMemory(store.MemoryOptions{})
	now := time.Unix(1_700_000_000, 0)
	for i := 0; i < 3; i++ {
		f := &Flow{}
		if o, _ := flowRun(p, s, now, "k", f); o != Pass || !f.Added || len(f.Exempt) != 1 || f.Exempt[0] != "route" {
			t.Fatalf("request %d: %v, exempt %v (added %v)", i, o, f.Exempt, f.Added)
		}
		g := &Flow{Exempt: f.Exempt}
		if o, _ := flowRun(route, s, now, "k", g); o != Skip || g.Added {
			t.Fatalf("request %d at the exempt handler: %v", i, o)
		}
	}
}

// A store that fails lets the request through (Failed) or, when its
// policy denies (store.ErrUnavailable), gives back what the handlers
// before counted (Unavailable).
func TestFlowStorageFails(t *testing.T) {
	p := flowPolicy(t, &Spec{Name: "a", Numbers: Numbers{Limit: 2, Window: time.Minute}})
	mem := store.NewMemory(store.MemoryOptions{})
	now := time.Unix(1_700_000_000, 0)
	for _, c := range []struct {
		err      error
		want     Outcome
		refunded bool
	}{
		{errors.New("timeout"), Failed, false},
		{store.ErrUnavailable, Unavailable, true},
	} {
		var l Ledger
		if o, _ := flowRun(p, mem, now, "k", &Flow{Ledger: &l}); o != Pass {
			t.Fatalf("first handler: %v", o)
		}
		f := &Flow{Earlier: &l, Ledger: &l}
		o, hdr := flowRun(p, failingStore{c.err}, now, "k", f)
		if o != c.want || f.Err != c.err || len(hdr) != 0 || (len(l.Entries) == 0) != c.refunded {
			t.Fatalf("%v: %v (%v), headers %v, ledger %+v", c.err, o, f.Err, hdr, l)
		}
		if c.refunded {
			if o, hdr := flowRun(p, mem, now, "k", &Flow{}); o != Pass || hdr.Get("X-Ratelimit-Remaining") != "0" {
				t.Fatalf("after the 503: %v %v, want the first count given back", o, hdr)
			}
		}
	}
}

// A request that a limit with a wait admits for later is held on the
// flow's clock, then passes; one whose client leaves meanwhile gets back
// what it counted here and before (Left), nothing written, and the
// limit's places for held requests are all given back.
func TestFlowHolds(t *testing.T) {
	p := flowPolicy(t, &Spec{Name: "hooks", Numbers: Numbers{Algorithm: "gcra", Limit: 1, Refill: 10, Window: time.Second}, Wait: 300 * time.Millisecond})
	outer := flowPolicy(t, &Spec{Name: "outer", Numbers: Numbers{Limit: 10, Window: time.Minute}})
	s := store.NewMemory(store.MemoryOptions{})
	clk := &flowClock{now: time.Unix(1_700_000_000, 0)}
	var hdr http.Header
	run := func() (Outcome, *Flow, *Ledger) {
		l := new(Ledger)
		if o, _ := flowRun(outer, s, clk.now, "k", &Flow{Ledger: l}); o != Pass {
			t.Fatalf("outer: %v", o)
		}
		f := &Flow{Earlier: l, Ledger: l, Clock: clk}
		var o Outcome
		o, hdr = flowRun(p, s, clk.now, "k", f)
		return o, f, l
	}
	if o, f, _ := run(); o != Pass || f.Wait != 0 || clk.slept != 0 {
		t.Fatalf("first: %v, waited %s", o, f.Wait)
	}
	if o, f, l := run(); o != Pass || f.Wait != 100*time.Millisecond || clk.slept != f.Wait || len(l.Entries) != 2 {
		t.Fatalf("second: %v, waited %s (slept %s), ledger %+v", o, f.Wait, clk.slept, l)
	}
	clk.err = context.Canceled
	o, f, l := run()
	if o != Left || f.Err != context.Canceled || f.Wait != 200*time.Millisecond || len(l.Entries) != 0 || !l.Denied || len(hdr) != 0 {
		t.Fatalf("left: %v (%v), waited %s, ledger %+v, headers %v", o, f.Err, f.Wait, l, hdr)
	}
	if n := Waiting(p.Limits[0]); n != 0 {
		t.Fatalf("%d places still held", n)
	}
	// What the request that left counted was given back: outer counted
	// the first two, and hooks holds the next for 200ms again.
	clk.err = nil
	if o, h := flowRun(outer, s, clk.now, "k", &Flow{}); o != Pass || h.Get("X-Ratelimit-Remaining") != "7" {
		t.Fatalf("outer after: %v %v, want 7 remaining", o, h)
	}
	if o, f := flowRunHeld(p, s, clk); o != Pass || f.Wait != 200*time.Millisecond {
		t.Fatalf("hooks after: %v, waited %s, want 200ms", o, f.Wait)
	}
}

func flowRunHeld(p *Policy, s store.Store, clk *flowClock) (Outcome, *Flow) {
	f := &Flow{Clock: clk}
	o, _ := flowRun(p, s, clk.now, "k", f)
	return o, f
}

// A store that fails with a policy that lets requests through (Failed)
// decided nothing: the decision checked no limit that counts responses,
// so that the edge charges the response nothing (the plugin charged it,
// and crashed on the request state it had not made).
func TestFlowFailedChecksNothing(t *testing.T) {
	p := flowPolicy(t, &Spec{Name: "tokens", Numbers: Numbers{Limit: 100, Window: time.Minute}, CostHeader: "X-Cost"})
	f := &Flow{}
	d := NewDecision(p)
	d.Keys[0], d.Parts[0] = "k", 0
	if o := Decide(p, failingStore{errors.New("timeout")}, context.Background(), time.Unix(1_700_000_000, 0), d, f); o != Failed {
		t.Fatalf("%v", o)
	}
	if Checked(d) || len(d.Reqs) != 0 || len(d.Res) != 0 {
		t.Fatalf("a failed decision checked %d requests (results %d)", len(d.Reqs), len(d.Res))
	}
}
