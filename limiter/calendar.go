package limiter

import (
	"fmt"
	"sync/atomic"
	"time"
)

// Period is the length of a calendar window.
type Period uint8

// From a blank iota, not iota + 1: see Algorithm's constants.
const (
	_ Period = iota
	// Day windows run from one reset time to the same time the next day.
	Day
	// Week windows start on Mondays.
	Week
	// Month windows start on the first of the month.
	Month
)

func (p Period) String() string {
	switch p {
	case Day:
		return "day"
	case Week:
		return "week"
	case Month:
		return "month"
	}
	return fmt.Sprintf("period(%d)", p)
}

// ParsePeriod reads "day", "week" or "month" (also "daily", "weekly",
// "monthly").
func ParsePeriod(s string) (Period, error) {
	switch s {
	case "day", "daily":
		return Day, nil
	case "week", "weekly":
		return Week, nil
	case "month", "monthly":
		return Month, nil
	}
	return 0, fmt.Errorf("unknown calendar period %q (want day, week or month)", s)
}

// CalendarWindow is a calendar period in a time zone, reset at a fixed time
// of day: "per day, reset at 00:00 UTC" or "per month, reset on the first at
// 06:00 Europe/Paris". Days in zones with daylight saving last 23 or 25 hours
// on the days the clocks change, as a wall clock says they do.
type CalendarWindow struct {
	Period Period
	// Location is the time zone of the reset time; nil means UTC.
	Location *time.Location
	// At is the reset time as an offset from midnight, under 24h.
	At time.Duration
}

// Validate reports what is wrong with c.
func (c CalendarWindow) Validate() error {
	if c.Period < Day || c.Period > Month {
		return fmt.Errorf("unknown calendar period %d", c.Period)
	}
	if c.At < 0 || c.At >= 24*time.Hour {
		return fmt.Errorf("reset time %s must be within a day", c.At)
	}
	return nil
}

// Bounds implements Calendar.
func (c CalendarWindow) Bounds(now int64) (start, end int64) {
	loc := c.Location
	if loc == nil {
		loc = time.UTC
	}
	t := time.UnixMicro(now).In(loc)
	s := c.startOf(t, 0)
	if s.After(t) {
		s = c.startOf(t, -1)
	}
	e := c.startOf(s, 1)
	return s.UnixMicro(), e.UnixMicro()
}

// startOf returns the start of the period holding day t's calendar date,
// moved by n periods.
func (c CalendarWindow) startOf(t time.Time, n int) time.Time {
	y, m, d := t.Date()
	h, mi, sec := int(c.At/time.Hour), int(c.At%time.Hour/time.Minute), int(c.At%time.Minute/time.Second)
	ns := int(c.At % time.Second)
	switch c.Period {
	case Week:
		back := (int(t.Weekday()) + 6) % 7 // days since Monday
		return time.Date(y, m, d-back+7*n, h, mi, sec, ns, t.Location())
	case Month:
		return time.Date(y, m+time.Month(n), 1, h, mi, sec, ns, t.Location())
	default:
		return time.Date(y, m, d+n, h, mi, sec, ns, t.Location())
	}
}

// Cached returns a Calendar for c that remembers the window it last computed,
// so that all the requests of a day cost one time zone conversion.
func (c CalendarWindow) Cached() Calendar { return &cachedCalendar{c: c} }

// cachedCalendar keeps its window in an atomic.Value, not an
// atomic.Pointer: Traefik loads this package into the Yaegi interpreter,
// which cannot instantiate generic types of the standard library.
type cachedCalendar struct {
	c   CalendarWindow
	cur atomic.Value // *[2]int64
}

func (k *cachedCalendar) Bounds(now int64) (start, end int64) {
	if b, _ := k.cur.Load().(*[2]int64); b != nil && now >= b[0] && now < b[1] {
		return b[0], b[1]
	}
	start, end = k.c.Bounds(now)
	k.cur.Store(&[2]int64{start, end})
	return start, end
}

func (k *cachedCalendar) String() string { return k.c.String() }

// String describes the window as an operator writes it.
func (c CalendarWindow) String() string {
	loc := "UTC"
	if c.Location != nil {
		loc = c.Location.String()
	}
	h, m := int(c.At/time.Hour), int(c.At%time.Hour/time.Minute)
	return fmt.Sprintf("1 %s, reset at %02d:%02d %s", c.Period, h, m, loc)
}
