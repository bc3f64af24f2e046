// Package limiter holds the rate-limit algorithms as pure functions: a
// decision reads one key's State and the current time, and returns the next
// State and a Result. Where that State lives (memory, Redis) is the storage
// package's business; the Redis Lua script mirrors the arithmetic here, line
// for line, so both stores decide alike.
//
// Time is counted in whole microseconds since the Unix epoch: fine enough for
// any rate an HTTP edge sees, and small enough that a Lua double (53 bits)
// holds it exactly, which keeps the two implementations in agreement.
//
// A new algorithm is an Algorithm constant with its name here, its Take
// (windows.go, bucket.go), Charge (charge.go), Refund and Credit (admin.go)
// arithmetic (and what Validate and ResultWindow say of it), the same
// arithmetic in the Lua of store/lua.go, and its Caddyfile words in the
// root package's limit_caddyfile.go. Nothing else knows algorithms.
package limiter

import (
	"errors"
	"fmt"
	"math"
	"time"
)

// Algorithm names one way of counting.
type Algorithm uint8

// The constants count from a blank iota, not from iota + 1: under Traefik's
// Yaegi interpreter, == and != against a typed constant defined by an
// expression (iota + 1, 1 << iota) are false whatever the values.
const (
	_ Algorithm = iota
	// FixedWindow counts requests in windows aligned to the clock
	// (epoch + Offset + k*Window), or to a Calendar when one is set.
	FixedWindow
	// AnchoredWindow counts requests in a window that starts at the first
	// counted request and lasts Window; the next window starts at the first
	// counted request after that.
	AnchoredWindow
	// SlidingWindow weighs the previous aligned window's count by how much of
	// it still overlaps the last Window, so a client cannot burst twice the
	// quota across a boundary.
	SlidingWindow
	// TokenBucket holds Quota tokens and adds Rate tokens per Window.
	TokenBucket
	// GCRA is the generic cell rate algorithm: Rate requests per Window,
	// spaced evenly, with bursts of up to Quota.
	GCRA
)

var algorithmNames = [...]string{
	FixedWindow:    "fixed_window",
	AnchoredWindow: "anchored_window",
	SlidingWindow:  "sliding_window",
	TokenBucket:    "token_bucket",
	GCRA:           "gcra",
}

func (a Algorithm) String() string {
	if int(a) < len(algorithmNames) && algorithmNames[a] != "" {
		return algorithmNames[a]
	}
	return fmt.Sprintf("algorithm(%d)", a)
}

// ParseAlgorithm returns the Algorithm named s (as String prints it).
func ParseAlgorithm(s string) (Algorithm, error) {
	for a, name := range algorithmNames {
		if name != "" && name == s {
			return Algorithm(a), nil
		}
	}
	return 0, fmt.Errorf("unknown algorithm %q (want fixed_window, anchored_window, sliding_window, token_bucket or gcra)", s)
}

// Bounds on numbers, so that no arithmetic below can overflow and absurd
// configurations are refused instead of silently misbehaving.
const (
	MaxQuota  = 1 << 40 // about 10^12 requests per window
	MaxWindow = 366 * 24 * time.Hour
	MinWindow = time.Millisecond // below this, clock resolution and network jitter dominate
	// MaxRefill bounds the time a token bucket or GCRA takes to fill from
	// empty (Window x Quota / Rate), so that every time derived from it
	// (Reset, RetryAfter, a key's expiry) fits a time.Duration with room.
	MaxRefill = 100 * 365 * 24 * time.Hour
)

// Limit is one limit's numbers. It is a small value type: copy it freely.
type Limit struct {
	Algorithm Algorithm
	// Quota is the number of units allowed per window (window algorithms),
	// the bucket's capacity (TokenBucket) or the burst size (GCRA).
	Quota int64
	// Window is the window length; for TokenBucket and GCRA, the period in
	// which Rate units are replenished.
	Window time.Duration
	// Rate is the number of units replenished per Window (TokenBucket, GCRA).
	Rate int64
	// Offset moves aligned window boundaries away from multiples of Window
	// since the Unix epoch (FixedWindow, SlidingWindow): a daily window with
	// Offset 6h resets at 06:00 UTC.
	Offset time.Duration
	// Calendar, when set, gives FixedWindow its boundaries instead of
	// Window and Offset (days in a time zone with daylight saving, months).
	Calendar Calendar
	// Ban, when set, denies a client every request for Ban once one was
	// denied (ban.go): whole seconds, at most MaxBan. The stores decide a
	// limit with a Ban with DecideBan.
	Ban time.Duration
	// Wait, for a TokenBucket or GCRA, admits a request that would pass
	// within Wait, and tells the caller to hold it that long (wait.go):
	// whole milliseconds, at most MaxWait.
	Wait time.Duration
}

// Calendar computes the calendar window that holds a time.
type Calendar interface {
	// Bounds returns the start (inclusive) and end (exclusive) of the
	// window that holds now, in microseconds since the epoch.
	Bounds(now int64) (start, end int64)
}

// Validate reports the first thing wrong with l, naming the field.
func (l Limit) Validate() error {
	switch l.Algorithm {
	case FixedWindow, AnchoredWindow, SlidingWindow, TokenBucket, GCRA:
	case 0:
		return errors.New("no algorithm: give rate, token_bucket or gcra")
	default:
		return fmt.Errorf("unknown algorithm %d", l.Algorithm)
	}
	what := "quota"
	switch l.Algorithm {
	case TokenBucket:
		what = "capacity"
	case GCRA:
		what = "burst"
	}
	if l.Quota <= 0 {
		return fmt.Errorf("%s must be at least 1, got %d", what, l.Quota)
	}
	if l.Quota > MaxQuota {
		return fmt.Errorf("%s %d is larger than the maximum %d", what, l.Quota, int64(MaxQuota))
	}
	if l.Ban != 0 && (l.Ban < time.Second || l.Ban > MaxBan || l.Ban%time.Second != 0) {
		return fmt.Errorf("ban must be whole seconds from 1s to 24 days (576h), got %s", l.Ban)
	}
	if l.Wait != 0 {
		if l.Algorithm != TokenBucket && l.Algorithm != GCRA {
			return fmt.Errorf("wait needs token_bucket or gcra, not %s: a window has room again only when it ends, for every waiting request at once", l.Algorithm)
		}
		if l.Wait < time.Millisecond || l.Wait > MaxWait || l.Wait%time.Millisecond != 0 {
			return fmt.Errorf("wait must be whole milliseconds from 1ms to %s, got %s", MaxWait, l.Wait)
		}
	}
	if l.Calendar != nil {
		if l.Algorithm != FixedWindow {
			return fmt.Errorf("a calendar window needs the fixed window algorithm, not %s", l.Algorithm)
		}
		return nil
	}
	if l.Window < MinWindow {
		return fmt.Errorf("window %s is shorter than the minimum %s", l.Window, MinWindow)
	}
	if l.Window > MaxWindow {
		return fmt.Errorf("window %s is longer than the maximum %s", l.Window, MaxWindow)
	}
	if l.Window%time.Microsecond != 0 {
		return fmt.Errorf("window %s is not a whole number of microseconds", l.Window)
	}
	if l.Offset < 0 || l.Offset >= l.Window {
		return fmt.Errorf("offset %s must be at least 0 and shorter than the window %s", l.Offset, l.Window)
	}
	if l.Algorithm == TokenBucket || l.Algorithm == GCRA {
		if l.Rate <= 0 {
			return fmt.Errorf("refill rate must be at least 1 per %s, got %d", l.Window, l.Rate)
		}
		if l.Rate > MaxQuota {
			return fmt.Errorf("refill rate %d is larger than the maximum %d", l.Rate, int64(MaxQuota))
		}
		if float64(l.Window)*float64(l.Quota)/float64(l.Rate) > float64(MaxRefill) {
			return fmt.Errorf("%s %d refilled at %d per %s takes longer than %s to refill from empty: use a calendar quota for such a long period",
				what, l.Quota, l.Rate, l.Window, "100 years")
		}
	}
	return nil
}

// PolicyWindow is the window an operator would quote for this limit: the
// window itself, or for token buckets and GCRA the time to refill from empty.
func (l Limit) PolicyWindow() time.Duration {
	switch l.Algorithm {
	case TokenBucket, GCRA:
		return time.Duration(float64(l.Window) * float64(l.Quota) / float64(l.Rate))
	}
	if l.Calendar != nil {
		return 0
	}
	return l.Window
}

// ResultWindow is the Window a Result reports for this limit: the window,
// the length of the calendar window [start, end) (microseconds since the
// epoch) that held the decision, or for buckets the time to refill from
// empty. A store that decides elsewhere (a Redis script) reports it so.
func (l Limit) ResultWindow(start, end int64) time.Duration {
	switch {
	case l.Algorithm == TokenBucket || l.Algorithm == GCRA:
		return l.PolicyWindow()
	case l.Calendar != nil:
		return us(end - start)
	}
	return l.Window
}

// State is what a store keeps per key. The zero State is a fresh key.
type State struct {
	// Start is the start of the current window, in microseconds since the
	// epoch (window algorithms), or the time of the last update (buckets).
	Start int64
	// Count is the number of units counted in the current window.
	Count int64
	// Prev is the number of units counted in the previous aligned window
	// (SlidingWindow).
	Prev int64
	// Debt is the backlog, in microseconds, at Start (TokenBucket, GCRA):
	// the bucket is full again Debt after Start.
	Debt float64
	// Expires is when the state becomes indistinguishable from a fresh
	// key, in microseconds since the epoch: a store may drop it then (and
	// Redis sets it as the key's TTL). Take keeps it up to date.
	Expires int64
	// Denied records that the last decision for this key was a denial, so
	// that the first denial of a run can be reported once.
	Denied bool
	// Weight is the evidence the state carries, for a store that must
	// forget keys to stay within its memory: the units counted in its
	// window (for buckets, the units in their backlog), up to 254, and 255
	// once the key is denied. A flood of made-up keys, one request each,
	// weighs 1 apiece; a client that used its quota or was denied weighs
	// more, and is forgotten last. Take keeps it up to date; it is not part
	// of a key's lasting state (the Redis store does not keep it).
	Weight uint8
}

// Result is the outcome of one decision.
type Result struct {
	// Allowed tells whether the units were taken.
	Allowed bool
	// FirstDenial is set on a denial that follows an allowed request or a
	// window boundary: the moment to notify someone, once.
	FirstDenial bool
	// Banned says that the key is banned (Limit.Ban): this decision
	// started the ban (with FirstDenial) or met it.
	Banned bool
	// Limit is the quota in effect.
	Limit int64
	// Remaining is the number of units left after this decision.
	Remaining int64
	// Reset is the time until the quota is whole again.
	Reset time.Duration
	// ResetAt is when the quota is whole again, in microseconds since the
	// epoch on the clock that decided: the decision's time plus Reset, so
	// the end of a clock-aligned window to the microsecond. Clients are
	// told this time (X-RateLimit-Reset); adding Reset to another reading
	// of a clock would be late by the time between the two.
	ResetAt int64
	// RetryAfter is, on denial, the time until the same request could pass;
	// on a request allowed by a limit with a Wait, the time to hold it
	// before it goes on (0: at once).
	RetryAfter time.Duration
	// Window is the length of the current window (or PolicyWindow for
	// buckets).
	Window time.Duration
}

// tatSlack absorbs float rounding in backlog sums (0.1+0.2 > 0.3): a
// request a nanosecond early passes.
const tatSlack = 1e-3

// Take decides whether cost units may be taken at now (microseconds since the
// epoch) from a key in state *s, writes the outcome to *r, and updates *s to
// the state to store: on success the state after taking, on denial the state
// as it was with Denied set. (Pointers, not values: copying these structs
// through return values costs more than the arithmetic.)
func (l *Limit) Take(s *State, r *Result, now, cost int64) { Decide(l, s, r, now, cost) }

// Decide is l.Take(s, r, now, cost), as a function: the stores call it. The
// Traefik plugin runs this package in the Yaegi interpreter, where a method
// call costs several times a function call and every call costs more than
// the arithmetic: the decisions below are functions, and what they share is
// written out rather than called.
func Decide(l *Limit, s *State, r *Result, now, cost int64) {
	if l.Algorithm != FixedWindow || l.Calendar != nil {
		DecideAny(l, s, r, now, cost)
		return
	}
	// takeFixed for a window aligned to the clock, with what decide adds,
	// here: the most common limit, in the fewest calls.
	// (Microseconds as 1e3 rather than time.Microsecond: under Yaegi a
	// package's constant costs as a value.)
	w := int64(l.Window) / 1e3
	end := now - (now-int64(l.Offset)/1e3)%w + w
	if end > now+w {
		end -= w // before the epoch: % rounds towards zero
	}
	if s.Start != end-w {
		*s = State{Start: end - w}
	}
	s.Expires = end
	*r = Result{Limit: l.Quota, Window: l.Window, Reset: time.Duration((end - now) * 1e3), ResetAt: end}
	if s.Count+cost > l.Quota {
		denyCount(l, s, r, end-now)
		s.Weight = 255
		return
	}
	s.Count += cost
	s.Denied = false
	r.Allowed = true
	r.Remaining = l.Quota - s.Count
	s.Weight = 254
	if s.Count < 254 {
		s.Weight = uint8(s.Count)
	}
}

// DecideAny is Decide without its fixed window aligned to the clock, which
// it decides as the others: a store that knows a limit is not one calls it
// rather than Decide (under Yaegi a call costs for every value of its
// function, run or not).
// The fixed and anchored windows (count) and takeTAT weigh the state
// themselves (State.Weight), the others weight.
func DecideAny(l *Limit, s *State, r *Result, now, cost int64) {
	switch l.Algorithm {
	case AnchoredWindow:
		takeAnchored(l, s, r, now, cost)
	case SlidingWindow:
		takeSliding(l, s, r, now, cost)
		s.Weight = weight(l, s, now)
	case TokenBucket, GCRA:
		if l.Wait == 0 {
			takeTAT(l, s, r, now, cost)
		} else {
			takeShaped(l, s, r, now, cost)
			s.Weight = weight(l, s, now)
		}
	default:
		takeFixed(l, s, r, now, cost)
	}
	r.ResetAt = now + int64(r.Reset/time.Microsecond)
}

// weight computes State.Weight. (Under Yaegi a call costs for every value
// its function body holds, run or not: the buckets' arithmetic is a
// function of its own.)
func weight(l *Limit, s *State, now int64) uint8 {
	units := s.Count
	switch {
	case s.Denied:
		return 255
	case l.Algorithm == TokenBucket || l.Algorithm == GCRA:
		units = backlogUnits(l, s, now)
	case l.Algorithm == SlidingWindow:
		units += s.Prev
	}
	if units > 254 {
		return 254
	}
	if units < 0 {
		return 0
	}
	return uint8(units)
}

// backlogUnits is the number of units in a bucket's backlog at now.
func backlogUnits(l *Limit, s *State, now int64) int64 {
	interval := float64(l.Window/time.Microsecond) / float64(l.Rate)
	return int64(math.Ceil((s.Debt - float64(now-s.Start)) / interval))
}

// Bounds returns the aligned window that holds now.
func (l *Limit) Bounds(now int64) (start, end int64) {
	if l.Calendar != nil {
		return l.Calendar.Bounds(now)
	}
	w := int64(l.Window / time.Microsecond)
	m := (now - int64(l.Offset/time.Microsecond)) % w
	if m < 0 {
		m += w
	}
	start = now - m
	return start, start + w
}

// Refund gives back cost units that Take counted earlier, when the request
// they were counted for was denied after all (by another limiter). Only the
// window they were counted in is touched: once it is over there is nothing
// to give back. Refund never makes a state fresher than no request at all.
func (l *Limit) Refund(s *State, now, cost int64) {
	switch l.Algorithm {
	case TokenBucket, GCRA:
		if s.Start == 0 {
			return
		}
		interval := float64(l.Window.Microseconds()) / float64(l.Rate)
		debt := s.Debt - float64(max64(now-s.Start, 0))
		// Two statements: Yaegi assigns a tuple with a call in it only in
		// part.
		s.Start = now
		s.Debt = maxFloat(debt-float64(cost)*interval, 0)
	case AnchoredWindow:
		if now < s.Start+l.Window.Microseconds() {
			s.Count = max64(s.Count-cost, 0)
		}
	case SlidingWindow:
		// Counted in this window, or in the previous one that is not yet
		// shifted into Prev.
		start, end := l.Bounds(now)
		if s.Start == start || s.Start == start-(end-start) {
			s.Count = max64(s.Count-cost, 0)
		}
	default:
		if start, _ := l.Bounds(now); s.Start == start {
			s.Count = max64(s.Count-cost, 0)
		}
	}
}

func us(v int64) time.Duration { return time.Duration(v) * time.Microsecond }

// whole rounds a count of units down, forgiving float noise just below an
// integer, and never below zero.
func whole(x float64) int64 {
	return max64(int64(math.Floor(x+1e-6)), 0)
}

// max64, min64 and maxFloat are the max and min builtins, written out:
// Traefik loads this package into the Yaegi interpreter, which has no min
// or max.
func max64(a, b int64) int64 {
	if a > b {
		return a
	}
	return b
}

func min64(a, b int64) int64 {
	if a < b {
		return a
	}
	return b
}

func maxFloat(a, b float64) float64 {
	if a != a || a > b {
		return a // NaN wins, as with the builtin
	}
	if b != b {
		return b
	}
	if a == b && a == 0 && math.Signbit(b) {
		return a // max(+0, -0) is +0
	}
	return b
}
