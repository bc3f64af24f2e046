// The windows: fixed (aligned to the clock, or anchored at a key's first
// request) and sliding.

package limiter

import (
	"math"
	"time"
)

func takeFixed(l *Limit, s *State, r *Result, now, cost int64) {
	var start, end int64
	if l.Calendar != nil {
		start, end = l.Calendar.Bounds(now)
	} else {
		// l.Bounds(now), written out.
		w := int64(l.Window / time.Microsecond)
		start = now - (now-int64(l.Offset/time.Microsecond))%w
		if start > now {
			start -= w // before the epoch: % rounds towards zero
		}
		end = start + w
	}
	if s.Start != start {
		*s = State{Start: start}
	}
	*r = Result{Limit: l.Quota, Window: time.Duration(end-start) * time.Microsecond, Reset: time.Duration(end-now) * time.Microsecond}
	s.Expires = end
	count(l, s, r, cost, end-now)
}

func takeAnchored(l *Limit, s *State, r *Result, now, cost int64) {
	w := int64(l.Window / time.Microsecond)
	if s.Count == 0 || now >= s.Start+w || now < s.Start {
		// No window is running: this request would start one. A key that
		// was denied without ever being counted (cost above the quota)
		// keeps its Denied mark so it is reported once.
		*s = State{Start: now, Denied: s.Denied && s.Count == 0}
	}
	end := s.Start + w
	*r = Result{Limit: l.Quota, Window: l.Window, Reset: time.Duration(end-now) * time.Microsecond}
	count(l, s, r, cost, end-now)
	if s.Count == 0 {
		// Denied before any window began: keep the mark a window long.
		s.Start = 0
		s.Expires = now + w
	} else {
		s.Expires = end
	}
}

// count finishes a fixed or anchored decision, and weighs the state
// (weight's, written out).
func count(l *Limit, s *State, r *Result, cost, untilEnd int64) {
	if s.Count+cost <= l.Quota {
		s.Count += cost
		s.Denied = false
		r.Allowed = true
		r.Remaining = l.Quota - s.Count
		s.Weight = 254
		if s.Count < 254 {
			s.Weight = uint8(s.Count)
		}
		return
	}
	denyCount(l, s, r, untilEnd)
	s.Weight = 255
}

// denyCount finishes a fixed or anchored decision that denies.
func denyCount(l *Limit, s *State, r *Result, untilEnd int64) {
	r.Remaining = l.Quota - s.Count
	if r.Remaining < 0 {
		r.Remaining = 0
	}
	r.RetryAfter = time.Duration(untilEnd) * time.Microsecond
	r.FirstDenial = !s.Denied
	s.Denied = true
}

func takeSliding(l *Limit, s *State, r *Result, now, cost int64) {
	start, end := l.Bounds(now)
	w := end - start
	switch {
	case s.Start == start:
	case s.Start == start-w:
		// A client held back at the boundary is still the same episode.
		*s = State{Start: start, Prev: s.Count, Denied: s.Denied}
	default:
		*s = State{Start: start}
	}
	elapsed := now - start
	q := l.Quota
	used := slidingUsed(s.Prev, s.Count, elapsed, w)
	*r = Result{Limit: q, Window: us(w)}
	// The count of the current window still weighs in the next one.
	s.Expires = end + w
	if used+float64(cost) <= float64(q) {
		s.Count += cost
		s.Denied = false
		r.Allowed = true
		r.Remaining = whole(float64(q) - used - float64(cost))
		r.Reset = us(slidingReset(s, end, now, w))
		return
	}
	r.Remaining = whole(float64(q) - used)
	r.Reset = us(slidingReset(s, end, now, w))
	r.RetryAfter = us(slidingRetry(s.Prev, s.Count, cost, q, elapsed, w))
	r.FirstDenial = !s.Denied
	s.Denied = true
}

// slidingUsed is the estimate of units used in the last w: the previous
// window's count weighted by the part of it still inside, plus the current
// window's count.
func slidingUsed(prev, curr, elapsed, w int64) float64 {
	return float64(prev)*float64(w-elapsed)/float64(w) + float64(curr)
}

// slidingReset is the time until the estimate falls to zero.
func slidingReset(s *State, end, now, w int64) int64 {
	if s.Count > 0 {
		return end + w - now
	}
	if s.Prev > 0 {
		return end - now
	}
	return 0
}

// slidingRetry is the time until slidingUsed+cost fits in q again.
func slidingRetry(prev, curr, cost, q, elapsed, w int64) int64 {
	if cost > q {
		return w - elapsed + w
	}
	room := q - cost - curr
	if room >= 0 && prev > 0 {
		// Still in this window: wait until prev*(w-e)/w <= room.
		e := w - int64(math.Floor(float64(room)*float64(w)/float64(prev)))
		if e > elapsed {
			return e - elapsed
		}
		return 1
	}
	if room >= 0 {
		return 1
	}
	// In the next window curr becomes the previous count; wait until
	// curr*(w-e)/w + cost <= q.
	e := w - int64(math.Floor(float64(q-cost)*float64(w)/float64(curr)))
	return w - elapsed + max64(e, 0)
}
