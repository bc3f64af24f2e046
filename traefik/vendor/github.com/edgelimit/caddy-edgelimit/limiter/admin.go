package limiter

// Peek and Credit are the operator's view of one key (the admin API): what
// a request would meet now, and a goodwill gift of units, with the same
// arithmetic as Take. Neither counts a request.

// Peek reports what a request of cost units would meet at now, without
// counting anything: s is taken by value and left as it was.
//
// Allowed and RetryAfter are what Take would answer for such a request;
// Remaining, Reset and ResetAt describe the state as it is (what is left
// before the request, and when the quota is whole again). FirstDenial is
// never set. A banned key (Limit.Ban) reports its ban (Banned, denying
// until its end: Reset and RetryAfter). A key with nothing counted reports the whole quota; an
// anchored window that is not running reports Reset 0 (no window runs).
func (l *Limit) Peek(s State, now, cost int64) Result {
	if cost < 1 {
		cost = 1
	}
	if l.Ban != 0 && isBanned(&s, now) {
		var r Result
		denyBanned(l, &s, &r, now)
		return r
	}
	would := s
	var r Result
	l.Take(&would, &r, now, cost)
	cur := s
	var c Result
	l.Take(&cur, &c, now, 0)
	c.Allowed = r.Allowed
	c.RetryAfter = r.RetryAfter
	c.FirstDenial = false
	if l.Algorithm == AnchoredWindow && cur.Count == 0 {
		c.Reset = 0
	}
	c.ResetAt = now + c.Reset.Microseconds()
	if c.Remaining > l.Quota {
		c.Remaining = l.Quota
	}
	return c
}

// Credit gives units back to the key in *s at now, as goodwill: what is
// counted in the current window (or the bucket's backlog) shrinks by up to
// units, never below nothing, so the remaining quota grows by at most
// units and never beyond the limit (a full window, a full bucket). It
// returns the number of units actually given: fewer than asked when less
// was counted.
//
//   - fixed and calendar windows: the current window's count drops; a
//     state from an earlier window is already whole.
//   - anchored windows: the running window's count drops; at zero the
//     next counted request starts a new window.
//   - sliding windows: the current window's count drops first, then the
//     previous window's, which weighs only by its overlap with the last
//     window, so the remaining quota may grow by less than the units
//     taken from it (never by more).
//   - token bucket and GCRA: the backlog drains by units emission
//     intervals (units tokens go back into the bucket), down to a full
//     bucket.
//
// Expires is left as it was (a state that expires later than it needs to
// is harmless), and so is Denied (it only reports a run of denials once).
func (l *Limit) Credit(s *State, now, units int64) int64 {
	if units < 1 {
		return 0
	}
	var given int64
	switch l.Algorithm {
	case TokenBucket, GCRA:
		if s.Start == 0 {
			return 0
		}
		interval := float64(l.Window.Microseconds()) / float64(l.Rate)
		debt := s.Debt - float64(max64(now-s.Start, 0))
		if debt <= 0 {
			return 0
		}
		// Units whose emission is still in the backlog, rounded up: a
		// partly drained unit is a unit the client could not spend.
		held := int64(debt / interval)
		if float64(held)*interval < debt-tatSlack {
			held++
		}
		given = min64(units, held)
	case AnchoredWindow:
		if s.Count == 0 || now < s.Start || now >= s.Start+l.Window.Microseconds() {
			return 0
		}
		given = min64(units, s.Count)
	case SlidingWindow:
		start, end := l.Bounds(now)
		switch {
		case s.Start == start:
		case s.Start == start-(end-start):
			// Shift as Take would: the count becomes the previous one.
			prev := s.Count
			s.Start = start
			s.Prev = prev
			s.Count = 0
		default:
			return 0
		}
		fromCount := min64(units, s.Count)
		s.Count -= fromCount
		fromPrev := min64(units-fromCount, s.Prev)
		s.Prev -= fromPrev
		given = fromCount + fromPrev
	default:
		start, _ := l.Bounds(now)
		if s.Start != start {
			return 0
		}
		given = min64(units, s.Count)
	}
	if l.Algorithm != SlidingWindow {
		// What is left to give back, Refund's arithmetic: the same units
		// off the count or the backlog, never below nothing.
		l.Refund(s, now, units)
	}
	s.Weight = weight(l, s, now)
	return given
}
