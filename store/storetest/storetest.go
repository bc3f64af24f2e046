// Package storetest is the conformance suite every store.Store passes: one
// table of algorithm cases, window edges, all-or-nothing decisions and
// concurrency, run against the memory store and against Redis alike.
//
// The stores under test must decide with the time passed to Take (a Redis
// store is opened with its server clock off for these cases).
package storetest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/edgelimit/caddy-edgelimit/internal/clock"
	"github.com/edgelimit/caddy-edgelimit/limiter"
	"github.com/edgelimit/caddy-edgelimit/store"
)

// Base is the time the cases start at: a Monday, midnight UTC, the first
// after clock.TestBase (so on no fixed date: tomorrow or later on the real
// calendar, or where EDGELIMIT_TEST_TIME moves the suite).
var Base = mondayAfter(clock.TestBase())

// AtBase is a clock that stays at Base: the sweeper of a memory store that
// is given times from Base on never drops what they count.
func AtBase() time.Time { return Base }

func mondayAfter(t time.Time) time.Time {
	y, m, d := t.UTC().Date()
	day := time.Date(y, m, d, 0, 0, 0, 0, time.UTC)
	if day.Before(t) {
		day = day.AddDate(0, 0, 1)
	}
	return day.AddDate(0, 0, (8-int(day.Weekday()))%7)
}

// Take is one limit of a request.
type Take struct {
	Limit  int // index into Case.Limits
	Key    string
	Cost   int64
	DryRun bool
	// Counter names the counter; by default each limit has its own.
	Counter string
	// Mode is the request's: take (default), check or charge.
	Mode store.Mode
}

func tk(limit int, key string, cost int64) Take { return Take{Limit: limit, Key: key, Cost: cost} }

func chk(limit int, key string, cost int64) Take {
	return Take{Limit: limit, Key: key, Cost: cost, Mode: store.ModeCheck}
}

func chg(limit int, key string, cost int64) Take {
	return Take{Limit: limit, Key: key, Cost: cost, Mode: store.ModeCharge}
}

// step is one request of takes at at, answered as want.
func step(at time.Duration, t Take, w Want) Step {
	return Step{At: at, Takes: []Take{t}, Want: []Want{w}}
}

func dry(limit int, key string, cost int64) Take {
	return Take{Limit: limit, Key: key, Cost: cost, DryRun: true}
}

// Want is what one Take must answer. RetryAfter and FirstDenial are checked
// on denials only.
type Want struct {
	Allowed     bool
	Remaining   int64
	RetryAfter  time.Duration
	FirstDenial bool
	// Banned is checked always: only a limit with a ban says so.
	Banned bool
}

// Step is one request at At after Base; with Refund, it gives back what
// its takes counted instead (and wants nothing).
type Step struct {
	At     time.Duration
	Takes  []Take
	Want   []Want
	Refund bool
}

// Case is a sequence of requests against some limits.
type Case struct {
	Name   string
	Limits []limiter.Limit
	Steps  []Step
}

func one(at time.Duration, key string, cost int64, w Want) Step {
	return Step{At: at, Takes: []Take{{Key: key, Cost: cost}}, Want: []Want{w}}
}

func ok(rem int64) Want { return Want{Allowed: true, Remaining: rem} }

func no(rem int64, retry time.Duration, first bool) Want {
	return Want{Remaining: rem, RetryAfter: retry, FirstDenial: first}
}

// banned is a denial by a ban that ends in retry.
func banned(retry time.Duration, first bool) Want {
	return Want{RetryAfter: retry, FirstDenial: first, Banned: true}
}

// Cases returns the conformance table.
func Cases() []Case {
	fixed := limiter.Limit{Algorithm: limiter.FixedWindow, Quota: 3, Window: time.Minute}
	return []Case{
		{
			Name:   "fixed window: exactly N, denied until the aligned boundary",
			Limits: []limiter.Limit{fixed},
			Steps: []Step{
				one(10*time.Second, "a", 1, ok(2)),
				one(20*time.Second, "a", 1, ok(1)),
				one(30*time.Second, "a", 1, ok(0)),
				one(30*time.Second, "a", 1, no(0, 30*time.Second, true)),
				one(59*time.Second, "a", 1, no(0, time.Second, false)),
				one(time.Minute, "a", 1, ok(2)),
				one(time.Minute, "a", 2, ok(0)),
				one(time.Minute+time.Second, "a", 1, no(0, 59*time.Second, true)),
			},
		},
		{
			Name:   "fixed window: cost, and a cost above the quota never passes",
			Limits: []limiter.Limit{{Algorithm: limiter.FixedWindow, Quota: 10, Window: time.Hour}},
			Steps: []Step{
				one(0, "a", 7, ok(3)),
				one(time.Second, "a", 4, no(3, time.Hour-time.Second, true)),
				one(time.Second, "a", 3, ok(0)),
				one(time.Hour, "a", 11, no(10, time.Hour, true)),
				one(time.Hour, "a", 10, ok(0)),
			},
		},
		{
			Name:   "keys and counters are isolated",
			Limits: []limiter.Limit{fixed, fixed},
			Steps: []Step{
				one(0, "a", 3, ok(0)),
				one(0, "b", 1, ok(2)),
				{At: 0, Takes: []Take{tk(1, "a", 1)}, Want: []Want{ok(2)}},
				one(0, "a", 1, no(0, time.Minute, true)),
			},
		},
		{
			Name:   "anchored window: starts at the first counted request",
			Limits: []limiter.Limit{{Algorithm: limiter.AnchoredWindow, Quota: 2, Window: time.Minute}},
			Steps: []Step{
				one(17*time.Second, "a", 3, no(2, time.Minute, true)), // too big: starts no timer
				one(25*time.Second, "a", 1, ok(1)),
				one(50*time.Second, "a", 1, ok(0)),
				one(70*time.Second, "a", 1, no(0, 15*time.Second, true)),
				one(85*time.Second-time.Microsecond, "a", 1, no(0, time.Microsecond, false)),
				one(100*time.Second, "a", 1, ok(1)),
				one(159*time.Second, "a", 1, ok(0)),
				one(160*time.Second-time.Microsecond, "a", 1, no(0, time.Microsecond, true)),
				one(160*time.Second, "a", 1, ok(1)),
			},
		},
		{
			Name:   "sliding window: the previous window weighs in",
			Limits: []limiter.Limit{{Algorithm: limiter.SlidingWindow, Quota: 10, Window: time.Minute}},
			Steps: []Step{
				one(59*time.Second, "a", 10, ok(0)),
				one(59*time.Second, "a", 1, no(0, 7*time.Second, true)),
				one(61*time.Second, "a", 1, no(0, 5*time.Second, false)),
				one(66*time.Second, "a", 1, ok(0)),
				one(66*time.Second, "a", 1, no(0, 6*time.Second, true)),
				one(3*time.Minute, "a", 10, ok(0)),
			},
		},
		{
			Name:   "token bucket: burst of capacity, fractional refill",
			Limits: []limiter.Limit{{Algorithm: limiter.TokenBucket, Quota: 3, Rate: 1, Window: time.Second}},
			Steps: []Step{
				one(0, "a", 1, ok(2)),
				one(0, "a", 2, ok(0)),
				one(0, "a", 1, no(0, time.Second, true)),
				one(500*time.Millisecond, "a", 1, no(0, 500*time.Millisecond, false)),
				one(time.Second, "a", 1, ok(0)),
				one(100*time.Second, "a", 3, ok(0)),
				one(100*time.Second, "a", 1, no(0, time.Second, true)),
			},
		},
		{
			Name:   "token bucket: 45 per second in 22222.2µs steps",
			Limits: []limiter.Limit{{Algorithm: limiter.TokenBucket, Quota: 45, Rate: 45, Window: time.Second}},
			Steps: []Step{
				one(0, "a", 45, ok(0)),
				one(time.Second-time.Microsecond, "a", 45, no(44, time.Microsecond, true)),
				one(time.Second, "a", 45, ok(0)),
			},
		},
		{
			Name:   "gcra: evenly spaced with a burst",
			Limits: []limiter.Limit{{Algorithm: limiter.GCRA, Quota: 2, Rate: 10, Window: time.Second}},
			Steps: []Step{
				one(0, "a", 1, ok(1)),
				one(0, "a", 1, ok(0)),
				one(0, "a", 1, no(0, 100*time.Millisecond, true)),
				one(99*time.Millisecond, "a", 1, no(0, time.Millisecond, false)),
				one(100*time.Millisecond, "a", 1, ok(0)),
			},
		},
		{
			Name: "calendar day: reset at midnight UTC",
			Limits: []limiter.Limit{{Algorithm: limiter.FixedWindow, Quota: 2,
				Calendar: limiter.CalendarWindow{Period: limiter.Day}.Cached()}},
			Steps: []Step{
				one(23*time.Hour+59*time.Minute+59*time.Second, "a", 2, ok(0)),
				one(24*time.Hour-time.Millisecond, "a", 1, no(0, time.Millisecond, true)),
				one(24*time.Hour, "a", 1, ok(1)),
			},
		},
		{
			Name:   "limits change (tiers): the count carries over",
			Limits: []limiter.Limit{fixed, {Algorithm: limiter.FixedWindow, Quota: 5, Window: time.Minute}},
			Steps: []Step{
				{At: 0, Takes: []Take{{Limit: 0, Key: "a", Cost: 3, Counter: "tiered"}}, Want: []Want{ok(0)}},
				{At: 0, Takes: []Take{{Limit: 0, Key: "a", Cost: 1, Counter: "tiered"}}, Want: []Want{no(0, time.Minute, true)}},
				{At: 0, Takes: []Take{{Limit: 1, Key: "a", Cost: 2, Counter: "tiered"}}, Want: []Want{ok(0)}},
			},
		},
		{
			Name: "all or nothing: a denial consumes nothing from the other limits",
			Limits: []limiter.Limit{
				{Algorithm: limiter.FixedWindow, Quota: 5, Window: time.Minute},
				{Algorithm: limiter.TokenBucket, Quota: 2, Rate: 1, Window: time.Hour},
				{Algorithm: limiter.AnchoredWindow, Quota: 4, Window: time.Minute},
			},
			Steps: []Step{
				{At: 0, Takes: []Take{tk(0, "a", 1), tk(1, "a", 1), tk(2, "a", 1)}, Want: []Want{ok(4), ok(1), ok(3)}},
				{At: 0, Takes: []Take{tk(0, "a", 1), tk(1, "a", 1), tk(2, "a", 1)}, Want: []Want{ok(3), ok(0), ok(2)}},
				// The bucket denies: the window and the anchored window keep
				// their counts, and report what was left before.
				{At: 0, Takes: []Take{tk(0, "a", 1), tk(1, "a", 1), tk(2, "a", 1)}, Want: []Want{ok(3), no(0, time.Hour, true), ok(2)}},
				{At: 0, Takes: []Take{tk(0, "a", 3)}, Want: []Want{ok(0)}},
				{At: 0, Takes: []Take{tk(2, "a", 2)}, Want: []Want{ok(0)}},
			},
		},
		{
			Name: "dry run: counted and reported, never denies the whole",
			Limits: []limiter.Limit{
				{Algorithm: limiter.FixedWindow, Quota: 1, Window: time.Minute},
				{Algorithm: limiter.FixedWindow, Quota: 3, Window: time.Minute},
			},
			Steps: []Step{
				{At: 0, Takes: []Take{dry(0, "a", 1), tk(1, "a", 1)}, Want: []Want{ok(0), ok(2)}},
				{At: 0, Takes: []Take{dry(0, "a", 1), tk(1, "a", 1)}, Want: []Want{no(0, time.Minute, true), ok(1)}},
				{At: 0, Takes: []Take{dry(0, "a", 1), tk(1, "a", 1)}, Want: []Want{no(0, time.Minute, false), ok(0)}},
				{At: 0, Takes: []Take{dry(0, "a", 1), tk(1, "a", 1)}, Want: []Want{no(0, time.Minute, false), no(0, time.Minute, true)}},
			},
		},
		{
			Name: "refund: a request denied later gives back what it took",
			Limits: []limiter.Limit{
				fixed,
				{Algorithm: limiter.TokenBucket, Quota: 2, Rate: 1, Window: time.Hour},
				{Algorithm: limiter.AnchoredWindow, Quota: 2, Window: time.Minute},
				{Algorithm: limiter.SlidingWindow, Quota: 3, Window: time.Minute},
			},
			Steps: []Step{
				{At: 0, Takes: []Take{tk(0, "a", 1), tk(1, "a", 1), tk(2, "a", 1), tk(3, "a", 1)}, Want: []Want{ok(2), ok(1), ok(1), ok(2)}},
				{At: time.Second, Refund: true, Takes: []Take{tk(0, "a", 1), tk(1, "a", 1), tk(2, "a", 1), tk(3, "a", 1)}},
				{At: time.Second, Takes: []Take{tk(0, "a", 1), tk(1, "a", 1), tk(2, "a", 1), tk(3, "a", 1)}, Want: []Want{ok(2), ok(1), ok(1), ok(2)}},
				// A refund for a window that is over changes nothing.
				{At: 2 * time.Minute, Refund: true, Takes: []Take{tk(0, "a", 3)}},
				{At: 2 * time.Minute, Takes: []Take{tk(0, "a", 3)}, Want: []Want{ok(0)}},
				{At: 2 * time.Minute, Takes: []Take{tk(0, "a", 1)}, Want: []Want{no(0, time.Minute, true)}},
				// A refund of a key never seen creates nothing.
				{At: 2 * time.Minute, Refund: true, Takes: []Take{tk(0, "nobody", 1)}},
				{At: 2 * time.Minute, Takes: []Take{tk(0, "nobody", 3)}, Want: []Want{ok(0)}},
			},
		},
		{
			Name:   "check and charge: a fixed window counts what responses cost, overdrawn until it ends",
			Limits: []limiter.Limit{{Algorithm: limiter.FixedWindow, Quota: 5, Window: time.Minute}},
			Steps: []Step{
				step(10*time.Second, chk(0, "a", 1), ok(5)),
				step(10*time.Second, chk(0, "a", 1), ok(5)),
				step(11*time.Second, chg(0, "a", 2), ok(3)),
				step(12*time.Second, chk(0, "a", 3), ok(3)),
				step(12*time.Second, chk(0, "a", 4), no(3, 48*time.Second, true)),
				step(13*time.Second, chk(0, "a", 1), ok(3)),
				step(14*time.Second, chg(0, "a", 9), ok(0)),
				step(15*time.Second, chk(0, "a", 1), no(0, 45*time.Second, true)),
				step(16*time.Second, chk(0, "a", 1), no(0, 44*time.Second, false)),
				// A charge that lands while the client is denied keeps the run
				// of denials one.
				step(17*time.Second, chg(0, "a", 1), ok(0)),
				step(18*time.Second, chk(0, "a", 1), no(0, 42*time.Second, false)),
				step(time.Minute, chk(0, "a", 1), ok(5)),
			},
		},
		{
			Name: "check and charge: buckets and windows overdrawn until enough is back",
			Limits: []limiter.Limit{
				{Algorithm: limiter.TokenBucket, Quota: 5, Rate: 5, Window: time.Minute},
				{Algorithm: limiter.AnchoredWindow, Quota: 5, Window: time.Minute},
				{Algorithm: limiter.SlidingWindow, Quota: 5, Window: time.Minute},
				{Algorithm: limiter.GCRA, Quota: 2, Rate: 1, Window: time.Second},
			},
			Steps: []Step{
				// 8 units of 12s: a backlog of 96s where the bucket holds 60.
				step(0, chg(0, "a", 8), ok(0)),
				step(0, chk(0, "a", 1), no(0, 48*time.Second, true)),
				step(47*time.Second, chk(0, "a", 1), no(0, time.Second, false)),
				step(48*time.Second, chk(0, "a", 1), ok(1)),
				step(48*time.Second, chg(0, "a", 1), ok(0)),
				step(48*time.Second, chk(0, "a", 1), no(0, 12*time.Second, true)),
				// The anchored window starts at the first charge.
				step(10*time.Second, chk(1, "a", 1), ok(5)),
				step(20*time.Second, chg(1, "a", 7), ok(0)),
				step(79*time.Second, chk(1, "a", 1), no(0, time.Second, true)),
				step(80*time.Second, chk(1, "a", 1), ok(5)),
				// 12 in the window that ends at 60s weigh on the next: 12*(60-e)/60
				// + 1 <= 5 from e = 40s.
				step(30*time.Second, chg(2, "a", 12), ok(0)),
				step(99*time.Second, chk(2, "a", 1), no(0, time.Second, true)),
				step(100*time.Second, chk(2, "a", 1), ok(1)),
				// GCRA: a charge past the burst.
				step(0, chg(3, "b", 5), ok(0)),
				step(0, chk(3, "b", 1), no(0, 4*time.Second, true)),
				step(4*time.Second, chk(3, "b", 1), ok(1)),
			},
		},
		{
			Name: "check and charge: all or nothing with takes",
			Limits: []limiter.Limit{
				{Algorithm: limiter.FixedWindow, Quota: 2, Window: time.Minute},
				{Algorithm: limiter.FixedWindow, Quota: 3, Window: time.Minute},
			},
			Steps: []Step{
				{At: 0, Takes: []Take{chk(0, "a", 1), tk(1, "a", 1)}, Want: []Want{ok(2), ok(2)}},
				step(0, chg(0, "a", 2), ok(0)),
				// The check denies: the take counts nothing.
				{At: 0, Takes: []Take{chk(0, "a", 1), tk(1, "a", 1)}, Want: []Want{no(0, time.Minute, true), ok(2)}},
				step(0, tk(1, "a", 2), ok(0)),
				// The take denies: the check said what remained, once.
				{At: 0, Takes: []Take{chk(0, "b", 1), tk(1, "a", 1)}, Want: []Want{ok(2), no(0, time.Minute, true)}},
			},
		},
		{
			Name: "ban: a denial bans the key, longer than the window; checks, charges, all or nothing",
			Limits: []limiter.Limit{
				{Algorithm: limiter.FixedWindow, Quota: 3, Window: time.Minute, Ban: 10 * time.Minute},
				{Algorithm: limiter.FixedWindow, Quota: 1, Window: time.Minute},
				{Algorithm: limiter.TokenBucket, Quota: 2, Rate: 1, Window: 10 * time.Second, Ban: time.Second},
				{Algorithm: limiter.SlidingWindow, Quota: 2, Window: time.Minute, Ban: 5 * time.Second},
			},
			Steps: []Step{
				step(0, tk(0, "a", 3), ok(0)),
				step(10*time.Second, tk(0, "a", 1), banned(10*time.Minute, true)),
				// The next window would have room: the ban holds.
				step(5*time.Minute, tk(0, "a", 1), banned(5*time.Minute+10*time.Second, false)),
				step(5*time.Minute, chk(0, "a", 1), banned(5*time.Minute+10*time.Second, false)),
				// A charge counts nothing during a ban, and passes.
				step(5*time.Minute, chg(0, "a", 5), Want{Allowed: true, Banned: true}),
				step(10*time.Minute+9*time.Second, tk(0, "a", 1), banned(time.Second, false)),
				// Over: the key starts afresh.
				step(10*time.Minute+10*time.Second, tk(0, "a", 1), ok(2)),
				step(10*time.Second, tk(0, "b", 1), ok(2)),
				// Another limit denies: the ban's limit counts nothing and
				// bans nobody.
				{At: 11 * time.Minute, Takes: []Take{tk(0, "c", 1), tk(1, "c", 1)}, Want: []Want{ok(2), ok(0)}},
				{At: 11 * time.Minute, Takes: []Take{tk(0, "c", 1), tk(1, "c", 1)}, Want: []Want{ok(2), no(0, time.Minute, true)}},
				// The ban's limit denies: the other counts nothing.
				step(11*time.Minute, tk(0, "c", 2), ok(0)),
				{At: 11 * time.Minute, Takes: []Take{tk(0, "c", 1), tk(1, "d", 1)}, Want: []Want{banned(10*time.Minute, true), ok(1)}},
				// A check that denies bans as a take does.
				step(0, chg(0, "e", 4), ok(0)),
				step(0, chk(0, "e", 1), banned(10*time.Minute, true)),
				// A ban shorter than the bucket's refill lasts until it is
				// full: a ban never forgives.
				step(0, tk(2, "a", 2), ok(0)),
				step(0, tk(2, "a", 1), banned(20*time.Second, true)),
				step(19*time.Second, tk(2, "a", 1), banned(time.Second, false)),
				step(20*time.Second, tk(2, "a", 1), ok(1)),
				// Sliding: the estimate falls to zero two windows on.
				step(0, tk(3, "a", 2), ok(0)),
				step(30*time.Second, tk(3, "a", 1), banned(90*time.Second, true)),
				step(2*time.Minute, tk(3, "a", 1), ok(1)),
			},
		},
		{
			Name: "wait: a bucket admits what would pass within the wait, each held until its turn",
			Limits: []limiter.Limit{
				{Algorithm: limiter.GCRA, Quota: 2, Rate: 10, Window: time.Second, Wait: 250 * time.Millisecond},
				{Algorithm: limiter.TokenBucket, Quota: 1, Rate: 1, Window: time.Second, Wait: 2 * time.Second, Ban: time.Minute},
			},
			Steps: []Step{
				step(0, tk(0, "a", 1), ok(1)),
				step(0, tk(0, "a", 1), ok(0)),
				// 100ms apart: a queue, never woken at once.
				step(0, tk(0, "a", 1), Want{Allowed: true, RetryAfter: 100 * time.Millisecond}),
				step(0, tk(0, "a", 1), Want{Allowed: true, RetryAfter: 200 * time.Millisecond}),
				// Past the wait: denied, until it would pass waiting 250ms.
				step(0, tk(0, "a", 1), no(0, 50*time.Millisecond, true)),
				step(50*time.Millisecond, tk(0, "a", 1), Want{Allowed: true, RetryAfter: 250 * time.Millisecond}),
				// A refund (the client hung up while held) gives its place back.
				{At: 50 * time.Millisecond, Takes: []Take{tk(0, "a", 1)}, Refund: true},
				step(50*time.Millisecond, tk(0, "a", 1), Want{Allowed: true, RetryAfter: 250 * time.Millisecond}),
				step(time.Second, tk(0, "a", 1), ok(1)),
				// A wait and a ban: past the wait, the ban.
				step(0, tk(1, "a", 1), ok(0)),
				step(0, tk(1, "a", 1), Want{Allowed: true, RetryAfter: time.Second}),
				step(0, tk(1, "a", 1), Want{Allowed: true, RetryAfter: 2 * time.Second}),
				step(0, tk(1, "a", 1), banned(time.Minute, true)),
			},
		},
		{
			Name:   "hostile keys: a megabyte of key, binary bytes",
			Limits: []limiter.Limit{fixed},
			Steps: []Step{
				one(0, strings.Repeat("k", 1<<20), 3, ok(0)),
				one(0, strings.Repeat("k", 1<<20), 1, no(0, time.Minute, true)),
				one(0, strings.Repeat("k", 1<<20-1)+"j", 1, ok(2)),
				one(0, "\x00{}\r\n:*", 1, ok(2)),
			},
		},
	}
}

// Prefix returns a counter prefix unique to this run, so cases never see
// each other's state in a shared store.
func Prefix(t testing.TB) string {
	var b [6]byte
	if _, err := rand.Read(b[:]); err != nil {
		t.Fatal(err)
	}
	return "storetest:" + hex.EncodeToString(b[:]) + ":"
}

// Run runs every case against a store from open. now is the clock of the
// case (each step's time), for a store that reads a clock of its own: a
// memory store's sweeper.
func Run(t *testing.T, open func(t *testing.T, now func() time.Time) store.Store) {
	for i, c := range Cases() {
		t.Run(c.Name, func(t *testing.T) {
			clk := clock.NewFake(Base)
			s := open(t, clk.Now)
			prefix := fmt.Sprintf("%scase%d:", Prefix(t), i)
			for n, step := range c.Steps {
				reqs := make([]store.Request, len(step.Takes))
				for j, tk := range step.Takes {
					counter := tk.Counter
					if counter == "" {
						counter = fmt.Sprintf("limit%d", tk.Limit)
					}
					reqs[j] = store.Request{
						Counter: prefix + counter,
						Key:     tk.Key,
						Limit:   c.Limits[tk.Limit],
						Cost:    tk.Cost,
						DryRun:  tk.DryRun,
						Mode:    tk.Mode,
					}
				}
				clk.Set(Base.Add(step.At))
				if step.Refund {
					if err := s.Refund(context.Background(), Base.Add(step.At), reqs); err != nil {
						t.Fatalf("step %d: refund: %v", n, err)
					}
					continue
				}
				res := make([]limiter.Result, len(reqs))
				if err := s.Take(context.Background(), Base.Add(step.At), reqs, res); err != nil {
					t.Fatalf("step %d: %v", n, err)
				}
				for j, w := range step.Want {
					check(t, n, j, res[j], w)
					// The reset is a time on the deciding clock, not a
					// duration to add to another reading of it.
					if at := Base.Add(step.At).UnixMicro(); res[j].ResetAt != at+res[j].Reset.Microseconds() {
						t.Errorf("step %d take %d: ResetAt %d, want the decision's time %d plus Reset %s",
							n, j, res[j].ResetAt, at, res[j].Reset)
					}
				}
			}
		})
	}
}

func check(t *testing.T, step, j int, got limiter.Result, w Want) {
	t.Helper()
	bad := got.Allowed != w.Allowed || got.Remaining != w.Remaining || got.Banned != w.Banned
	if w.Allowed && got.RetryAfter != w.RetryAfter {
		// An allowed request's wait (limiter.Limit.Wait).
		bad = true
	}
	if !w.Allowed && (got.RetryAfter != w.RetryAfter || got.FirstDenial != w.FirstDenial) {
		bad = true
	}
	if bad {
		t.Errorf("step %d take %d: got allowed=%v remaining=%d retry=%s first=%v banned=%v, want allowed=%v remaining=%d retry=%s first=%v banned=%v",
			step, j, got.Allowed, got.Remaining, got.RetryAfter, got.FirstDenial, got.Banned,
			w.Allowed, w.Remaining, w.RetryAfter, w.FirstDenial, w.Banned)
	}
}
