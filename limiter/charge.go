// Check and Charge: the two halves of a limit that counts what a response
// says (failed logins, tokens an upstream reports). Check decides before
// the request is served, counting nothing; Charge counts once the response
// is known, and never denies: the units were spent.

package limiter

import (
	"math"
	"time"
)

// MaxDebt bounds a bucket's backlog, in microseconds, after Charge: as long
// as MaxRefill, so that every time derived from it (a key's expiry, Reset,
// RetryAfter) fits a time.Duration with room, however much is charged. A
// bucket charged more than that waits MaxRefill, a hundred years.
const MaxDebt = float64(MaxRefill / time.Microsecond)

// Check decides as Take would whether cost units may be taken at now, and
// takes nothing. On a denial *s and *r are Take's (the state keeps its
// denial mark, for FirstDenial). On a pass *s is left as it was, but for
// its denial mark, cleared (the next denial is a first one again), and *r
// reports what remains before the request (what Take would have left,
// plus cost), as a request that passed but was not counted.
func Check(l *Limit, s *State, r *Result, now, cost int64) {
	was := *s
	Decide(l, s, r, now, cost)
	if !r.Allowed {
		return
	}
	*s = was
	s.Denied = false
	s.Weight = weight(l, s, now)
	r.Remaining += cost
	if r.Remaining > r.Limit {
		r.Remaining = r.Limit
	}
}

// Charge counts cost units at now whatever is left: a response that cost
// more than remains overdraws the limit, and the requests after it are
// denied until enough is back (the window ends, the bucket refills). It
// never denies; *r reports what remains after the charge (0 when
// overdrawn). A window counts at most MaxQuota units, and a bucket's
// backlog is at most MaxDebt: a huge charge denies until the window ends,
// or for MaxRefill, and never overflows. The denial mark is left as it is:
// a charge is no request of the client's, and must not make its next
// denial a first one again.
func Charge(l *Limit, s *State, r *Result, now, cost int64) {
	if cost > MaxQuota {
		cost = MaxQuota
	}
	switch l.Algorithm {
	case AnchoredWindow:
		chargeAnchored(l, s, r, now, cost)
	case SlidingWindow:
		chargeSliding(l, s, r, now, cost)
	case TokenBucket, GCRA:
		chargeTAT(l, s, r, now, cost)
	default:
		chargeFixed(l, s, r, now, cost)
	}
	r.Allowed = true
	r.ResetAt = now + int64(r.Reset/time.Microsecond)
	s.Weight = weight(l, s, now)
}

// addCount adds cost to a window's count, up to MaxQuota (more denies no
// longer).
func addCount(count, cost int64) int64 {
	return min64(count+cost, MaxQuota)
}

func chargeFixed(l *Limit, s *State, r *Result, now, cost int64) {
	start, end := l.Bounds(now)
	if s.Start != start {
		*s = State{Start: start}
	}
	s.Count = addCount(s.Count, cost)
	s.Expires = end
	*r = Result{Limit: l.Quota, Window: us(end - start), Reset: us(end - now), Remaining: max64(l.Quota-s.Count, 0)}
}

func chargeAnchored(l *Limit, s *State, r *Result, now, cost int64) {
	w := int64(l.Window / time.Microsecond)
	if s.Count == 0 || now >= s.Start+w || now < s.Start {
		// As takeAnchored: no window runs, this charge starts one.
		*s = State{Start: now, Denied: s.Denied && s.Count == 0}
	}
	end := s.Start + w
	s.Count = addCount(s.Count, cost)
	s.Expires = end
	*r = Result{Limit: l.Quota, Window: l.Window, Reset: us(end - now), Remaining: max64(l.Quota-s.Count, 0)}
}

func chargeSliding(l *Limit, s *State, r *Result, now, cost int64) {
	start, end := l.Bounds(now)
	w := end - start
	switch {
	case s.Start == start:
	case s.Start == start-w:
		*s = State{Start: start, Prev: s.Count, Denied: s.Denied}
	default:
		*s = State{Start: start}
	}
	used := slidingUsed(s.Prev, s.Count, now-start, w)
	s.Count = addCount(s.Count, cost)
	s.Expires = end + w
	*r = Result{Limit: l.Quota, Window: us(w), Remaining: whole(float64(l.Quota) - used - float64(cost))}
	r.Reset = us(slidingReset(s, end, now, w))
}

func chargeTAT(l *Limit, s *State, r *Result, now, cost int64) {
	interval, tau, debt := backlog(l, s, now)
	next := debt + float64(cost)*interval
	if next > MaxDebt {
		next = MaxDebt
	}
	s.Start = now
	s.Debt = next
	ceil := int64(math.Ceil(next))
	s.Expires = now + ceil
	*r = Result{Limit: l.Quota, Window: l.PolicyWindow(), Remaining: whole((tau - next) / interval), Reset: us(ceil)}
}
