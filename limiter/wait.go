// Shaping: a request over a bucket's limit that would pass within Wait is
// admitted now, its units counted (a reservation: the backlog grows past
// the bucket), and held for the time until it would have passed: nginx's
// limit_req with a burst and delay, GCRA with a tolerance. The requests
// held are spaced as the bucket refills, never woken at once, and a
// client's backlog past the bucket is at most Wait: at most Wait/interval
// of its requests wait at once, on every instance together.

package limiter

import (
	"math"
	"time"
)

// MaxWait bounds a limit's Wait: the Redis scripts carry it in whole
// milliseconds in 13 bits above a bucket's rate (store/codec.go).
const MaxWait = 8 * time.Second

// takeShaped is takeTAT for a bucket with a Wait: a request whose backlog
// would pass the bucket by at most Wait is allowed, and its result's
// RetryAfter is the time it must wait (ceiled to a microsecond; 0 when it
// fits the bucket). A denial's RetryAfter is the time until it would be
// allowed, waiting then as long as Wait.
func takeShaped(l *Limit, s *State, r *Result, now, cost int64) {
	interval, tau, debt := backlog(l, s, now)
	wait := float64(l.Wait / time.Microsecond)
	next := debt + float64(cost)*interval
	*r = Result{Limit: l.Quota, Window: l.PolicyWindow()}
	if next <= tau+wait+tatSlack {
		s.Start = now
		s.Debt = next
		ceil := int64(math.Ceil(next))
		s.Expires = now + ceil
		s.Denied = false
		r.Allowed = true
		r.Remaining = whole((tau - next) / interval)
		r.Reset = us(ceil)
		if next > tau+tatSlack {
			r.RetryAfter = us(int64(math.Ceil(next - tau)))
		}
		return
	}
	r.Remaining = whole((tau - debt) / interval)
	r.Reset = us(int64(math.Ceil(debt)))
	// At most MaxDebt, as takeTAT's.
	late := next - tau - wait
	if late > MaxDebt {
		late = MaxDebt
	}
	retry := int64(math.Ceil(late))
	r.RetryAfter = us(retry)
	r.FirstDenial = !s.Denied
	s.Denied = true
	if s.Expires < now+retry {
		s.Expires = now + retry
	}
}
