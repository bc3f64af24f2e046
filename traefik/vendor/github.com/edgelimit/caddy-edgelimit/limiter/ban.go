// Bans: the penalty box. A limit with a Ban denies every request of a
// client for Ban once one of its requests has been denied (Cloudflare's
// mitigation timeout, fail2ban's bantime), whatever the window would
// allow meanwhile.

package limiter

import "time"

// MaxBan bounds a limit's Ban: the Redis scripts carry its length in whole
// seconds in 21 bits of a request's code (store/codec.go).
const MaxBan = 24 * 24 * time.Hour

// A banned key's State is {Count: -1, Start: 0, Denied: true, Expires: the
// ban's end}: a count no decision ever leaves, with a start no window has,
// so that a limit without a Ban (its ban lifted by a reload) sees a state
// to start afresh, and a store forgets the ban when it ends, as any state
// that expires. Nothing else is kept: the ban lasts at least until the
// quota would be whole again (a ban never forgives what was counted), so
// what was counted is spent when it ends.

// isBanned tells whether s is a ban (live: stores forget a state at its
// Expires).
func isBanned(s *State, now int64) bool {
	return s.Count == -1 && s.Start == 0 && s.Expires > now
}

// DecideBan decides a request of a limit with a Ban: as Decide (mode 0),
// Check (1) or Charge (2) would (the modes of store.Mode), but that a
// banned key is denied until its ban ends (a charge, which never denies,
// counts nothing then and passes), and that a denial bans the key for
// l.Ban, or until the quota would be whole again if that is later. Results
// of a ban say so (Banned); Reset and RetryAfter are the time until its
// end. A ban starts on a first denial (FirstDenial), which is the moment to
// report it.
func DecideBan(l *Limit, s *State, r *Result, now, cost int64, mode uint8) {
	if isBanned(s, now) {
		denyBanned(l, s, r, now)
		if mode == 2 {
			r.Allowed = true
			r.RetryAfter = 0
		}
		return
	}
	switch mode {
	case 1:
		Check(l, s, r, now, cost)
	case 2:
		Charge(l, s, r, now, cost)
		return
	default:
		Decide(l, s, r, now, cost)
	}
	if r.Allowed {
		return
	}
	end := now + int64(l.Ban/time.Microsecond)
	if t := r.ResetAt; t > end {
		end = t
	}
	if t := now + int64(r.RetryAfter/time.Microsecond); t > end {
		end = t
	}
	*s = State{Count: -1, Expires: end, Denied: true, Weight: 255}
	r.Banned = true
	r.Remaining = 0
	r.Reset = us(end - now)
	r.ResetAt = end
	r.RetryAfter = us(end - now)
}

// denyBanned writes the denial of a banned key to *r.
func denyBanned(l *Limit, s *State, r *Result, now int64) {
	var start, end int64
	if l.Calendar != nil {
		start, end = l.Calendar.Bounds(now)
	}
	left := us(s.Expires - now)
	*r = Result{Banned: true, Limit: l.Quota, Window: l.ResultWindow(start, end), Reset: left, ResetAt: s.Expires, RetryAfter: left}
}
