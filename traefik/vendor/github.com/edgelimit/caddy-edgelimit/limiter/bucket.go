// The token bucket and GCRA, one arithmetic for both.

package limiter

import (
	"math"
	"time"
)

// takeTAT is the token bucket and GCRA: both are a backlog of time. Each unit
// adds one emission interval (Window/Rate) of backlog, the backlog drains in
// real time, and a request passes when the backlog stays within Quota
// intervals. The backlog is kept relative to the last update (Start) so the
// float stays small and exact to far below a microsecond, whatever the date.
func takeTAT(l *Limit, s *State, r *Result, now, cost int64) {
	// backlog(l, s, now), written out: under Yaegi a call costs.
	interval := float64(l.Window/time.Microsecond) / float64(l.Rate)
	tau := interval * float64(l.Quota)
	elapsed := now - s.Start
	if elapsed < 0 {
		elapsed = 0
	}
	debt := s.Debt - float64(elapsed)
	if s.Start == 0 || debt < 0 {
		debt = 0
	}
	next := debt + float64(cost)*interval
	// l.PolicyWindow(), written out.
	*r = Result{Limit: l.Quota, Window: time.Duration(float64(l.Window) * float64(l.Quota) / float64(l.Rate))}
	if next <= tau+tatSlack {
		s.Start = now
		s.Debt = next
		ceil := int64(math.Ceil(next))
		s.Expires = now + ceil
		s.Denied = false
		r.Allowed = true
		// whole((tau - next) / interval), written out.
		r.Remaining = int64(math.Floor((tau-next)/interval + 1e-6))
		if r.Remaining < 0 {
			r.Remaining = 0
		}
		r.Reset = time.Duration(ceil) * time.Microsecond
		// weight(l, s, now), written out: the backlog is next.
		s.Weight = 254
		if units := int64(math.Ceil(next / interval)); units < 254 {
			s.Weight = uint8(units)
		}
		return
	}
	denyTAT(s, r, now, interval, tau, debt, next)
}

// denyTAT finishes a takeTAT that denies (a function of its own: under
// Yaegi a call costs for every value of its function, run or not).
func denyTAT(s *State, r *Result, now int64, interval, tau, debt, next float64) {
	r.Remaining = whole((tau - debt) / interval)
	r.Reset = us(int64(math.Ceil(debt)))
	// A cost the bucket can never hold (more than its quota) would wait
	// beyond any time: at most MaxDebt, so that every time derived from it
	// (a ban's end, the key's expiry) stays exact, in Go and in Lua's
	// doubles alike.
	late := next - tau
	if late > MaxDebt {
		late = MaxDebt
	}
	wait := int64(math.Ceil(late))
	r.RetryAfter = time.Duration(wait) * time.Microsecond
	r.FirstDenial = !s.Denied
	s.Denied = true
	// Keep the denial mark at least until the request could pass.
	if s.Expires < now+wait {
		s.Expires = now + wait
	}
	s.Weight = 255 // weight's for a denial
}

// backlog is a bucket's emission interval, its tolerance (Quota
// intervals) and its backlog drained to now, in microseconds.
func backlog(l *Limit, s *State, now int64) (interval, tau, debt float64) {
	interval = float64(l.Window/time.Microsecond) / float64(l.Rate)
	tau = interval * float64(l.Quota)
	elapsed := now - s.Start
	if elapsed < 0 {
		elapsed = 0
	}
	debt = s.Debt - float64(elapsed)
	if s.Start == 0 || debt < 0 {
		debt = 0
	}
	return interval, tau, debt
}
